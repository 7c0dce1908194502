"""External login with OpenID Connect (authorization code + PKCE).

Not configured (``oidc_issuer`` unset): both messages answer ``unavailable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.accounts import OidcAuthorize, OidcFinish, OidcStart, Tokens
from protocol.errors import UnavailableError
from server.dispatch import HandlerMap, public

if TYPE_CHECKING:
    from server.session import Session


async def oidc_start(session: Session, msg: OidcStart) -> OidcAuthorize:
    raise UnavailableError("external login is not configured")


async def oidc_finish(session: Session, msg: OidcFinish) -> Tokens:
    raise UnavailableError("external login is not configured")


HANDLERS: HandlerMap = {OidcStart: public(oidc_start), OidcFinish: public(oidc_finish)}

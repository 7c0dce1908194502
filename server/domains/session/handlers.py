"""Session handlers: hello (authenticate, load the player, welcome or resume) and ping.

``session.hello`` carries an access token (``gha_...``, from ``auth.login`` and friends),
an API key (``ghk_...``: a service session with the key's permissions and no player), or,
only while ``dev_auth`` is on, a development token (``dev:<name>``, ``dev-admin:<name>``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import asyncpg

from persistence.players import get_or_create_player
from protocol import PROTOCOL_VERSION
from protocol.errors import ConflictError, UnauthenticatedError, UnavailableError
from protocol.messages import Ping, Pong, SessionHello, SessionWelcome
from protocol.model import AnyEffect, PlayerState
from server.dispatch import Done, HandlerMap, public, requires_sync
from server.domains.accounts.principal import Principal
from server.domains.accounts.rules import Permission
from server.domains.accounts.service import Client

if TYPE_CHECKING:
    from server.session import Session

_DEV_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


_DEV_ROLES = {"dev": frozenset({"player"}), "dev-admin": frozenset({"player", "admin"})}


def _dev_identity(token: str, dev_auth: bool) -> tuple[str, frozenset[str]] | None:
    """The player name and roles a development token stands for: ``dev:<name>`` is a
    player, ``dev-admin:<name>`` a player with the admin role. None: not a dev token.

    Raises:
        UnauthenticatedError: a dev token while dev auth is off, or a malformed one.
    """
    prefix, colon, name = token.partition(":")
    roles = _DEV_ROLES.get(prefix)
    if not colon or roles is None:
        return None
    if not dev_auth:
        raise UnauthenticatedError("development tokens are not accepted (dev auth is disabled)")
    if not _DEV_NAME.match(name):
        raise UnauthenticatedError(
            "dev tokens look like dev:<name> or dev-admin:<name> ([A-Za-z0-9_.-], 1-64)"
        )
    return name, roles


async def hello(session: Session, msg: SessionHello) -> SessionWelcome:
    """Authenticate, load the player and send the full state, or only what was missed.

    Raises:
        ConflictError: this connection already has a session.
        UnauthenticatedError: the token is not accepted.
        UnavailableError: the database cannot be reached.
    """
    if session.principal is not None:
        raise ConflictError("this connection already said hello")
    app = session.app
    dev = _dev_identity(msg.token, app.settings.dev_auth)
    try:
        if dev is not None:
            name, roles = dev
            principal = Principal("dev", roles=roles)
            async with app.pool.acquire() as conn:
                player_id = await get_or_create_player(conn, name)
        else:
            found = await app.accounts.authenticate(
                msg.token, Client(session.client_ip, session.user_agent)
            )
            if found is None:
                raise UnauthenticatedError("token is invalid, expired or revoked")
            principal, player_id, name = found
        if principal.kind == "api_key":
            if session.principal is not None:
                raise ConflictError("this connection already said hello")
            session.authenticate(principal)
            return _welcome(session, msg, 0, 0)
        live = await app.hub.acquire(player_id, name)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UnavailableError("player store unavailable", reason=type(exc).__name__) from None
    if session.principal is not None:  # a second hello raced this one while it awaited
        raise ConflictError("this connection already said hello")
    session.player = live
    session.authenticate(principal)
    app.hub.attach(live, session)
    if msg.resume is not None:
        effects = await app.hub.effects_since(live, msg.resume)
        if effects is not None:
            return _welcome(session, msg, player_id, msg.resume + len(effects), effects=effects)
    state = await app.hub.durable_copy(live)
    return _welcome(session, msg, player_id, state.version, state=state)


def _welcome(
    session: Session,
    msg: SessionHello,
    player_id: int,
    version: int,
    *,
    state: PlayerState | None = None,
    effects: list[AnyEffect] | None = None,
) -> SessionWelcome:
    app = session.app
    return SessionWelcome(
        rid=msg.rid,
        protocol_version=PROTOCOL_VERSION,
        server_version=app.version,
        tick_hz=app.settings.tick_hz,
        tick=app.tick(),
        player_id=player_id,
        version=version,
        resumed=effects is not None,
        state=state,
        effects=effects,
    )


def ping(session: Session, msg: Ping, done: Done) -> Pong:
    """Answered at any time after hello; touches neither the simulation nor the journal."""
    return Pong(rid=msg.rid, tick=session.app.tick())


HANDLERS: HandlerMap = {
    SessionHello: public(hello),
    Ping: requires_sync(Permission.SESSION, ping),
}

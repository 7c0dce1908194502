"""External login with OpenID Connect: the authorization-code flow with PKCE against the one
configured issuer (``oidc_issuer``; Google, or any issuer that publishes discovery and JWKS).

This server is the OIDC client and holds the client secret; a game client or launcher only
opens the authorization URL in a browser and hands back the ``code`` and ``state`` the
issuer redirected with. Why each piece is the way it is:

- **The code is worthless on its own.** The PKCE verifier that redeems it never leaves this
  server (``oidc_flows``), so a code intercepted on the way back (a hostile app registered
  for the same redirect, a log) cannot be redeemed through another flow.
- **A flow is used once.** It is keyed by the SHA-256 of ``state`` (a database leak yields
  no usable state), consumed by ``DELETE ... RETURNING`` before the code is redeemed, and
  expires after ten minutes: a replayed callback finds nothing.
- **The ID token is checked, not trusted.** Signature with a key from the issuer's JWKS,
  with the algorithm pinned to RS256 or ES256: never ``none``, never HMAC (which would let
  anyone who knows the issuer's *public* key forge tokens). Required ``iss``, ``aud`` (our
  client id), ``exp``, ``iat``, ``sub``, and the ``nonce`` of this flow, so a token minted
  for another login cannot be swapped in.
- **The loop never waits on the issuer.** Discovery, JWKS and the token exchange use
  ``urllib`` in a worker thread (:func:`asyncio.to_thread`) with a 5 s deadline; the tick
  and every other client carry on meanwhile. Discovery is cached for the process, the JWKS
  for an hour, and refetched once when a token names a key we do not have (rotation).
- **Accounts are resolved in one transaction**, serialised per external identity by an
  advisory lock, so two callbacks of one new identity cannot create two accounts.

Who a verified identity logs in as, in order: the account that started the flow while
signed in (explicit link; the identity must not belong to another account, and the flow
must be finished by that same account); the account the identity is already linked to;
else a new account (with the email when the issuer vouches for it). An identity whose
verified email is already an account's is never linked by that email alone (``conflict``,
``details.link_required``): without email verification at sign-up, the account may have
been registered by someone else first, and an account with MFA on would lose its second
factor. Its owner signs in and links explicitly.

Not configured (``oidc_issuer`` unset): both messages answer ``unavailable``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import logging
import math
import secrets
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import asyncpg
import jwt

from persistence.repos import accounts as repo
from protocol.accounts import OidcAuthorize, OidcFinish, OidcStart, Tokens
from protocol.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
)
from server.dispatch import HandlerMap, public
from server.domains.accounts import rules
from server.domains.accounts.http import (
    bearer_token,
    decode_body,
    guarded,
    http_client,
    tokens_response,
)
from server.domains.accounts.principal import Principal
from server.domains.accounts.service import Client, token_hash
from server.http import HttpRequest, HttpResponse, PostHandler
from server.ratelimit import KeyedBuckets

if TYPE_CHECKING:
    from server.app import App
    from server.session import Session

log = logging.getLogger("gearhall.accounts.oidc")

SCOPE = "openid email profile"
FLOW_TTL_S = 600
HTTP_TIMEOUT_S = 5.0
ALGORITHMS = ("RS256", "ES256")
"""The only ID-token algorithms accepted: asymmetric, and what Google and most issuers use."""
LEEWAY_S = 60
"""Clock skew allowed on ``exp`` and ``iat``."""
JWKS_MAX_AGE_S = 3600.0
MAX_RESPONSE_BYTES = 1 << 20
STARTS_PER_IP_PER_MINUTE = 20
"""``auth.oidc_start`` stores a row before anyone has authenticated: bounded per address."""
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_GOOGLE = "https://accounts.google.com"
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_NET_ERRORS = (OSError, http.client.HTTPException, ValueError)


# --- pure helpers ---------------------------------------------------------------------------


def check_redirect_uri(raw: str) -> str:
    """``raw`` if it is an absolute ``https`` URL, or ``http`` on the loopback address
    (native apps listening on 127.0.0.1, RFC 8252), without user info or fragment.

    Raises:
        BadRequestError: anything else.
    """
    bad = BadRequestError(
        "redirect_uri must be an https URL (http only on 127.0.0.1 or localhost), "
        "without a fragment",
        field="redirect_uri",
    )
    if any(c.isspace() or ord(c) < 0x20 for c in raw):
        raise bad
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise bad from None
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None or parts.fragment:
        raise bad
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and host in _LOOPBACK):
        return raw
    raise bad


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_endpoint(url: object, name: str) -> str:
    """An endpoint from the discovery document: https, or http on the loopback address
    (a local test issuer). Anything else (``file:``, plain http) would let a tampered
    document steer our requests.

    Raises:
        UnavailableError: not such a URL.
    """
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is not None and parts.hostname:
            scheme = parts.scheme.lower()
            if scheme == "https" or (scheme == "http" and parts.hostname in _LOOPBACK):
                return url
    raise UnavailableError(
        f"the login provider's discovery document has no usable {name}", field=name
    )


def _key_algorithm(jwk: dict[str, Any]) -> str | None:
    """The algorithm a JWK may verify, if it is one of :data:`ALGORITHMS`."""
    if jwk.get("use", "sig") != "sig":
        return None
    declared = jwk.get("alg")
    if jwk.get("kty") == "RSA":
        found = "RS256"
    elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        found = "ES256"
    else:
        return None
    return found if declared in (None, found) else None


def _parse_jwks(doc: dict[str, Any]) -> dict[str | None, jwt.PyJWK]:
    """Signing keys by ``kid``; keys of other types or algorithms are left out.

    Raises:
        UnavailableError: not a key set.
    """
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise UnavailableError("the login provider's key set is malformed")
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        alg = _key_algorithm(entry)
        kid = entry.get("kid")
        if alg is None or not (kid is None or isinstance(kid, str)):
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
    return keys


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# --- talking to the issuer -------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answer a redirect as the error it is here: the issuer's endpoints are where its
    discovery document says, and a token request must not be re-sent elsewhere."""

    def redirect_request(  # noqa: PLR0917 (the stdlib's signature)
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _fetch(req: urllib.request.Request) -> tuple[int, bytes]:
    """Blocking (runs in a worker thread): the status and body of any HTTP answer.

    Raises:
        OSError, http.client.HTTPException: no HTTP answer (refused, timed out, reset).
    """
    try:
        with _OPENER.open(req, timeout=HTTP_TIMEOUT_S) as resp:
            return int(resp.status), resp.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(MAX_RESPONSE_BYTES)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The parts of the issuer's discovery document this flow uses."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified ID token, reduced to what account resolution needs."""

    subject: str
    email: str | None  # normalised; None if absent or not an address
    email_verified: bool


class Provider:
    """The configured issuer as one node sees it: its endpoints and keys (cached), the
    token exchange and ID-token verification."""

    def __init__(
        self, issuer: str, client_id: str, client_secret: str | None, user_agent: str
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self._user_agent = user_agent
        # Google has issued ID tokens with the scheme-less issuer too (its own docs say so).
        self._accepted_iss = (issuer, "accounts.google.com") if issuer == _GOOGLE else (issuer,)
        self._endpoints: Endpoints | None = None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._keys_at = -math.inf
        # auth.oidc_start per client address (per node)
        self.starts = KeyedBuckets(STARTS_PER_IP_PER_MINUTE / 60.0, STARTS_PER_IP_PER_MINUTE)

    async def _request(
        self, url: str, what: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any] | None]:
        """GET ``url`` (or POST ``form``) off the event loop: (status, JSON object or None).

        Raises:
            UnavailableError: the issuer did not answer within the deadline.
        """
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        data = None
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            data = urlencode(form).encode("ascii")
        req = urllib.request.Request(url, data=data, headers=headers)
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                status, body = await asyncio.to_thread(_fetch, req)
        except _NET_ERRORS as exc:  # TimeoutError is an OSError
            log.warning("login provider unreachable (%s): %s", what, exc)
            raise UnavailableError(
                "the login provider cannot be reached", reason=type(exc).__name__
            ) from None
        return status, _json_object(body)

    async def _get(self, url: str, what: str) -> dict[str, Any]:
        """Raises: UnavailableError: unreachable, or no JSON object with status 200."""
        status, doc = await self._request(url, what)
        if status != HTTPStatus.OK or doc is None:
            log.warning("login provider answered %s for its %s", status, what)
            raise UnavailableError(f"the login provider's {what} is unavailable", status=status)
        return doc

    async def endpoints(self) -> Endpoints:
        """The issuer's discovery document, fetched once per process.

        Raises:
            UnavailableError: unreachable, malformed, or for another issuer.
        """
        if self._endpoints is not None:
            return self._endpoints
        doc = await self._get(
            self.issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document"
        )
        if doc.get("issuer") != self.issuer:
            log.error("discovery document of %s names issuer %r", self.issuer, doc.get("issuer"))
            raise UnavailableError("the login provider's discovery document is for another issuer")
        self._endpoints = Endpoints(
            authorization_endpoint=_check_endpoint(
                doc.get("authorization_endpoint"), "authorization_endpoint"
            ),
            token_endpoint=_check_endpoint(doc.get("token_endpoint"), "token_endpoint"),
            jwks_uri=_check_endpoint(doc.get("jwks_uri"), "jwks_uri"),
        )
        return self._endpoints

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The issuer's key ``kid``, refetching the key set once if it is not there.

        Raises:
            UnauthenticatedError: the issuer does not publish such a key.
            UnavailableError: the key set cannot be fetched.
        """
        for refetch in (False, True):
            if refetch or time.monotonic() - self._keys_at > JWKS_MAX_AGE_S:
                doc = await self._get((await self.endpoints()).jwks_uri, "key set")
                self._keys = _parse_jwks(doc)
                self._keys_at = time.monotonic()
            if kid is not None:
                key = self._keys.get(kid)
            else:  # no kid: fine only while the issuer has a single key of this algorithm
                fits = [k for k in self._keys.values() if k.algorithm_name == alg]
                key = fits[0] if len(fits) == 1 else None
            if key is not None:
                return key
        raise UnauthenticatedError(
            "the ID token is signed with a key the login provider does not publish"
        )

    async def exchange(self, code: str, redirect_uri: str, code_verifier: str) -> str:
        """Redeem an authorization code at the token endpoint: its ID token.

        Raises:
            UnauthenticatedError: the issuer refused the code (unknown, used, expired, or the
                PKCE verifier or redirect URI do not match), or answered no ID token.
            UnavailableError: unreachable, or it refused this server's client credentials.
        """
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "code_verifier": code_verifier,
        }
        if self._client_secret is not None:
            form["client_secret"] = self._client_secret
        status, doc = await self._request((await self.endpoints()).token_endpoint, "token", form)
        error = doc.get("error") if doc is not None else None
        if status == HTTPStatus.OK and doc is not None:
            id_token = doc.get("id_token")
            if isinstance(id_token, str) and id_token:
                return id_token
            raise UnauthenticatedError("the login provider answered no ID token")
        if status == HTTPStatus.UNAUTHORIZED or error in ("invalid_client", "unauthorized_client"):
            log.error("login provider refused our client credentials: %s %s", status, error)
            raise UnavailableError("external login is misconfigured (client refused)")
        if status == HTTPStatus.BAD_REQUEST:
            reason = error if isinstance(error, str) else "invalid_request"
            raise UnauthenticatedError(
                f"the login provider refused the code ({reason[:64]})", reason=reason[:64]
            )
        log.warning("login provider token endpoint answered %s", status)
        raise UnavailableError("the login provider's token endpoint is unavailable", status=status)

    async def verify(self, id_token: str, nonce: str) -> Identity:
        """Check an ID token's signature and claims (see the module docstring).

        Raises:
            UnauthenticatedError: it is not a valid token of this issuer for this flow.
            UnavailableError: the key set cannot be fetched.
        """
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise UnauthenticatedError("the ID token is malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise UnauthenticatedError(
                f"the ID token's algorithm is not accepted (only {', '.join(ALGORITHMS)})",
                alg=str(alg)[:16],
            )
        if not (kid is None or isinstance(kid, str)):
            raise UnauthenticatedError("the ID token is malformed")
        key = await self._key(kid, alg)
        if key.algorithm_name != alg:
            raise UnauthenticatedError("the ID token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                id_token,
                key=key.key,
                algorithms=[alg],
                audience=self.client_id,
                issuer=self._accepted_iss,
                leeway=LEEWAY_S,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the ID token has expired") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("the ID token's signature is invalid") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError("the ID token is for another client") from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError("the ID token is from another issuer") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise UnauthenticatedError(
                "the ID token is invalid", reason=type(exc).__name__
            ) from None
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise UnauthenticatedError("the ID token was not issued for this login (nonce)")
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.client_id:
            raise UnauthenticatedError("the ID token is for another client (azp)")
        subject = claims["sub"]
        if not isinstance(subject, str) or not 1 <= len(subject) <= 255:
            raise UnauthenticatedError("the ID token's subject is malformed")
        email: str | None = None
        if isinstance(claims.get("email"), str):
            try:
                email = rules.normalise_email(claims["email"])
            except BadRequestError:
                email = None
        return Identity(subject, email, claims.get("email_verified") is True)


_PROVIDERS: weakref.WeakKeyDictionary[App, Provider] = weakref.WeakKeyDictionary()


def provider(app: App) -> Provider:
    """The app's issuer (one per app, so its caches live as long as the process).

    Raises:
        UnavailableError: external login is not configured.
    """
    found = _PROVIDERS.get(app)
    if found is None:
        s = app.settings
        if not s.oidc_issuer:
            raise UnavailableError("external login is not configured")
        if not s.oidc_client_id:
            log.error("oidc_issuer is set but oidc_client_id is not: external login is off")
            raise UnavailableError("external login is not configured")
        found = Provider(
            s.oidc_issuer, s.oidc_client_id, s.oidc_client_secret, f"gearhall/{app.version}"
        )
        _PROVIDERS[app] = found
    return found


# --- flows in Postgres ---------------------------------------------------------------------------


async def _link(
    conn: asyncpg.Connection,
    issuer: str,
    identity: Identity,
    account: repo.Account,
    client: Client,
    *,
    via: str,
) -> None:
    await repo.link_oidc(conn, issuer, identity.subject, account.id, identity.email)
    await repo.audit(
        conn,
        "oidc_linked",
        actor_account_id=account.id,
        target_account_id=account.id,
        ip=client.ip,
        details={"issuer": issuer, "subject": identity.subject, "via": via},
    )


def _check_not_banned(account: repo.Account) -> None:
    if account.banned_at is not None:
        raise ForbiddenError("this account is banned", reason=account.ban_reason)


async def _resolve(
    conn: asyncpg.Connection,
    issuer: str,
    identity: Identity,
    link_account_id: int | None,
    client: Client,
) -> int:
    """The account a verified identity logs in as, linked or created as needed (call in a
    transaction; see the module docstring for the order).

    Raises:
        ConflictError: the identity belongs to another account than the one linking it, or
            its verified email is that of an account with MFA on.
        ForbiddenError: that account is banned.
        UnauthenticatedError: the account that started a link no longer exists.
    """
    await repo.lock_oidc_identity(conn, issuer, identity.subject)
    owner = await repo.oidc_account(conn, issuer, identity.subject)
    if link_account_id is not None:
        if owner is not None and owner != link_account_id:
            raise ConflictError("this external identity is already linked to another account")
        account = await repo.by_id(conn, link_account_id, lock=True)
        if account is None:
            raise UnauthenticatedError("account no longer exists")
        _check_not_banned(account)
        if owner is None:
            await _link(conn, issuer, identity, account, client, via="signed_in")
        return account.id
    if owner is not None:
        account = await repo.by_id(conn, owner)
        assert account is not None  # oidc_identities.account_id references accounts
        _check_not_banned(account)
        return account.id
    email = identity.email if identity.email_verified else None
    if email is not None and await repo.by_email(conn, email) is not None:
        # Never linked by email alone: we do not verify emails at sign-up, so whoever
        # registered this address first (perhaps not its owner: "pre-hijacking") would
        # share the account with the issuer's user, and for an account with MFA on, the
        # issuer's login would skip the second factor. The owner signs in and links.
        raise ConflictError(
            "an account with this email exists: sign in to it and link this login from there",
            link_required=True,
        )
    created = await repo.create(conn, email=email)
    if created is None:  # the email was registered meanwhile: the account goes without it
        created = await repo.create(conn)
        assert created is not None
    await repo.link_oidc(conn, issuer, identity.subject, created.id, identity.email)
    await repo.audit(
        conn,
        "register",
        target_account_id=created.id,
        ip=client.ip,
        details={"method": "oidc", "issuer": issuer, "subject": identity.subject},
    )
    return created.id


# --- the two steps, for the socket and for HTTP ----------------------------------------------


async def start(
    app: App, caller: Principal | None, redirect_uri: str, client: Client, rid: int
) -> OidcAuthorize:
    """A new flow: its state stored, the issuer's authorization URL answered. A caller
    signed in as an account starts a link of the external identity to that account.

    Raises:
        UnavailableError: not configured, the issuer or the database is unreachable.
        BadRequestError: ``redirect_uri`` is not acceptable.
        RateLimitedError: too many starts from this address.
    """
    issuer = provider(app)
    redirect_uri = check_redirect_uri(redirect_uri)
    retry_ms = issuer.starts.take(client.ip, time.monotonic())
    if retry_ms:
        raise RateLimitedError(retry_ms)
    endpoints = await issuer.endpoints()
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    link = caller.account_id if caller is not None and caller.kind == "account" else None
    try:
        async with app.pool.acquire() as conn:
            await repo.save_oidc_flow(
                conn,
                token_hash(state),
                code_verifier=verifier,
                nonce=nonce,
                redirect_uri=redirect_uri,
                link_account_id=link,
                ttl_s=FLOW_TTL_S,
            )
    except _DB_ERRORS as exc:
        raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None
    query = urlencode(
        {
            "response_type": "code",
            "client_id": issuer.client_id,
            "redirect_uri": redirect_uri,
            "scope": SCOPE,
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        },
        quote_via=quote,
    )
    base = endpoints.authorization_endpoint
    return OidcAuthorize(rid=rid, url=f"{base}{'&' if '?' in base else '?'}{query}", state=state)


async def finish(
    app: App, caller: Principal | None, code: str, state: str, *, client: Client, rid: int
) -> Tokens:
    """Consume the flow of ``state``, redeem ``code``, verify the ID token and log in as
    the account it resolves to (a new login session, method ``oidc``).

    Raises:
        UnauthenticatedError: unknown, expired or used state; the code or the ID token is
            refused; a link finished by someone else than the account that started it.
        ConflictError: the identity is linked to another account (or see :func:`_resolve`).
        ForbiddenError: the account is banned.
        UnavailableError: not configured, the issuer or the database is unreachable.
    """
    issuer = provider(app)
    try:
        async with app.pool.acquire() as conn:
            flow = await repo.take_oidc_flow(conn, token_hash(state))
    except _DB_ERRORS as exc:
        raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None
    if flow is None or not flow.live:
        raise UnauthenticatedError(
            "unknown, expired or already used login state: start again with auth.oidc_start"
        )
    link = flow.link_account_id
    if link is not None and (
        caller is None or caller.kind != "account" or caller.account_id != link
    ):
        # Else a link started by one account could be finished by a victim's browser,
        # attaching the victim's external identity to the starter's account.
        raise UnauthenticatedError("finish a link signed in as the account that started it")
    try:
        identity = await issuer.verify(
            await issuer.exchange(code, flow.redirect_uri, flow.code_verifier), flow.nonce
        )
    except UnauthenticatedError as exc:
        await _audit_failure(app, client, link, exc.message)
        raise
    try:
        async with app.pool.acquire() as conn, conn.transaction():
            account_id = await _resolve(conn, issuer.issuer, identity, link, client)
            return await app.accounts.start_session(conn, account_id, "oidc", client, rid)
    except _DB_ERRORS as exc:
        raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None


async def _audit_failure(app: App, client: Client, account_id: int | None, why: str) -> None:
    """Record a refused code or ID token (best effort: the refusal is answered anyway)."""
    try:
        async with app.pool.acquire() as conn:
            await repo.audit(
                conn,
                "login_failed",
                target_account_id=account_id,
                ip=client.ip,
                details={"stage": "oidc", "reason": why},
            )
    except _DB_ERRORS:
        log.warning("could not audit a refused external login", exc_info=True)


# --- socket handlers ---------------------------------------------------------------------------


def _session_client(session: Session) -> Client:
    return Client(session.client_ip, session.user_agent)


async def oidc_start(session: Session, msg: OidcStart) -> OidcAuthorize:
    return await start(
        session.app, session.principal, msg.redirect_uri, _session_client(session), msg.rid
    )


async def oidc_finish(session: Session, msg: OidcFinish) -> Tokens:
    return await finish(
        session.app,
        session.principal,
        msg.code,
        msg.state,
        client=_session_client(session),
        rid=msg.rid,
    )


HANDLERS: HandlerMap = {OidcStart: public(oidc_start), OidcFinish: public(oidc_finish)}


# --- HTTP endpoints ------------------------------------------------------------------------------


async def _http_caller(app: App, request: HttpRequest) -> Principal | None:
    """The caller named by ``Authorization: Bearer`` (to link), or None without one.

    Raises:
        UnauthenticatedError: a bearer token that is not valid.
    """
    token = bearer_token(request)
    if token is None:
        return None
    found = await app.accounts.authenticate(token, http_client(request))
    if found is None:
        raise UnauthenticatedError("token is invalid, expired or revoked")
    return found[0]


async def http_start(app: App, request: HttpRequest) -> HttpResponse:
    """``POST /auth/oidc/start {"redirect_uri"}`` → ``{"url", "state"}``."""
    msg = decode_body(request, OidcStart)
    caller = await _http_caller(app, request)
    reply = await start(app, caller, msg.redirect_uri, http_client(request), 0)
    body = json.dumps({"url": reply.url, "state": reply.state}).encode()
    return HttpResponse(HTTPStatus.OK, body)


async def http_finish(app: App, request: HttpRequest) -> HttpResponse:
    """``POST /auth/oidc/finish {"code", "state"}`` → tokens, as ``/auth/login``."""
    msg = decode_body(request, OidcFinish)
    caller = await _http_caller(app, request)
    return tokens_response(
        await finish(app, caller, msg.code, msg.state, client=http_client(request), rid=0)
    )


HTTP_ROUTES: dict[str, PostHandler] = {
    "/auth/oidc/start": guarded(http_start),
    "/auth/oidc/finish": guarded(http_finish),
}

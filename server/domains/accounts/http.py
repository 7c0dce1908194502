"""The account endpoints over plain HTTP on the game port, for launchers and web pages.

- ``POST /auth/register``, ``/auth/login``, ``/auth/device``, ``/auth/refresh`` take the
  fields of ``auth.register``, ``auth.login``, ``auth.device_login``, ``auth.refresh``
  (without ``t`` and ``rid``) and answer ``{"account_id", "session_id", "access_token",
  "refresh_token", "expires_in"}``.
- ``POST /auth/logout`` takes ``{"refresh_token"}`` (or ``Authorization: Bearer`` with an
  access token) and revokes that login session.
- ``POST /rpc`` runs any client message (``t``, ``rid`` and fields, as on the socket) for
  the caller named by ``Authorization: Bearer`` (an access token or an API key), through
  the same dispatcher and permission checks as the socket. There is no live player over
  HTTP, so player intents answer ``forbidden`` there.

Failures answer ``{"code", "message", "details"}`` with the socket's error codes: 400, 401,
403, 404, 409, 429 (with ``Retry-After``), 503.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, TypeVar

import msgspec

from persistence.repos import accounts as repo
from protocol.accounts import DeviceLogin, Login, Refresh, Register, Tokens
from protocol.base import Request, ServerMessage
from protocol.codec import CODECS
from protocol.errors import (
    BadRequestError,
    ErrorCode,
    UnauthenticatedError,
)
from protocol.messages import ErrorReply, SessionHello
from server.domains.accounts import service
from server.domains.accounts.principal import Principal
from server.domains.accounts.rules import Permission
from server.http import HttpRequest, HttpResponse, PostHandler

if TYPE_CHECKING:
    from server.app import App
    from server.session import Session

STATUS = {
    ErrorCode.BAD_REQUEST: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.CONFLICT: HTTPStatus.CONFLICT,
    ErrorCode.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}
"""HTTP status per error code; the game's own codes (cooldown_active...) are 409."""

_json = msgspec.json.Encoder()
_CODEC = CODECS["gearhall.v1.json"]


def error_response(code: ErrorCode, message: str, details: Mapping[str, object]) -> HttpResponse:
    headers: tuple[tuple[str, str], ...] = ()
    if code is ErrorCode.UNAUTHENTICATED:
        headers = (("WWW-Authenticate", 'Bearer realm="gearhall"'),)
    retry_ms = details.get("retry_after_ms")
    if code is ErrorCode.RATE_LIMITED and isinstance(retry_ms, int):
        headers = (("Retry-After", str(max(1, math.ceil(retry_ms / 1000)))),)
    body = _json.encode({"code": code.value, "message": message, "details": dict(details)})
    return HttpResponse(STATUS.get(code, HTTPStatus.CONFLICT), body, headers=headers)


def http_client(request: HttpRequest) -> service.Client:
    return service.Client(request.remote_ip, request.headers.get("user-agent", "")[:256])


R = TypeVar("R", bound=Request)


def decode_body(request: HttpRequest, kind: type[R]) -> R:
    """Raises: BadRequestError: not a JSON object of ``kind``'s fields."""
    try:
        fields = msgspec.json.decode(request.body)
        if not isinstance(fields, dict) or "rid" in fields or "t" in fields:
            raise BadRequestError("the body must be a JSON object of the request's fields")
        return msgspec.convert({**fields, "rid": 0}, kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequestError(f"invalid body: {exc}") from None


def tokens_response(reply: Tokens) -> HttpResponse:
    return HttpResponse(
        HTTPStatus.OK,
        _json.encode(
            {
                "account_id": reply.account_id,
                "session_id": reply.session_id,
                "access_token": reply.access_token,
                "refresh_token": reply.refresh_token,
                "expires_in": reply.expires_in,
            }
        ),
    )


def guarded(fn: PostHandler) -> PostHandler:
    """Turn an exception into its JSON error answer, through the dispatcher's
    ``error_reply`` (the one place exceptions become error replies: same codes, same
    metrics, unexpected ones logged and answered ``internal``)."""

    async def run(app: App, request: HttpRequest) -> HttpResponse:
        try:
            return await fn(app, request)
        except Exception as exc:
            reply = app.dispatcher.error_reply(None, exc)
            return error_response(reply.code, reply.message, reply.details)

    return run


def _session(app: App, request: HttpRequest, principal: Principal | None) -> Session:
    """A Session for one HTTP request: the client's address and User-Agent, the
    principal of its bearer token (None before login), no transport to write to."""
    from server.session import Session  # the session module imports the app's types

    session = Session(app, _NoTransport(), _CODEC)
    session.client_ip = request.remote_ip
    session.user_agent = request.headers.get("user-agent", "")[:256]
    if principal is not None:
        session.principal = principal
        # No live player over HTTP, and no socket to say hello on.
        session.permissions = principal.permissions - {Permission.GAME_PLAY}
    return session


async def _dispatch(app: App, request: HttpRequest, msg: Request) -> HttpResponse:
    """Run ``msg`` through the dispatcher as the socket would (before hello)."""
    reply = await app.dispatcher.dispatch(_session(app, request, None), msg)
    if isinstance(reply, ErrorReply):
        return error_response(reply.code, reply.message, reply.details)
    assert isinstance(reply, Tokens)
    return tokens_response(reply)


async def register(app: App, request: HttpRequest) -> HttpResponse:
    return await _dispatch(app, request, decode_body(request, Register))


async def login(app: App, request: HttpRequest) -> HttpResponse:
    return await _dispatch(app, request, decode_body(request, Login))


async def device(app: App, request: HttpRequest) -> HttpResponse:
    return await _dispatch(app, request, decode_body(request, DeviceLogin))


async def refresh(app: App, request: HttpRequest) -> HttpResponse:
    return await _dispatch(app, request, decode_body(request, Refresh))


def bearer_token(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def logout(app: App, request: HttpRequest) -> HttpResponse:
    """Revoke the login session of a refresh token (body) or access token (header).

    Raises: UnauthenticatedError: neither names a live session."""
    session_id = None
    async with app.pool.acquire() as conn, conn.transaction():
        bearer = bearer_token(request)
        if bearer is not None and bearer.startswith(service.ACCESS_PREFIX):
            grant = await repo.resolve_access(conn, service.token_hash(bearer))
            session_id = None if grant is None else grant.session_id
        elif request.body.strip():
            token = decode_body(request, Refresh).refresh_token
            row = await repo.lock_refresh(conn, service.token_hash(token))
            if row is not None and row.session_live and not row.used:
                session_id = row.session_id
        if session_id is None:
            raise UnauthenticatedError("no live session for these credentials")
        revoked = await repo.revoke_sessions(conn, reason="logout", session_ids=[session_id])
        await repo.audit(conn, "logout", ip=request.remote_ip, details={"session_id": session_id})
    return HttpResponse(HTTPStatus.OK, _json.encode({"revoked": len(revoked)}))


class _NoTransport:
    """A Session's transport for a single HTTP request: the reply is the HTTP answer, and
    nothing else is ever sent."""

    remote = "http"

    async def send(self, frame: bytes, text: bool) -> None:
        return None

    async def send_batch(self, frames: list[bytes], text: bool) -> None:
        return None

    def try_send(self, frame: bytes, text: bool) -> bool:
        return True

    async def close(self, code: int, reason: str) -> None:
        return None

    def abort(self) -> None:
        return None


async def rpc(app: App, request: HttpRequest) -> HttpResponse:
    """Any client message, for the caller of the bearer token (see the module docstring)."""
    token = bearer_token(request)
    if token is None:
        raise UnauthenticatedError("send Authorization: Bearer <access token or API key>")
    found = await app.accounts.authenticate(token, http_client(request))
    if found is None:
        raise UnauthenticatedError("token is invalid, expired or revoked")
    msg = _CODEC.decode(request.body)
    if isinstance(msg, SessionHello):
        raise BadRequestError("session.hello is for sockets")
    reply: ServerMessage = await app.dispatcher.dispatch(_session(app, request, found[0]), msg)
    if isinstance(reply, ErrorReply):
        return error_response(reply.code, reply.message, reply.details)
    return HttpResponse(HTTPStatus.OK, _CODEC.encode(reply))


ROUTES: dict[str, PostHandler] = {
    "/auth/register": guarded(register),
    "/auth/login": guarded(login),
    "/auth/device": guarded(device),
    "/auth/refresh": guarded(refresh),
    "/auth/logout": guarded(logout),
    "/rpc": guarded(rpc),
}

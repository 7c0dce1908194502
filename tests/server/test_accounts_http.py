"""The account endpoints over plain HTTP on the game port, through the real front door:
the same answers and error codes as the socket, 401 and 429 with their headers."""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any

import asyncpg

from server.app import App
from tests.support.client import Client

PASSWORD = "correct horse battery staple"


async def post(
    app: App, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST JSON with the standard library (a real HTTP client on a real socket)."""

    def call() -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        try:
            raw = b"" if body is None else json.dumps(body).encode()
            conn.request(
                "POST",
                path,
                body=raw,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            response = conn.getresponse()
            data = response.read()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                json.loads(data) if data else None,
            )
        finally:
            conn.close()

    return await asyncio.to_thread(call)


TOKEN_KEYS = {"account_id", "session_id", "access_token", "refresh_token", "expires_in"}


async def test_register_login_refresh_logout(app: App, url: str) -> None:
    status, _, tokens = await post(
        app, "/auth/register", {"email": "a@example.com", "password": PASSWORD}
    )
    assert status == 200 and set(tokens) == TOKEN_KEYS
    status, _, again = await post(
        app, "/auth/login", {"email": "A@example.com", "password": PASSWORD}
    )
    assert status == 200 and again["account_id"] == tokens["account_id"]
    # The access token opens a game session on the socket.
    client = await Client.open(url)
    welcome = await client.request("session.hello", token=again["access_token"])
    assert welcome["t"] == "session.welcome"
    status, _, rotated = await post(app, "/auth/refresh", {"refresh_token": again["refresh_token"]})
    assert status == 200 and rotated["session_id"] == again["session_id"]
    # Logging that session out closes its socket.
    status, _, done = await post(
        app, "/auth/logout", headers={"Authorization": f"Bearer {rotated['access_token']}"}
    )
    assert (status, done) == (200, {"revoked": 1})
    async with asyncio.timeout(1.0):
        await client.ws.wait_closed()
    assert client.ws.close_code == 1008
    # The first login session is still fine; logging out by refresh token works too.
    status, _, done = await post(app, "/auth/logout", {"refresh_token": tokens["refresh_token"]})
    assert (status, done) == (200, {"revoked": 1})
    status, _, _ = await post(app, "/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    assert status == 401


async def test_failures_use_the_socket_codes(app: App) -> None:
    status, headers, body = await post(
        app, "/auth/login", {"email": "x@example.com", "password": "nope nope"}
    )
    assert status == 401 and body["code"] == "unauthenticated"
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, body = await post(
        app, "/auth/register", {"email": "x@example.com", "password": "short"}
    )
    assert status == 400 and body["code"] == "bad_request" and body["details"]["rule"] == "length"
    status, _, body = await post(app, "/auth/login", {"email": "x@example.com"})
    assert status == 400 and body["code"] == "bad_request"
    status, _, body = await post(app, "/auth/login", ["not", "an", "object"])
    assert status == 400
    status, _, body = await post(
        app,
        "/auth/login",
        {"t": "auth.login", "rid": 1, "email": "x@example.com", "password": PASSWORD},
    )
    assert status == 400  # fields only: no tag, no rid
    status, _, body = await post(
        app, "/auth/login", {"email": "x@example.com", "password": PASSWORD, "admin": True}
    )
    assert status == 400  # unknown fields are refused, as on the socket


async def test_lockout_is_429_with_retry_after(app: App) -> None:
    await post(app, "/auth/register", {"email": "lock@example.com", "password": PASSWORD})
    for _ in range(5):
        status, _, _ = await post(
            app, "/auth/login", {"email": "lock@example.com", "password": "wrong guess!!"}
        )
        assert status == 401
    status, headers, body = await post(
        app, "/auth/login", {"email": "lock@example.com", "password": PASSWORD}
    )
    assert status == 429 and body["code"] == "rate_limited"
    assert int(headers["retry-after"]) >= 1
    assert body["details"]["retry_after_ms"] > 0


async def test_device_login_over_http(app: App) -> None:
    status, _, first = await post(app, "/auth/device", {"device_id": "z" * 32})
    status2, _, second = await post(app, "/auth/device", {"device_id": "z" * 32})
    assert status == status2 == 200 and first["account_id"] == second["account_id"]


async def test_rpc_runs_messages_for_a_bearer_with_the_same_permission_checks(
    app: App, url: str, dsn: str
) -> None:
    _, _, tokens = await post(
        app, "/auth/register", {"email": "r@example.com", "password": PASSWORD}
    )
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    status, _, profile = await post(app, "/rpc", {"t": "profile.get", "rid": 4}, bearer)
    assert status == 200 and profile["t"] == "profile" and profile["rid"] == 4
    assert profile["email"] == "r@example.com"
    # No live player over HTTP: player intents are forbidden; staff messages too (no role).
    status, _, body = await post(app, "/rpc", {"t": "player.get_stats", "rid": 5}, bearer)
    assert status == 403 and body["code"] == "forbidden"
    status, _, body = await post(app, "/rpc", {"t": "admin.audit_query", "rid": 6}, bearer)
    assert status == 403
    status, _, body = await post(app, "/rpc", {"t": "profile.get", "rid": 7})
    assert status == 401
    status, _, body = await post(
        app, "/rpc", {"t": "profile.get", "rid": 7}, {"Authorization": "Bearer gha_forged"}
    )
    assert status == 401
    # An API key made by an admin works on HTTP within its permissions.
    admin = await Client.open(url)
    await admin.request("session.hello", token="dev-admin:root")
    created = await admin.request("admin.create_api_key", name="ops", permissions=["audit.read"])
    await admin.close()
    key = {"Authorization": f"Bearer {created['key']}"}
    status, _, page = await post(
        app, "/rpc", {"t": "admin.audit_query", "rid": 8, "action": "login"}, key
    )
    assert status == 200 and page["t"] == "admin.audit_page" and page["entries"]
    status, _, body = await post(
        app,
        "/rpc",
        {"t": "admin.ban", "rid": 9, "account_id": tokens["account_id"], "reason": "x"},
        key,
    )
    assert status == 403
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT banned_at FROM accounts") is None
        used = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'api_key_used'")
        assert used == 2
    finally:
        await conn.close()


async def test_oidc_endpoints_are_served(app: App) -> None:
    # Not configured in this server: the route exists and answers the socket's code.
    status, _, body = await post(
        app, "/auth/oidc/start", {"redirect_uri": "https://game.example/cb"}
    )
    assert status == 503 and body["code"] == "unavailable"

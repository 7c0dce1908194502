"""External login (OpenID Connect, authorization code + PKCE) against a stand-in issuer that
runs as a real HTTP server and signs real ID tokens (tests/support/oidc_issuer.py).

Each test plays the game client on a socket (``auth.oidc_start``, then ``auth.oidc_finish``
with what the issuer redirected with) and the browser in between
(:meth:`StandInIssuer.sign_in`), then checks the answer and what Postgres holds.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pyotp
import pytest

from persistence.repos import accounts as repo
from server.app import App
from server.config import Settings
from server.domains.accounts.oidc import HTTP_ROUTES, pkce_challenge
from server.http import HttpRequest
from tests.support.client import Client
from tests.support.oidc_issuer import Misbehaviour, StandInIssuer, User

REDIRECT = "http://127.0.0.1:7777/callback"
PASSWORD = "a long unusual passphrase"


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def issuer() -> Iterator[StandInIssuer]:
    with StandInIssuer() as stand_in:
        yield stand_in


def oidc_settings(make_settings: Callable[..., Settings], issuer: StandInIssuer) -> Settings:
    return make_settings(
        oidc_issuer=issuer.url,
        oidc_client_id=issuer.client_id,
        oidc_client_secret=issuer.client_secret,
    )


@pytest.fixture
async def oidc_app(
    make_settings: Callable[..., Settings], issuer: StandInIssuer
) -> AsyncIterator[App]:
    app = App(oidc_settings(make_settings, issuer))
    await app.start()
    yield app
    await app.stop()


def ws_url(app: App) -> str:
    return f"ws://127.0.0.1:{app.port}/"


async def authorize(client: Client, issuer: StandInIssuer, user: User) -> tuple[str, str]:
    """Start a flow on ``client`` and sign in at the issuer: (code, state)."""
    reply = await client.request("auth.oidc_start", redirect_uri=REDIRECT)
    assert reply["t"] == "auth.oidc_authorize", reply
    code, state = await issuer.sign_in(reply["url"], user)
    assert state == reply["state"]
    return code, state


async def oidc_login(app: App, issuer: StandInIssuer, user: User) -> dict[str, Any]:
    """A whole login on a fresh socket: the reply to ``auth.oidc_finish``."""
    client = await Client.open(ws_url(app))
    try:
        code, state = await authorize(client, issuer, user)
        return await client.request("auth.oidc_finish", code=code, state=state)
    finally:
        await client.close()


def tokens(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["t"] == "auth.tokens", reply
    return reply


def error(reply: dict[str, Any], code: str) -> dict[str, Any]:
    assert reply["t"] == "error", reply
    assert reply["code"] == code, reply
    return reply


async def register(app: App, email: str) -> dict[str, Any]:
    client = await Client.open(ws_url(app))
    try:
        return tokens(await client.request("auth.register", email=email, password=PASSWORD))
    finally:
        await client.close()


async def signed_in(app: App, access_token: str) -> tuple[Client, dict[str, Any]]:
    client = await Client.open(ws_url(app))
    welcome = await client.request("session.hello", token=access_token)
    assert welcome["t"] == "session.welcome", welcome
    return client, welcome


async def count(app: App, table: str) -> int:
    async with app.pool.acquire() as conn:
        n: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return n


async def counts(app: App) -> dict[str, int]:
    tables = ("accounts", "oidc_identities", "auth_sessions", "auth_tokens", "oidc_flows")
    return {t: await count(app, t) for t in tables}


async def audit(app: App) -> list[tuple[str, int | None, dict[str, Any]]]:
    async with app.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT action, target_account_id, details FROM audit_log ORDER BY id"
        )
    return [(r["action"], r["target_account_id"], json.loads(r["details"])) for r in rows]


async def identities(app: App) -> dict[str, int]:
    async with app.pool.acquire() as conn:
        rows = await conn.fetch("SELECT subject, account_id FROM oidc_identities")
    return {r["subject"]: r["account_id"] for r in rows}


async def account_email(app: App, account_id: int) -> str | None:
    async with app.pool.acquire() as conn:
        account = await repo.by_id(conn, account_id)
    assert account is not None
    return account.email


# --- logging in ------------------------------------------------------------------------------


async def test_first_login_creates_an_account_whose_token_opens_a_session(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    user = User("google-123", "New.Player@Example.COM", email_verified=True)
    client = await Client.open(ws_url(oidc_app))
    start = await client.request("auth.oidc_start", redirect_uri=REDIRECT)
    assert start["t"] == "auth.oidc_authorize", start

    # The authorization URL asks for a code with PKCE (S256) and a nonce.
    url = urlsplit(start["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{issuer.url}/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == issuer.client_id
    assert query["redirect_uri"] == REDIRECT
    assert query["scope"] == "openid email profile"
    assert query["state"] == start["state"]
    assert query["code_challenge_method"] == "S256"
    assert len(query["nonce"]) >= 32
    # Postgres holds the flow by the hash of its state, with the verifier of that challenge.
    async with oidc_app.pool.acquire() as conn:
        flow = await conn.fetchrow("SELECT * FROM oidc_flows")
    assert flow["state_hash"] == hashlib.sha256(start["state"].encode()).digest()
    assert 43 <= len(flow["code_verifier"]) <= 128
    assert pkce_challenge(flow["code_verifier"]) == query["code_challenge"]
    assert flow["nonce"] == query["nonce"]

    code, state = await issuer.sign_in(start["url"], user)
    reply = tokens(await client.request("auth.oidc_finish", code=code, state=state))
    await client.close()

    assert await counts(oidc_app) == {
        "accounts": 1,
        "oidc_identities": 1,
        "auth_sessions": 1,
        "auth_tokens": 2,
        "oidc_flows": 0,
    }
    account_id = reply["account_id"]
    assert await identities(oidc_app) == {"google-123": account_id}
    assert await account_email(oidc_app, account_id) == "new.player@example.com"
    async with oidc_app.pool.acquire() as conn:
        method = await conn.fetchval("SELECT method FROM auth_sessions")
    assert method == "oidc"
    assert await audit(oidc_app) == [
        (
            "register",
            account_id,
            {"method": "oidc", "issuer": issuer.url, "subject": "google-123"},
        ),
        ("login", account_id, {"method": "oidc", "session_id": reply["session_id"]}),
    ]

    # The access token opens a game session as that account's player.
    player, welcome = await signed_in(oidc_app, reply["access_token"])
    profile = await player.request("profile.get")
    await player.close()
    assert profile["account_id"] == account_id
    assert welcome["player_id"] == profile["player_id"]


async def test_the_same_identity_logs_in_to_the_same_account(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    user = User("google-7", "seven@example.com", email_verified=True)
    first = tokens(await oidc_login(oidc_app, issuer, user))
    second = tokens(await oidc_login(oidc_app, issuer, user))
    assert second["account_id"] == first["account_id"]
    assert second["session_id"] != first["session_id"]
    counted = await counts(oidc_app)
    assert (counted["accounts"], counted["auth_sessions"]) == (1, 2)
    assert [a for a, _, _ in await audit(oidc_app)] == ["register", "login", "login"]


async def test_a_verified_email_of_an_existing_account_needs_an_explicit_link(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    registered = await register(oidc_app, "Alice@Example.com")
    user = User("google-alice", "alice@EXAMPLE.com", email_verified=True)
    # Not linked by the email alone (the account may have been registered by someone else
    # first): nothing is created or linked.
    reply = error(await oidc_login(oidc_app, issuer, user), "conflict")
    assert reply["details"] == {"link_required": True}
    assert await count(oidc_app, "accounts") == 1
    assert await identities(oidc_app) == {}
    # The owner signs in and links; from then on the identity leads there.
    client, _ = await signed_in(oidc_app, registered["access_token"])
    code, state = await authorize(client, issuer, user)
    linked = tokens(await client.request("auth.oidc_finish", code=code, state=state))
    await client.close()
    assert linked["account_id"] == registered["account_id"]
    again = tokens(await oidc_login(oidc_app, issuer, User("google-alice", "other@example.com")))
    assert again["account_id"] == registered["account_id"]


async def test_an_unverified_email_gets_a_new_account(oidc_app: App, issuer: StandInIssuer) -> None:
    registered = await register(oidc_app, "bob@example.com")
    user = User("google-bob", "bob@example.com", email_verified=False)
    reply = tokens(await oidc_login(oidc_app, issuer, user))
    assert reply["account_id"] != registered["account_id"]
    assert await count(oidc_app, "accounts") == 2
    assert await account_email(oidc_app, reply["account_id"]) is None
    assert await identities(oidc_app) == {"google-bob": reply["account_id"]}
    assert "oidc_linked" not in [a for a, _, _ in await audit(oidc_app)]


async def test_an_account_with_mfa_is_not_linked_by_email(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    registered = await register(oidc_app, "carol@example.com")
    client, _ = await signed_in(oidc_app, registered["access_token"])
    enrolment = await client.request("mfa.enroll")
    confirmed = await client.request("mfa.confirm", code=pyotp.TOTP(enrolment["secret"]).now())
    assert confirmed["t"] == "mfa.recovery_codes", confirmed
    await client.close()

    user = User("google-carol", "carol@example.com", email_verified=True)
    reply = error(await oidc_login(oidc_app, issuer, user), "conflict")
    assert reply["details"] == {"link_required": True}
    assert await count(oidc_app, "accounts") == 1
    assert await identities(oidc_app) == {}


async def test_a_banned_account_cannot_log_in(oidc_app: App, issuer: StandInIssuer) -> None:
    user = User("google-banned")
    first = tokens(await oidc_login(oidc_app, issuer, user))
    async with oidc_app.pool.acquire() as conn:
        await repo.set_ban(conn, first["account_id"], "griefing")
    reply = error(await oidc_login(oidc_app, issuer, user), "forbidden")
    assert reply["details"] == {"reason": "griefing"}
    assert await count(oidc_app, "auth_sessions") == 1


async def test_an_es256_issuer_works_too(
    make_settings: Callable[..., Settings],
) -> None:
    with StandInIssuer(alg="ES256") as issuer:
        app = App(oidc_settings(make_settings, issuer))
        await app.start()
        try:
            assert issuer.jwks()["keys"][0]["kty"] == "EC"
            reply = tokens(await oidc_login(app, issuer, User("ec-user")))
            assert await identities(app) == {"ec-user": reply["account_id"]}
        finally:
            await app.stop()


# --- linking while signed in -------------------------------------------------------------------


async def test_linking_while_signed_in(oidc_app: App, issuer: StandInIssuer) -> None:
    registered = await register(oidc_app, "dave@example.com")
    account_id = registered["account_id"]
    client, _ = await signed_in(oidc_app, registered["access_token"])
    # An unverified, different email: only the signed-in session makes this a link.
    user = User("google-dave", "dave.elsewhere@example.net", email_verified=False)
    code, state = await authorize(client, issuer, user)
    reply = tokens(await client.request("auth.oidc_finish", code=code, state=state))
    await client.close()
    assert reply["account_id"] == account_id
    assert await identities(oidc_app) == {"google-dave": account_id}
    assert await count(oidc_app, "accounts") == 1
    entries = await audit(oidc_app)
    assert (
        "oidc_linked",
        account_id,
        {"issuer": issuer.url, "subject": "google-dave", "via": "signed_in"},
    ) in entries
    assert entries[-1][0] == "login" and entries[-1][2]["method"] == "oidc"
    # The identity now logs in to that account from anywhere.
    again = tokens(await oidc_login(oidc_app, issuer, user))
    assert again["account_id"] == account_id


async def test_a_link_is_finished_only_by_the_account_that_started_it(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    registered = await register(oidc_app, "erin@example.com")
    starter, _ = await signed_in(oidc_app, registered["access_token"])
    code, state = await authorize(starter, issuer, User("google-victim"))
    await starter.close()
    # The callback lands in someone else's (signed-out) client.
    other = await Client.open(ws_url(oidc_app))
    reply = error(
        await other.request("auth.oidc_finish", code=code, state=state), "unauthenticated"
    )
    await other.close()
    assert "signed in as the account that started it" in reply["message"]
    assert await identities(oidc_app) == {}
    assert issuer.hits("POST /token") == 0  # the code was never redeemed


async def test_an_identity_linked_elsewhere_is_a_conflict(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    user = User("google-shared")
    owner = tokens(await oidc_login(oidc_app, issuer, user))
    registered = await register(oidc_app, "frank@example.com")
    client, _ = await signed_in(oidc_app, registered["access_token"])
    code, state = await authorize(client, issuer, user)
    reply = await client.request("auth.oidc_finish", code=code, state=state)
    await client.close()
    error(reply, "conflict")
    assert await identities(oidc_app) == {"google-shared": owner["account_id"]}
    assert "oidc_linked" not in [a for a, _, _ in await audit(oidc_app)]


# --- refused flows ------------------------------------------------------------------------------


async def test_a_state_works_once(oidc_app: App, issuer: StandInIssuer) -> None:
    client = await Client.open(ws_url(oidc_app))
    start = await client.request("auth.oidc_start", redirect_uri=REDIRECT)
    user = User("google-replay")
    code, state = await issuer.sign_in(start["url"], user)
    tokens(await client.request("auth.oidc_finish", code=code, state=state))
    # The same callback again, and a fresh code the issuer would grant for the same state.
    replay = await client.request("auth.oidc_finish", code=code, state=state)
    fresh_code, _ = await issuer.sign_in(start["url"], user)
    fresh = await client.request("auth.oidc_finish", code=fresh_code, state=state)
    await client.close()
    for reply in (replay, fresh):
        assert "already used" in error(reply, "unauthenticated")["message"]
    assert issuer.hits("POST /token") == 1
    assert await count(oidc_app, "auth_sessions") == 1


async def test_an_expired_flow_is_refused(oidc_app: App, issuer: StandInIssuer) -> None:
    client = await Client.open(ws_url(oidc_app))
    code, state = await authorize(client, issuer, User("google-late"))
    async with oidc_app.pool.acquire() as conn:
        await conn.execute("UPDATE oidc_flows SET expires_at = now() - interval '1 second'")
    reply = await client.request("auth.oidc_finish", code=code, state=state)
    await client.close()
    error(reply, "unauthenticated")
    assert issuer.hits("POST /token") == 0
    assert await counts(oidc_app) == dict.fromkeys(
        ("accounts", "oidc_identities", "auth_sessions", "auth_tokens", "oidc_flows"), 0
    )


async def test_an_intercepted_code_cannot_be_redeemed_through_another_flow(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    victim = await Client.open(ws_url(oidc_app))
    code, _ = await authorize(victim, issuer, User("google-victim"))
    await victim.close()
    # The attacker has the victim's code, and a flow (state, verifier) of their own.
    attacker = await Client.open(ws_url(oidc_app))
    own = await attacker.request("auth.oidc_start", redirect_uri=REDIRECT)
    reply = await attacker.request("auth.oidc_finish", code=code, state=own["state"])
    await attacker.close()
    error(reply, "unauthenticated")
    assert issuer.log.token_errors == ["code_verifier"]  # refused by PKCE, nothing else
    assert await count(oidc_app, "accounts") == 0


async def test_a_tampered_verifier_is_refused(oidc_app: App, issuer: StandInIssuer) -> None:
    client = await Client.open(ws_url(oidc_app))
    code, state = await authorize(client, issuer, User("google-tamper"))
    async with oidc_app.pool.acquire() as conn:
        await conn.execute("UPDATE oidc_flows SET code_verifier = $1", "x" * 64)
    reply = await client.request("auth.oidc_finish", code=code, state=state)
    await client.close()
    error(reply, "unauthenticated")
    assert issuer.log.token_errors == ["code_verifier"]
    assert await count(oidc_app, "accounts") == 0
    assert ("login_failed", None) in [(a, t) for a, t, _ in await audit(oidc_app)]


@pytest.mark.parametrize(
    ("misbehaviour", "says"),
    [
        (Misbehaviour.FOREIGN_KEY, "signature is invalid"),
        (Misbehaviour.UNKNOWN_KID, "does not publish"),
        (Misbehaviour.ALG_NONE, "algorithm is not accepted"),
        (Misbehaviour.HS256, "algorithm is not accepted"),
        (Misbehaviour.WRONG_AUDIENCE, "another client"),
        (Misbehaviour.WRONG_ISSUER, "another issuer"),
        (Misbehaviour.WRONG_NONCE, "nonce"),
        (Misbehaviour.EXPIRED, "expired"),
    ],
)
async def test_a_bad_id_token_is_refused_and_creates_nothing(
    oidc_app: App, issuer: StandInIssuer, misbehaviour: Misbehaviour, says: str
) -> None:
    issuer.misbehave = misbehaviour
    reply = error(await oidc_login(oidc_app, issuer, User("google-x")), "unauthenticated")
    assert says in reply["message"]
    assert await counts(oidc_app) == dict.fromkeys(
        ("accounts", "oidc_identities", "auth_sessions", "auth_tokens", "oidc_flows"), 0
    )
    failures = [d for a, _, d in await audit(oidc_app) if a == "login_failed"]
    assert failures == [{"stage": "oidc", "reason": reply["message"]}]
    # The same login with an honest token goes through: the refusal was the token's fault.
    issuer.misbehave = None
    tokens(await oidc_login(oidc_app, issuer, User("google-x")))


async def test_the_key_set_is_refetched_once_for_an_unknown_key(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    tokens(await oidc_login(oidc_app, issuer, User("google-k1")))
    assert (issuer.hits("GET /.well-known/openid-configuration"), issuer.hits("GET /jwks")) == (
        1,
        1,
    )
    tokens(await oidc_login(oidc_app, issuer, User("google-k2")))
    assert issuer.hits("GET /jwks") == 1  # cached
    issuer.rotate_key()
    tokens(await oidc_login(oidc_app, issuer, User("google-k3")))
    assert issuer.hits("GET /jwks") == 2  # the new kid made it look again, once
    issuer.misbehave = Misbehaviour.UNKNOWN_KID
    error(await oidc_login(oidc_app, issuer, User("google-k4")), "unauthenticated")
    assert issuer.hits("GET /jwks") == 3  # one more look, not a loop
    assert issuer.hits("GET /.well-known/openid-configuration") == 1


# --- configuration, the issuer's availability, input ------------------------------------------


async def test_not_configured_is_unavailable(app: App) -> None:
    client = await Client.open(ws_url(app))
    start = await client.request("auth.oidc_start", redirect_uri=REDIRECT)
    finish = await client.request("auth.oidc_finish", code="abc", state="s" * 43)
    await client.close()
    for reply in (start, finish):
        assert error(reply, "unavailable")["message"] == "external login is not configured"


async def test_an_unreachable_issuer_is_unavailable(
    make_settings: Callable[..., Settings],
) -> None:
    # A port held bound but not listening: connections are refused, and nothing else (the
    # server under test included) can be given that port meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        app = App(
            make_settings(
                oidc_issuer=f"http://127.0.0.1:{held.getsockname()[1]}",
                oidc_client_id="gearhall",
                oidc_client_secret="secret",
            )
        )
        await app.start()
        try:
            client = await Client.open(ws_url(app))
            reply = await client.request("auth.oidc_start", redirect_uri=REDIRECT)
            await client.close()
        finally:
            await app.stop()
    assert "cannot be reached" in error(reply, "unavailable")["message"]


async def test_a_discovery_document_for_another_issuer_is_refused(
    oidc_app: App, issuer: StandInIssuer
) -> None:
    issuer.advertised_issuer = "https://accounts.google.com"
    client = await Client.open(ws_url(oidc_app))
    reply = await client.request("auth.oidc_start", redirect_uri=REDIRECT)
    await client.close()
    assert "another issuer" in error(reply, "unavailable")["message"]
    assert await count(oidc_app, "oidc_flows") == 0


@pytest.mark.parametrize(
    ("redirect_uri", "accepted"),
    [
        ("https://game.example/oidc/callback", True),
        ("http://localhost:51000/cb", True),
        ("http://127.0.0.1:51000/cb?x=1", True),
        ("http://game.example/cb", False),
        ("https://game.example/cb#fragment", False),
        ("https://user:pw@game.example/cb", False),
        ("javascript:alert(1)", False),
        ("com.example.game:/callback", False),
        ("/relative/callback", False),
    ],
)
async def test_redirect_uri_must_be_https_or_loopback(
    oidc_app: App, redirect_uri: str, accepted: bool
) -> None:
    client = await Client.open(ws_url(oidc_app))
    reply = await client.request("auth.oidc_start", redirect_uri=redirect_uri)
    await client.close()
    if accepted:
        assert reply["t"] == "auth.oidc_authorize", reply
    else:
        assert error(reply, "bad_request")["details"] == {"field": "redirect_uri"}
    assert await count(oidc_app, "oidc_flows") == (1 if accepted else 0)


async def test_starts_are_limited_per_address(oidc_app: App) -> None:
    client = await Client.open(ws_url(oidc_app))
    replies = [await client.request("auth.oidc_start", redirect_uri=REDIRECT) for _ in range(25)]
    await client.close()
    kinds = [r.get("code", r["t"]) for r in replies]
    assert kinds[:20] == ["auth.oidc_authorize"] * 20
    assert "rate_limited" in kinds[20:]
    assert await count(oidc_app, "oidc_flows") == kinds.count("auth.oidc_authorize")


# --- over HTTP ---------------------------------------------------------------------------------


def post(path: str, body: dict[str, Any], bearer: str | None = None) -> HttpRequest:
    headers = {"content-type": "application/json", "user-agent": "launcher/1.0"}
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    return HttpRequest("POST", path, headers, msgspec.json.encode(body), "127.0.0.1")


async def test_the_http_endpoints_log_in_and_link(oidc_app: App, issuer: StandInIssuer) -> None:
    routes = HTTP_ROUTES
    start = await routes["/auth/oidc/start"](
        oidc_app, post("/auth/oidc/start", {"redirect_uri": REDIRECT})
    )
    assert start.status == HTTPStatus.OK, start.body
    started = json.loads(start.body)
    code, state = await issuer.sign_in(started["url"], User("google-http"))
    finish = await routes["/auth/oidc/finish"](
        oidc_app, post("/auth/oidc/finish", {"code": code, "state": state})
    )
    assert finish.status == HTTPStatus.OK, finish.body
    logged_in = json.loads(finish.body)
    assert set(logged_in) == {
        "account_id",
        "session_id",
        "access_token",
        "refresh_token",
        "expires_in",
    }
    replay = await routes["/auth/oidc/finish"](
        oidc_app, post("/auth/oidc/finish", {"code": code, "state": state})
    )
    assert replay.status == HTTPStatus.UNAUTHORIZED
    assert json.loads(replay.body)["code"] == "unauthenticated"

    # With a bearer token, a second identity is linked to the same account.
    start = await routes["/auth/oidc/start"](
        oidc_app,
        post("/auth/oidc/start", {"redirect_uri": REDIRECT}, logged_in["access_token"]),
    )
    code, state = await issuer.sign_in(json.loads(start.body)["url"], User("google-http-2"))
    linked = await routes["/auth/oidc/finish"](
        oidc_app,
        post("/auth/oidc/finish", {"code": code, "state": state}, logged_in["access_token"]),
    )
    assert linked.status == HTTPStatus.OK, linked.body
    assert json.loads(linked.body)["account_id"] == logged_in["account_id"]
    assert await identities(oidc_app) == {
        "google-http": logged_in["account_id"],
        "google-http-2": logged_in["account_id"],
    }
    bad = await routes["/auth/oidc/start"](
        oidc_app, post("/auth/oidc/start", {"redirect_uri": "http://evil.example/"})
    )
    assert bad.status == HTTPStatus.BAD_REQUEST

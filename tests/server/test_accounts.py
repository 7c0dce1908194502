"""Accounts over real sockets and a real Postgres: sign-up, login, tokens, revocation,
lockouts, MFA, device accounts, profiles, bans, API keys and the audit log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pyotp
import pytest
from websockets.exceptions import ConnectionClosed

from server.app import App
from tests.support.client import Client

PASSWORD = "correct horse battery staple"
CLOSE_DEADLINE_S = 1.0  # the promise: a revoked session's socket closes within 1 s


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def register(url: str, email: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    client = await Client.open(url)
    try:
        reply = await client.request("auth.register", email=email, password=password, **extra)
    finally:
        await client.close()
    assert reply["t"] == "auth.tokens", reply
    return reply


async def signed_in(url: str, access_token: str) -> tuple[Client, dict[str, Any]]:
    client = await Client.open(url)
    welcome = await client.request("session.hello", token=access_token)
    assert welcome["t"] == "session.welcome", welcome
    return client, welcome


async def login(url: str, email: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    client = await Client.open(url)
    try:
        return await client.request("auth.login", email=email, password=password, **extra)
    finally:
        await client.close()


async def closed_with(client: Client, deadline: float = CLOSE_DEADLINE_S) -> tuple[int, str]:
    """Wait (bounded) for the server to close the socket; its close code and reason."""
    async with asyncio.timeout(deadline):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await client.ws.recv()
    rcvd = info.value.rcvd
    assert rcvd is not None, "closed without a close frame"
    return rcvd.code, rcvd.reason


def error(reply: dict[str, Any], code: str) -> dict[str, Any]:
    assert reply["t"] == "error" and reply["code"] == code, reply
    return reply


# --- sign-up and login ---------------------------------------------------------------------------


async def test_register_then_hello_with_the_access_token(url: str, db: asyncpg.Connection) -> None:
    tokens = await register(url, "  Ana@EXAMPLE.com ", display_name="Ana")
    assert tokens["access_token"].startswith("gha_")
    assert tokens["refresh_token"].startswith("ghr_")
    assert tokens["expires_in"] == 15 * 60
    client, welcome = await signed_in(url, tokens["access_token"])
    row = await db.fetchrow(
        "SELECT email, player_id FROM accounts WHERE id = $1", tokens["account_id"]
    )
    assert row["email"] == "ana@example.com"  # normalised
    assert welcome["player_id"] == row["player_id"]
    assert welcome["state"] is not None
    assert (await client.request("ping"))["t"] == "pong"
    profile = await client.request("profile.get")
    assert profile["email"] == "ana@example.com" and profile["display_name"] == "Ana"
    assert profile["roles"] == ["player"] and profile["guest"] is False
    await client.close()
    # Tokens are stored hashed: the raw token appears nowhere in the database.
    stored = await db.fetch("SELECT token_hash FROM auth_tokens")
    assert len(stored) == 2
    assert all(tokens["access_token"].encode() not in bytes(r["token_hash"]) for r in stored)


async def test_login_with_any_spelling_of_the_email(url: str) -> None:
    first = await register(url, "bo@example.com")
    reply = await login(url, " BO@Example.COM")
    assert reply["t"] == "auth.tokens" and reply["account_id"] == first["account_id"]
    assert reply["session_id"] != first["session_id"]


@pytest.mark.parametrize(
    ("password", "rule"),
    [("short", "length"), ("1234567890", "common"), ("qwertyuiop", "common"),
     ("aaaaaaaaaaaa", "common"), ("carl@example.com", "email")],
)  # fmt: skip
async def test_password_policy(url: str, db: asyncpg.Connection, password: str, rule: str) -> None:
    client = await Client.open(url)
    reply = await client.request("auth.register", email="carl@example.com", password=password)
    assert error(reply, "bad_request")["details"]["rule"] == rule
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0
    await client.close()


async def test_responses_do_not_reveal_whether_an_email_exists(url: str) -> None:
    await register(url, "dora@example.com")
    unknown = await login(url, "nobody@example.com", rid=7)
    wrong = await login(url, "dora@example.com", password="not the password at all", rid=7)
    assert unknown == wrong
    assert unknown["code"] == "unauthenticated"
    # Signing up again with a taken email answers exactly as a failed login.
    client = await Client.open(url)
    again = await client.request(
        "auth.register", rid=7, email="dora@example.com", password="another long passphrase"
    )
    assert again == wrong
    await client.close()


async def test_bad_email_is_a_bad_request(url: str) -> None:
    client = await Client.open(url)
    for email in ["no-at-sign", "a@b", "two@@example.com", "a b@example.com"]:
        reply = await client.request("auth.register", email=email, password=PASSWORD)
        assert error(reply, "bad_request")["details"]["field"] == "email", email
    await client.close()


async def test_lockout_after_repeated_failures(url: str, db: asyncpg.Connection) -> None:
    await register(url, "eve@example.com")
    for _ in range(5):
        assert (await login(url, "eve@example.com", password="wrong guess " * 2))[
            "code"
        ] == "unauthenticated"
    # Locked: even the right password is refused, with when to retry.
    locked = error(await login(url, "eve@example.com"), "rate_limited")
    assert 0 < locked["details"]["retry_after_ms"] <= 1000
    row = await db.fetchrow(
        "SELECT failures, extract(epoch FROM locked_until - now()) AS left_s "
        "FROM login_throttles WHERE key = 'email:eve@example.com'"
    )
    assert row["failures"] == 5 and 0 < row["left_s"] <= 1.0
    failed = await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'login_failed'")
    assert failed == 5


async def test_unknown_email_is_locked_out_too(url: str) -> None:
    for _ in range(5):
        await login(url, "ghost@example.com", password="wrong guess wrong guess")
    error(await login(url, "ghost@example.com", password="wrong guess wrong guess"), "rate_limited")


async def test_signups_are_limited_per_address(make_settings: Any) -> None:
    app = App(make_settings(signups_per_ip_per_hour=4))  # burst of 1
    await app.start()
    try:
        url = f"ws://127.0.0.1:{app.port}"
        await register(url, "first@example.com")
        client = await Client.open(url)
        reply = await client.request("auth.register", email="second@example.com", password=PASSWORD)
        assert error(reply, "rate_limited")["details"]["retry_after_ms"] > 0
        await client.close()
    finally:
        await app.stop()


# --- tokens --------------------------------------------------------------------------------------


async def test_forged_expired_and_wrong_kind_tokens_are_refused(
    url: str, db: asyncpg.Connection
) -> None:
    tokens = await register(url, "fay@example.com")
    client = await Client.open(url)
    forged = "gha_" + "A" * 43
    for token in [forged, tokens["refresh_token"], tokens["access_token"] + "x", "gha_"]:
        reply = await client.request("session.hello", token=token)
        assert error(reply, "unauthenticated"), token
    await db.execute("UPDATE auth_tokens SET expires_at = now() - interval '1 second'")
    error(await client.request("session.hello", token=tokens["access_token"]), "unauthenticated")
    error(await client.request("ping"), "unauthenticated")
    await client.close()


async def test_dev_tokens_are_refused_when_dev_auth_is_off(make_settings: Any) -> None:
    app = App(make_settings(dev_auth=False))
    await app.start()
    try:
        client = await Client.open(f"ws://127.0.0.1:{app.port}")
        error(await client.request("session.hello", token="dev-admin:root"), "unauthenticated")
        await client.close()
    finally:
        await app.stop()


async def test_a_socket_that_never_says_hello_is_closed(make_settings: Any) -> None:
    app = App(make_settings(hello_timeout_s=0.3))
    await app.start()
    try:
        url = f"ws://127.0.0.1:{app.port}"
        idle = await Client.open(url)
        tokens = await register(url, "una@example.com")  # pre-session messages do not count
        player, _ = await signed_in(url, tokens["access_token"])
        later = await Client.open(url)
        assert await closed_with(idle, deadline=5.0) == (1008, "no session.hello in time")
        # ``later`` opened after the player: once it is closed, the player's deadline has
        # passed too, and the player, who said hello, is still connected.
        assert await closed_with(later, deadline=5.0) == (1008, "no session.hello in time")
        assert (await player.request("ping"))["t"] == "pong"
        await player.close()
    finally:
        await app.stop()


async def test_refresh_rotates_and_reuse_revokes_the_family(url: str) -> None:
    first = await register(url, "gus@example.com")
    client, _ = await signed_in(url, first["access_token"])
    anon = await Client.open(url)
    second = await anon.request("auth.refresh", refresh_token=first["refresh_token"])
    assert second["t"] == "auth.tokens" and second["session_id"] == first["session_id"]
    assert second["refresh_token"] != first["refresh_token"]
    # The old refresh token again: theft. The session is revoked, its socket closed...
    reuse = await anon.request("auth.refresh", refresh_token=first["refresh_token"])
    error(reuse, "unauthenticated")
    code, reason = await closed_with(client)
    assert code == 1008 and "reused" in reason
    # ...and the rotated tokens are dead too.
    error(
        await anon.request("auth.refresh", refresh_token=second["refresh_token"]), "unauthenticated"
    )
    error(await anon.request("session.hello", token=second["access_token"]), "unauthenticated")
    await anon.close()


async def test_logout_closes_this_session_only(url: str) -> None:
    tokens = await register(url, "hal@example.com")
    other = await login(url, "hal@example.com")
    mine, _ = await signed_in(url, tokens["access_token"])
    theirs, _ = await signed_in(url, other["access_token"])
    started = time.monotonic()
    reply = await mine.request("auth.logout")
    assert reply["t"] == "ok" and reply["count"] == 1
    assert (await closed_with(mine))[0] == 1008
    assert time.monotonic() - started < CLOSE_DEADLINE_S
    assert (await theirs.request("ping"))["t"] == "pong"
    fresh = await Client.open(url)
    error(await fresh.request("session.hello", token=tokens["access_token"]), "unauthenticated")
    await fresh.close()
    await theirs.close()


async def test_logout_everywhere_and_password_change(url: str) -> None:
    a = await register(url, "ida@example.com")
    b = await login(url, "ida@example.com")
    c = await login(url, "ida@example.com")
    first, _ = await signed_in(url, a["access_token"])
    second, _ = await signed_in(url, b["access_token"])
    third, _ = await signed_in(url, c["access_token"])
    # Password change: every other session ends, this one stays.
    reply = await first.request(
        "auth.change_password", old_password=PASSWORD, new_password="a brand new passphrase"
    )
    assert reply["t"] == "ok" and reply["count"] == 2
    assert (await closed_with(second))[1] == "password changed"
    assert (await closed_with(third))[1] == "password changed"
    assert (await first.request("ping"))["t"] == "pong"
    assert (await login(url, "ida@example.com"))["code"] == "unauthenticated"
    d = await login(url, "ida@example.com", password="a brand new passphrase")
    fourth, _ = await signed_in(url, d["access_token"])
    # Logout everywhere: all of them, this one too.
    reply = await first.request("auth.logout_all")
    assert reply["count"] == 2
    assert (await closed_with(first))[0] == 1008
    assert (await closed_with(fourth))[0] == 1008


async def test_wrong_old_password_changes_nothing(url: str) -> None:
    tokens = await register(url, "jo@example.com")
    client, _ = await signed_in(url, tokens["access_token"])
    reply = await client.request(
        "auth.change_password", old_password="not my password!", new_password="whatever else 123"
    )
    error(reply, "unauthenticated")
    assert (await login(url, "jo@example.com"))["t"] == "auth.tokens"
    await client.close()


async def test_list_and_revoke_own_sessions(url: str) -> None:
    a = await register(url, "kim@example.com")
    b = await login(url, "kim@example.com")
    client, _ = await signed_in(url, a["access_token"])
    other, _ = await signed_in(url, b["access_token"])
    listed = (await client.request("auth.list_sessions"))["sessions"]
    assert [s["session_id"] for s in listed] == [a["session_id"], b["session_id"]]
    assert [s["current"] for s in listed] == [True, False]
    assert listed[0]["ip"] == "127.0.0.1"
    error(await client.request("auth.revoke_session", session_id=10**9), "not_found")
    assert (await client.request("auth.revoke_session", session_id=b["session_id"]))["t"] == "ok"
    assert (await closed_with(other))[0] == 1008
    listed = (await client.request("auth.list_sessions"))["sessions"]
    assert [s["session_id"] for s in listed] == [a["session_id"]]
    await client.close()


# --- MFA -----------------------------------------------------------------------------------------


async def enable_mfa(url: str, access_token: str) -> tuple[pyotp.TOTP, list[str], Client]:
    client, _ = await signed_in(url, access_token)
    enrol = await client.request("mfa.enroll")
    assert enrol["otpauth_uri"].startswith("otpauth://totp/")
    totp = pyotp.TOTP(enrol["secret"])
    # Confirming with a wrong code changes nothing.
    wrong = "000000" if totp.now() != "000000" else "111111"
    error(await client.request("mfa.confirm", code=wrong), "unauthenticated")
    codes = await client.request("mfa.confirm", code=totp.now())
    assert codes["t"] == "mfa.recovery_codes" and len(codes["codes"]) == 10
    return totp, codes["codes"], client


async def test_mfa_login_needs_a_fresh_code_or_a_recovery_code(
    url: str, db: asyncpg.Connection
) -> None:
    tokens = await register(url, "lea@example.com")
    totp, recovery, client = await enable_mfa(url, tokens["access_token"])
    needs = error(await login(url, "lea@example.com"), "unauthenticated")
    assert needs["details"]["mfa_required"] is True
    # The code used to confirm is spent: the same step cannot log in (no replay)...
    error(await login(url, "lea@example.com", totp=totp.now()), "unauthenticated")
    # ...the next step's code can (one step of clock skew is accepted).
    ahead = totp.at(time.time() + totp.interval)
    assert (await login(url, "lea@example.com", totp=ahead))["t"] == "auth.tokens"
    error(await login(url, "lea@example.com", totp=ahead), "unauthenticated")
    # A recovery code works once.
    assert (await login(url, "lea@example.com", recovery_code=recovery[0].upper()))["t"] == (
        "auth.tokens"
    )
    error(await login(url, "lea@example.com", recovery_code=recovery[0]), "unauthenticated")
    stored = await db.fetch("SELECT code_hash FROM mfa_recovery_codes")
    assert len(stored) == 10 and all(recovery[1].encode() not in bytes(r[0]) for r in stored)
    # Disabling needs the password again and a second factor.
    reply = await client.request(
        "mfa.disable", password="wrong password!", recovery_code=recovery[1]
    )
    error(reply, "unauthenticated")
    error(await client.request("mfa.disable", password=PASSWORD), "bad_request")
    assert (await client.request("mfa.disable", password=PASSWORD, recovery_code=recovery[1]))[
        "t"
    ] == "ok"
    assert (await login(url, "lea@example.com"))["t"] == "auth.tokens"
    actions = [r[0] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")]
    for action in [
        "mfa_enrolment_started",
        "mfa_enabled",
        "mfa_recovery_code_used",
        "mfa_disabled",
    ]:
        assert action in actions
    await client.close()


# --- device accounts and profiles ----------------------------------------------------------------


async def test_device_login_then_link_an_email(url: str) -> None:
    client = await Client.open(url)
    device = "device-" + "7" * 30
    first = await client.request("auth.device_login", device_id=device)
    again = await client.request("auth.device_login", device_id=device)
    assert first["account_id"] == again["account_id"]
    other = await client.request("auth.device_login", device_id="device-" + "8" * 30)
    assert other["account_id"] != first["account_id"]
    await client.close()
    guest, _ = await signed_in(url, first["access_token"])
    assert (await guest.request("profile.get"))["guest"] is True
    linked = await guest.request("auth.link_email", email="max@example.com", password=PASSWORD)
    assert linked["t"] == "ok"
    error(await guest.request("auth.link_email", email="m2@example.com", password=PASSWORD),
          "conflict")  # fmt: skip
    assert (await login(url, "max@example.com"))["account_id"] == first["account_id"]
    assert (await guest.request("profile.get"))["guest"] is False
    await guest.close()


async def test_profile_fields_are_validated_and_names_unique(url: str) -> None:
    a = await register(url, "ned@example.com", display_name="Ned")
    b = await register(url, "ola@example.com")
    ned, _ = await signed_in(url, a["access_token"])
    ola, _ = await signed_in(url, b["access_token"])
    error(await ola.request("profile.update", display_name="NED"), "conflict")
    for bad in [
        {"display_name": "x"},
        {"display_name": "admin"},
        {"locale": "english!"},
        {"avatar_url": "http://insecure.example/a.png"},
        {"avatar_url": "javascript:1"},
    ]:
        error(await ola.request("profile.update", **bad), "bad_request")  # fmt: skip
    updated = await ola.request(
        "profile.update",
        display_name="Ola B",
        locale="pt-BR",
        avatar_url="https://cdn.example/ola.png",
        notification_prefs={"push": True, "chat": False},
    )
    assert updated["display_name"] == "Ola B" and updated["locale"] == "pt-BR"
    assert updated["notification_prefs"]["push"] is True
    assert updated["notification_prefs"]["chat"] is False
    assert updated["notification_prefs"]["trades"] is True  # defaults for the rest
    error(
        await ola.request("profile.update", notification_prefs={"telepathy": True}), "bad_request"
    )
    await ned.close()
    await ola.close()


# --- staff: bans, roles, audit, API keys ---------------------------------------------------------


async def staff(url: str) -> Client:
    client = await Client.open(url)
    assert (await client.request("session.hello", token="dev-admin:root"))["t"] == "session.welcome"
    return client


async def test_ban_closes_sockets_and_blocks_login(url: str) -> None:
    tokens = await register(url, "pat@example.com")
    player, _ = await signed_in(url, tokens["access_token"])
    admin = await staff(url)
    view = await admin.request("admin.ban", account_id=tokens["account_id"], reason="botting")
    assert view["banned"] is True and view["ban_reason"] == "botting"
    assert (await closed_with(player))[0] == 1008
    banned = error(await login(url, "pat@example.com"), "forbidden")
    assert banned["details"]["reason"] == "botting"
    fresh = await Client.open(url)
    error(await fresh.request("session.hello", token=tokens["access_token"]), "unauthenticated")
    await fresh.close()
    assert (await admin.request("admin.unban", account_id=tokens["account_id"]))["banned"] is False
    assert (await login(url, "pat@example.com"))["t"] == "auth.tokens"
    await admin.close()


async def test_role_changes_apply_to_the_next_message(url: str) -> None:
    tokens = await register(url, "quin@example.com")
    player, _ = await signed_in(url, tokens["access_token"])
    error(await player.request("admin.audit_query"), "forbidden")
    admin = await staff(url)
    view = await admin.request("admin.grant_role", account_id=tokens["account_id"], role="support")
    assert view["roles"] == ["player", "support"]
    assert (await player.request("admin.audit_query"))["t"] == "admin.audit_page"
    await admin.request("admin.revoke_role", account_id=tokens["account_id"], role="support")
    error(await player.request("admin.audit_query"), "forbidden")
    await admin.close()
    await player.close()


async def test_audit_log_filters_pages_and_is_append_only(url: str, db: asyncpg.Connection) -> None:
    tokens = await register(url, "rae@example.com")
    for _ in range(3):
        await login(url, "rae@example.com")
    await login(url, "rae@example.com", password="wrong wrong wrong")
    admin = await staff(url)
    logins = await admin.request(
        "admin.audit_query", action="login", target_account_id=tokens["account_id"], limit=3
    )
    assert [e["action"] for e in logins["entries"]] == ["login"] * 3
    ids = [e["id"] for e in logins["entries"]]
    assert ids == sorted(ids, reverse=True) and logins["next_before_id"] == ids[-1]
    rest = await admin.request(
        "admin.audit_query", action="login", target_account_id=tokens["account_id"],
        before_id=logins["next_before_id"], limit=3,
    )  # fmt: skip
    assert len(rest["entries"]) == 1 and rest["next_before_id"] is None
    assert rest["entries"][0]["ip"] == "127.0.0.1"
    failed = await admin.request("admin.audit_query", action="login_failed")
    assert failed["entries"][0]["details"] == {"stage": "password"}
    later = await admin.request("admin.audit_query", since_ms=int(time.time() * 1000) + 60_000)
    assert later["entries"] == []
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE audit_log SET action = 'nothing'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM audit_log")
    await admin.close()


async def test_pii_is_masked_unless_revealed_and_reveals_are_audited(
    url: str, db: asyncpg.Connection
) -> None:
    tokens = await register(url, "sam@example.com")
    admin = await staff(url)
    masked = await admin.request("admin.view_account", account_id=tokens["account_id"])
    assert masked["email"] == "s***@e***.com" and masked["last_login_ip"] == "127.0.0.x"
    assert masked["pii_masked"] is True
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'pii_read'") == 0
    shown = await admin.request(
        "admin.view_account", account_id=tokens["account_id"], reveal_pii=True
    )
    assert shown["email"] == "sam@example.com" and shown["pii_masked"] is False
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'pii_read'") == 1
    error(await admin.request("admin.view_account", account_id=10**9), "not_found")
    await admin.close()


async def test_api_keys_are_scoped_hashed_and_revocable(url: str, db: asyncpg.Connection) -> None:
    admin = await staff(url)
    error(await admin.request("admin.create_api_key", name="x", permissions=["game.play"]),
          "bad_request")  # fmt: skip
    error(await admin.request("admin.create_api_key", name="x", permissions=["no.such"]),
          "bad_request")  # fmt: skip
    created = await admin.request("admin.create_api_key", name="shop", permissions=["items.grant"])
    key = created["key"]
    assert key.startswith("ghk_") and created["permissions"] == ["items.grant"]
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE key_hash = $1", key.encode()) == 0
    player = await register(url, "tia@example.com")
    player_id = await db.fetchval(
        "SELECT player_id FROM accounts WHERE id = $1", player["account_id"]
    )
    service = await Client.open(url)
    welcome = await service.request("session.hello", token=key)
    assert welcome["player_id"] == 0 and welcome["state"] is None
    grant = await service.request(
        "admin.grant_item", player_id=player_id, template="bread", idempotency_key="order-0001"
    )
    assert grant["t"] == "admin.grant_item_reply", grant
    error(await service.request("admin.audit_query"), "forbidden")  # not in its scope
    error(await service.request("inventory.use_item", item_id=1), "forbidden")
    listed = (await admin.request("admin.list_api_keys"))["keys"]
    assert listed[0]["name"] == "shop" and listed[0]["last_used_at_ms"] is not None
    used = await admin.request("admin.audit_query", action="api_key_used")
    assert used["entries"][0]["actor_api_key_id"] == created["key_id"]
    assert (await admin.request("admin.revoke_api_key", key_id=created["key_id"]))["t"] == "ok"
    assert (await closed_with(service))[1] == "API key revoked"
    again = await Client.open(url)
    error(await again.request("session.hello", token=key), "unauthenticated")
    error(await admin.request("admin.revoke_api_key", key_id=created["key_id"]), "not_found")
    await again.close()
    await admin.close()


async def test_a_missed_notice_is_caught_by_the_sweep(
    app: App, url: str, db: asyncpg.Connection
) -> None:
    tokens = await register(url, "vic@example.com")
    client, _ = await signed_in(url, tokens["access_token"])
    # Revoked behind the bus's back (no NOTIFY): nothing happens until a sweep.
    await db.execute("UPDATE auth_sessions SET revoked_at = now()")
    assert (await client.request("ping"))["t"] == "pong"
    await app.auth_bus.sweep()
    assert (await closed_with(client))[0] == 1008


async def test_the_notice_connection_reconnects_and_sweeps(
    app: App, url: str, db: asyncpg.Connection
) -> None:
    tokens = await register(url, "wes@example.com")
    client, _ = await signed_in(url, tokens["access_token"])
    # Kill the bus's listening connection, then revoke while it is down.
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
    )
    assert killed == 1
    await db.execute("UPDATE auth_sessions SET revoked_at = now()")
    # The bus notices the lost connection, reconnects and sweeps; no other event is
    # visible to the client than its socket closing.
    assert (await closed_with(client, deadline=5.0))[0] == 1008
    # And it listens again: a notified revocation reaches a new socket.
    again = await login(url, "wes@example.com")
    second, _ = await signed_in(url, again["access_token"])
    assert (await second.request("auth.logout"))["t"] == "ok"
    assert (await closed_with(second))[0] == 1008

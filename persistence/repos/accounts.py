"""Accounts in Postgres: accounts, login sessions and tokens, throttles, recovery codes, API
keys and the audit log. Plain SQL; the flows that combine these live in
``server/domains/accounts/service.py``. Functions take a connection so a caller can put
several in one transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

AUTH_CHANNEL = "gearhall_auth"
"""NOTIFY channel of revocations and role changes (server/domains/accounts/bus.py)."""

_ACCOUNT_COLUMNS = """
    a.id, a.email, a.password_hash, a.display_name, a.locale, a.avatar_url,
    a.notification_prefs, a.roles, a.banned_at, a.ban_reason, a.mfa_secret, a.mfa_enabled,
    a.mfa_last_step, a.player_id, p.name AS player_name, a.created_at,
    a.device_hash IS NOT NULL AND a.email IS NULL AS guest
"""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    email: str | None
    password_hash: str | None
    display_name: str | None
    locale: str
    avatar_url: str | None
    notification_prefs: dict[str, bool]
    roles: tuple[str, ...]
    banned_at: datetime | None
    ban_reason: str | None
    mfa_secret: str | None
    mfa_enabled: bool
    mfa_last_step: int
    player_id: int
    player_name: str
    created_at: datetime
    guest: bool


def _account(row: asyncpg.Record) -> Account:
    prefs = row["notification_prefs"]
    return Account(
        id=row["id"],
        email=row["email"],
        password_hash=row["password_hash"],
        display_name=row["display_name"],
        locale=row["locale"],
        avatar_url=row["avatar_url"],
        notification_prefs=json.loads(prefs) if isinstance(prefs, str) else dict(prefs),
        roles=tuple(row["roles"]),
        banned_at=row["banned_at"],
        ban_reason=row["ban_reason"],
        mfa_secret=row["mfa_secret"],
        mfa_enabled=row["mfa_enabled"],
        mfa_last_step=row["mfa_last_step"],
        player_id=row["player_id"],
        player_name=row["player_name"],
        created_at=row["created_at"],
        guest=row["guest"],
    )


async def _one(conn: asyncpg.Connection, where: str, value: object, lock: bool) -> Account | None:
    row = await conn.fetchrow(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a JOIN players p ON p.id = a.player_id "
        f"WHERE {where} = $1{' FOR UPDATE OF a' if lock else ''}",
        value,
    )
    return None if row is None else _account(row)


async def by_id(conn: asyncpg.Connection, account_id: int, lock: bool = False) -> Account | None:
    return await _one(conn, "a.id", account_id, lock)


async def by_email(conn: asyncpg.Connection, email: str, lock: bool = False) -> Account | None:
    return await _one(conn, "a.email", email, lock)


async def by_device(conn: asyncpg.Connection, device_hash: bytes) -> Account | None:
    return await _one(conn, "a.device_hash", device_hash, False)


async def create(
    conn: asyncpg.Connection,
    *,
    email: str | None = None,
    password_hash: str | None = None,
    device_hash: bytes | None = None,
    display_name: str | None = None,
    display_name_key: str | None = None,
) -> Account | None:
    """A new account and its player, in the caller's transaction. None when the email,
    device or display name is taken (nothing is created)."""
    async with conn.transaction():
        player_id = await conn.fetchval(
            "INSERT INTO players (name) VALUES ('account-' || gen_random_uuid()) RETURNING id"
        )
        account_id = await conn.fetchval(
            """
            INSERT INTO accounts (email, password_hash, device_hash, display_name,
                                  display_name_key, player_id)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT DO NOTHING
            RETURNING id
            """,
            email,
            password_hash,
            device_hash,
            display_name,
            display_name_key,
            player_id,
        )
        if account_id is None:
            await conn.execute("DELETE FROM players WHERE id = $1", player_id)
            return None
        await conn.execute(
            "UPDATE players SET name = 'account-' || $2::bigint WHERE id = $1",
            player_id,
            account_id,
        )
    return await by_id(conn, account_id)


async def set_password(conn: asyncpg.Connection, account_id: int, password_hash: str) -> None:
    await conn.execute(
        "UPDATE accounts SET password_hash = $2, password_changed_at = now() WHERE id = $1",
        account_id,
        password_hash,
    )


async def link_email(
    conn: asyncpg.Connection, account_id: int, email: str, password_hash: str
) -> bool:
    """Give a guest account an email and password; False if the email is taken."""
    try:
        status = await conn.execute(
            "UPDATE accounts SET email = $2, password_hash = $3, password_changed_at = now() "
            "WHERE id = $1 AND email IS NULL",
            account_id,
            email,
            password_hash,
        )
    except asyncpg.UniqueViolationError:
        return False
    return bool(status == "UPDATE 1")


async def update_profile(
    conn: asyncpg.Connection,
    account_id: int,
    *,
    display_name: tuple[str, str] | None,
    locale: str | None,
    avatar_url: str | None,
    notification_prefs: dict[str, bool] | None,
) -> bool:
    """Set the given fields (``display_name`` is (name, key)); False if the name is taken."""
    try:
        await conn.execute(
            """
            UPDATE accounts SET
                display_name = COALESCE($2, display_name),
                display_name_key = COALESCE($3, display_name_key),
                locale = COALESCE($4, locale),
                avatar_url = COALESCE($5, avatar_url),
                notification_prefs = COALESCE($6::jsonb, notification_prefs)
            WHERE id = $1
            """,
            account_id,
            display_name[0] if display_name else None,
            display_name[1] if display_name else None,
            locale,
            avatar_url,
            None if notification_prefs is None else json.dumps(notification_prefs),
        )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def set_roles(conn: asyncpg.Connection, account_id: int, roles: Sequence[str]) -> None:
    await conn.execute("UPDATE accounts SET roles = $2 WHERE id = $1", account_id, list(roles))


async def set_ban(conn: asyncpg.Connection, account_id: int, reason: str | None) -> None:
    await conn.execute(
        "UPDATE accounts SET banned_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END, "
        "ban_reason = $2 WHERE id = $1",
        account_id,
        reason,
    )


# --- MFA ----------------------------------------------------------------------------------


async def set_mfa(
    conn: asyncpg.Connection, account_id: int, *, secret: str | None, enabled: bool
) -> None:
    await conn.execute(
        "UPDATE accounts SET mfa_secret = $2, mfa_enabled = $3, mfa_last_step = 0 WHERE id = $1",
        account_id,
        secret,
        enabled,
    )
    if not enabled:
        await conn.execute("DELETE FROM mfa_recovery_codes WHERE account_id = $1", account_id)


async def use_totp_step(conn: asyncpg.Connection, account_id: int, step: int) -> bool:
    """Record ``step`` as used; False if it (or a later one) already was: a code works once."""
    status = await conn.execute(
        "UPDATE accounts SET mfa_last_step = $2 WHERE id = $1 AND mfa_last_step < $2",
        account_id,
        step,
    )
    return bool(status == "UPDATE 1")


async def store_recovery_codes(
    conn: asyncpg.Connection, account_id: int, hashes: Sequence[bytes]
) -> None:
    await conn.execute("DELETE FROM mfa_recovery_codes WHERE account_id = $1", account_id)
    await conn.executemany(
        "INSERT INTO mfa_recovery_codes (account_id, code_hash) VALUES ($1, $2)",
        [(account_id, h) for h in hashes],
    )


async def use_recovery_code(conn: asyncpg.Connection, account_id: int, code_hash: bytes) -> bool:
    status = await conn.execute(
        "UPDATE mfa_recovery_codes SET used_at = now() "
        "WHERE account_id = $1 AND code_hash = $2 AND used_at IS NULL",
        account_id,
        code_hash,
    )
    return bool(status == "UPDATE 1")


# --- login sessions and tokens ------------------------------------------------------------------


async def create_session(
    conn: asyncpg.Connection, account_id: int, method: str, *, ip: str, user_agent: str, ttl_s: int
) -> int:
    session_id: int = await conn.fetchval(
        """
        INSERT INTO auth_sessions (account_id, method, ip, user_agent, expires_at)
        VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
        RETURNING id
        """,
        account_id,
        method,
        ip,
        user_agent[:256],
        float(ttl_s),
    )
    return session_id


async def insert_token(
    conn: asyncpg.Connection, token_hash: bytes, session_id: int, kind: str, ttl_s: float
) -> None:
    await conn.execute(
        "INSERT INTO auth_tokens (token_hash, session_id, kind, expires_at) "
        "VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        token_hash,
        session_id,
        kind,
        float(ttl_s),
    )


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What a valid access token stands for."""

    account_id: int
    session_id: int
    roles: tuple[str, ...]
    player_id: int
    player_name: str


async def resolve_access(conn: asyncpg.Connection, token_hash: bytes) -> AccessGrant | None:
    """The grant of a live access token: unexpired, its session unrevoked and unexpired,
    the account not banned. None otherwise, whichever the reason."""
    row = await conn.fetchrow(
        """
        SELECT s.account_id, s.id AS session_id, a.roles, a.player_id, p.name AS player_name
        FROM auth_tokens t
        JOIN auth_sessions s ON s.id = t.session_id
        JOIN accounts a ON a.id = s.account_id
        JOIN players p ON p.id = a.player_id
        WHERE t.token_hash = $1 AND t.kind = 'access' AND t.expires_at > now()
          AND s.revoked_at IS NULL AND s.expires_at > now() AND a.banned_at IS NULL
        """,
        token_hash,
    )
    if row is None:
        return None
    return AccessGrant(
        row["account_id"],
        row["session_id"],
        tuple(row["roles"]),
        row["player_id"],
        row["player_name"],
    )


@dataclass(frozen=True, slots=True)
class RefreshRow:
    session_id: int
    account_id: int
    used: bool
    expired: bool
    session_live: bool


async def lock_refresh(conn: asyncpg.Connection, token_hash: bytes) -> RefreshRow | None:
    """The refresh token and its session, locked for rotation (call in a transaction)."""
    row = await conn.fetchrow(
        """
        SELECT t.session_id, s.account_id, t.used_at IS NOT NULL AS used,
               t.expires_at <= now() AS expired,
               s.revoked_at IS NULL AND s.expires_at > now() AS session_live
        FROM auth_tokens t JOIN auth_sessions s ON s.id = t.session_id
        WHERE t.token_hash = $1 AND t.kind = 'refresh'
        FOR UPDATE OF t, s
        """,
        token_hash,
    )
    if row is None:
        return None
    return RefreshRow(
        row["session_id"], row["account_id"], row["used"], row["expired"], row["session_live"]
    )


async def mark_refresh_used(conn: asyncpg.Connection, token_hash: bytes) -> None:
    await conn.execute("UPDATE auth_tokens SET used_at = now() WHERE token_hash = $1", token_hash)
    await conn.execute(
        "UPDATE auth_sessions SET last_used_at = now() "
        "WHERE id = (SELECT session_id FROM auth_tokens WHERE token_hash = $1)",
        token_hash,
    )


async def revoke_sessions(
    conn: asyncpg.Connection,
    *,
    reason: str,
    session_ids: Sequence[int] = (),
    account_id: int | None = None,
    except_session: int | None = None,
) -> list[int]:
    """Revoke the given sessions, or every live one of ``account_id`` (but
    ``except_session``); their tokens stop working at once. Announces the ids on
    :data:`AUTH_CHANNEL` (delivered when the transaction commits). Returns the ids revoked."""
    if account_id is not None:
        rows = await conn.fetch(
            "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2 "
            "WHERE account_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $3 "
            "RETURNING id",
            account_id,
            reason,
            except_session,
        )
    else:
        rows = await conn.fetch(
            "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2 "
            "WHERE id = ANY($1::bigint[]) AND revoked_at IS NULL RETURNING id",
            list(session_ids),
            reason,
        )
    revoked = [r["id"] for r in rows]
    if revoked:
        await notify(conn, {"kind": "revoke", "session_ids": revoked, "reason": reason})
    return revoked


async def list_sessions(conn: asyncpg.Connection, account_id: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, method, ip, user_agent, created_at, last_used_at FROM auth_sessions "
        "WHERE account_id = $1 AND revoked_at IS NULL AND expires_at > now() ORDER BY id",
        account_id,
    )
    return rows


async def live_sessions(conn: asyncpg.Connection, session_ids: Sequence[int]) -> set[int]:
    """Which of ``session_ids`` are still valid (for the bus's sweep after a reconnect)."""
    rows = await conn.fetch(
        "SELECT s.id FROM auth_sessions s JOIN accounts a ON a.id = s.account_id "
        "WHERE s.id = ANY($1::bigint[]) AND s.revoked_at IS NULL AND s.expires_at > now() "
        "AND a.banned_at IS NULL",
        list(session_ids),
    )
    return {r["id"] for r in rows}


async def notify(conn: asyncpg.Connection, payload: dict[str, object]) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, json.dumps(payload))


# --- throttles ----------------------------------------------------------------------------------


async def locked_for(conn: asyncpg.Connection, keys: Sequence[str]) -> float:
    """Seconds until every key in ``keys`` is unlocked (0 when none is locked)."""
    value = await conn.fetchval(
        "SELECT COALESCE(max(extract(epoch FROM locked_until - now())), 0) "
        "FROM login_throttles WHERE key = ANY($1::text[]) AND locked_until > now()",
        list(keys),
    )
    return max(0.0, float(value))


async def record_failure(conn: asyncpg.Connection, key: str) -> int:
    """Count one more consecutive failure for ``key``; returns the new count."""
    failures: int = await conn.fetchval(
        """
        INSERT INTO login_throttles (key, failures) VALUES ($1, 1)
        ON CONFLICT (key) DO UPDATE SET failures = login_throttles.failures + 1,
                                        updated_at = now()
        RETURNING failures
        """,
        key,
    )
    return failures


async def lock(conn: asyncpg.Connection, key: str, seconds: int) -> None:
    await conn.execute(
        "UPDATE login_throttles SET locked_until = now() + make_interval(secs => $2) "
        "WHERE key = $1",
        key,
        float(seconds),
    )


async def clear_failures(conn: asyncpg.Connection, keys: Sequence[str]) -> None:
    await conn.execute("DELETE FROM login_throttles WHERE key = ANY($1::text[])", list(keys))


# --- API keys -----------------------------------------------------------------------------------


async def create_api_key(
    conn: asyncpg.Connection, name: str, key_hash: bytes, permissions: Sequence[str], by: int | None
) -> int:
    key_id: int = await conn.fetchval(
        "INSERT INTO api_keys (name, key_hash, permissions, created_by) VALUES ($1, $2, $3, $4) "
        "RETURNING id",
        name,
        key_hash,
        list(permissions),
        by,
    )
    return key_id


@dataclass(frozen=True, slots=True)
class ApiKeyGrant:
    key_id: int
    name: str
    permissions: tuple[str, ...]


async def use_api_key(conn: asyncpg.Connection, key_hash: bytes) -> ApiKeyGrant | None:
    """The key's grant if it exists and is not revoked; records its use."""
    row = await conn.fetchrow(
        "UPDATE api_keys SET last_used_at = now() WHERE key_hash = $1 AND revoked_at IS NULL "
        "RETURNING id, name, permissions",
        key_hash,
    )
    if row is None:
        return None
    return ApiKeyGrant(row["id"], row["name"], tuple(row["permissions"]))


async def list_api_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, name, permissions, created_at, last_used_at, revoked_at IS NOT NULL AS revoked "
        "FROM api_keys ORDER BY id"
    )
    return rows


async def revoke_api_key(conn: asyncpg.Connection, key_id: int) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    if status == "UPDATE 1":
        await notify(conn, {"kind": "api_key_revoked", "key_id": key_id})
        return True
    return False


# --- audit --------------------------------------------------------------------------------------


async def audit(
    conn: asyncpg.Connection,
    action: str,
    *,
    actor_account_id: int | None = None,
    actor_api_key_id: int | None = None,
    target_account_id: int | None = None,
    ip: str = "",
    details: dict[str, object] | None = None,
) -> None:
    await conn.execute(
        """
        INSERT INTO audit_log (action, actor_account_id, actor_api_key_id, target_account_id,
                               ip, details)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb)
        """,
        action,
        actor_account_id,
        actor_api_key_id,
        target_account_id,
        ip,
        json.dumps(details or {}),
    )


async def query_audit(
    conn: asyncpg.Connection,
    *,
    action: str | None,
    actor_account_id: int | None,
    target_account_id: int | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Entries newest first, keyset-paginated on id (stable while new entries arrive)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT id, at, action, actor_account_id, actor_api_key_id, target_account_id, ip,
               details
        FROM audit_log
        WHERE ($1::text IS NULL OR action = $1)
          AND ($2::bigint IS NULL OR actor_account_id = $2)
          AND ($3::bigint IS NULL OR target_account_id = $3)
          AND ($4::timestamptz IS NULL OR at >= $4)
          AND ($5::timestamptz IS NULL OR at < $5)
          AND ($6::bigint IS NULL OR id < $6)
        ORDER BY id DESC
        LIMIT $7
        """,
        action,
        actor_account_id,
        target_account_id,
        since,
        until,
        before_id,
        limit,
    )
    return rows


async def account_of_player(conn: asyncpg.Connection, player_id: int) -> int | None:
    """The account a player belongs to (None for development players)."""
    account_id: int | None = await conn.fetchval(
        "SELECT id FROM accounts WHERE player_id = $1", player_id
    )
    return account_id


async def last_login_ip(conn: asyncpg.Connection, account_id: int) -> str | None:
    ip: str | None = await conn.fetchval(
        "SELECT ip FROM auth_sessions WHERE account_id = $1 ORDER BY id DESC LIMIT 1", account_id
    )
    return ip


# --- external identities (OpenID Connect) -------------------------------------------------------

_OIDC_LOCK_CLASS = 0x01DC
"""First key of the advisory lock on one (issuer, subject): the two-key space, apart from
the one-key locks of migrations and the catalog."""


@dataclass(frozen=True, slots=True)
class OidcFlow:
    code_verifier: str
    nonce: str
    redirect_uri: str
    link_account_id: int | None
    live: bool


async def save_oidc_flow(
    conn: asyncpg.Connection,
    state_hash: bytes,
    *,
    code_verifier: str,
    nonce: str,
    redirect_uri: str,
    link_account_id: int | None,
    ttl_s: int,
) -> None:
    # Expired flows go as new ones come: the table holds at most ten minutes of starts.
    await conn.execute("DELETE FROM oidc_flows WHERE expires_at < now()")
    await conn.execute(
        """
        INSERT INTO oidc_flows (state_hash, code_verifier, nonce, redirect_uri,
                                link_account_id, expires_at)
        VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
        """,
        state_hash,
        code_verifier,
        nonce,
        redirect_uri,
        link_account_id,
        float(ttl_s),
    )


async def take_oidc_flow(conn: asyncpg.Connection, state_hash: bytes) -> OidcFlow | None:
    """Consume a flow: whoever deletes it is the only one who gets it."""
    row = await conn.fetchrow(
        "DELETE FROM oidc_flows WHERE state_hash = $1 RETURNING code_verifier, nonce, "
        "redirect_uri, link_account_id, expires_at > now() AS live",
        state_hash,
    )
    if row is None:
        return None
    return OidcFlow(
        row["code_verifier"],
        row["nonce"],
        row["redirect_uri"],
        row["link_account_id"],
        row["live"],
    )


async def oidc_account(conn: asyncpg.Connection, issuer: str, subject: str) -> int | None:
    account_id: int | None = await conn.fetchval(
        "SELECT account_id FROM oidc_identities WHERE issuer = $1 AND subject = $2",
        issuer,
        subject,
    )
    return account_id


async def lock_oidc_identity(conn: asyncpg.Connection, issuer: str, subject: str) -> None:
    """Serialise the transactions resolving one external identity (until commit), so two
    first logins of it cannot create two accounts."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))", _OIDC_LOCK_CLASS, f"{issuer}\n{subject}"
    )


async def link_oidc(
    conn: asyncpg.Connection, issuer: str, subject: str, account_id: int, email: str | None
) -> None:
    await conn.execute(
        "INSERT INTO oidc_identities (issuer, subject, account_id, email) VALUES ($1, $2, $3, $4)",
        issuer,
        subject,
        account_id,
        email,
    )

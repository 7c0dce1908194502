"""Account flows: sign-up, login (password, device, MFA), token rotation, revocation, MFA,
profiles, roles, bans, API keys and the audit log. Each flow is one Postgres transaction
where it changes more than one row; the socket handlers (``handlers.py``) and the HTTP
endpoints (``http.py``) both call these, so the two paths cannot disagree.

Tokens are 256-bit random strings with a type prefix (``gha_`` access, ``ghr_`` refresh,
``ghk_`` API key) and are stored as SHA-256 hashes: a database leak yields no usable token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import pyotp

from persistence.repos import accounts as repo
from protocol.accounts import (
    DeviceLogin,
    Login,
    NotificationPrefs,
    Profile,
    Register,
    Tokens,
)
from protocol.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
)
from server.domains.accounts import rules
from server.domains.accounts.passwords import Passwords
from server.domains.accounts.principal import Principal
from server.ratelimit import KeyedBuckets

if TYPE_CHECKING:
    from server.app import App
    from server.config import Settings

log = logging.getLogger("gearhall.accounts")

ACCESS_PREFIX = "gha_"
REFRESH_PREFIX = "ghr_"
API_KEY_PREFIX = "ghk_"
RECOVERY_CODES = 10
IP_FREE_FAILURES = 20
"""Failed logins from one address before it is locked out: higher than per account, since
many players may share an address (NAT, campus)."""
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Client:
    """Where a request comes from, for throttles, sessions and the audit log."""

    ip: str
    user_agent: str = ""


class Accounts:
    """The accounts service of one node."""

    def __init__(self, app: App) -> None:
        s: Settings = app.settings
        self.app = app
        self.settings = s
        self.passwords = Passwords(
            time_cost=s.argon2_time_cost,
            memory_kib=s.argon2_memory_kib,
            parallelism=s.argon2_parallelism,
            workers=s.hash_workers,
            queue_max=s.hash_queue_max,
        )
        # Sign-ups per client address (per node): the hourly allowance, a quarter at once.
        per_hour = s.signups_per_ip_per_hour
        self._signups = KeyedBuckets(per_hour / 3600.0, max(1, per_hour // 4))
        # Read the common-password list now, at start-up, not on the event loop at the
        # first sign-up (a gzip of 19,640 lines).
        rules.common_passwords()

    def close(self) -> None:
        self.passwords.close()

    # --- tokens ---------------------------------------------------------------------------------

    async def _issue(
        self, conn: asyncpg.Connection, account_id: int, session_id: int, rid: int
    ) -> Tokens:
        s = self.settings
        access, refresh = new_token(ACCESS_PREFIX), new_token(REFRESH_PREFIX)
        await repo.insert_token(
            conn, token_hash(access), session_id, "access", s.access_token_ttl_s
        )
        await repo.insert_token(conn, token_hash(refresh), session_id, "refresh", s.session_ttl_s)
        return Tokens(
            rid=rid,
            account_id=account_id,
            session_id=session_id,
            access_token=access,
            refresh_token=refresh,
            expires_in=s.access_token_ttl_s,
        )

    async def start_session(
        self, conn: asyncpg.Connection, account_id: int, method: str, client: Client, rid: int
    ) -> Tokens:
        """A new login session with its first tokens, audited (call in a transaction)."""
        session_id = await repo.create_session(
            conn,
            account_id,
            method,
            ip=client.ip,
            user_agent=client.user_agent,
            ttl_s=self.settings.session_ttl_s,
        )
        await repo.audit(
            conn,
            "login",
            actor_account_id=account_id,
            target_account_id=account_id,
            ip=client.ip,
            details={"method": method, "session_id": session_id},
        )
        return await self._issue(conn, account_id, session_id, rid)

    # --- sign-up and login --------------------------------------------------------------------

    async def register(self, msg: Register, client: Client) -> Tokens:
        """Raises: BadRequestError (email, password policy, display name),
        ConflictError (display name taken), UnauthenticatedError (the email has an
        account and this is not its password), RateLimitedError, UnavailableError."""
        retry_ms = self._signups.take(client.ip, time.monotonic())
        if retry_ms:
            raise RateLimitedError(retry_ms)
        email = rules.normalise_email(msg.email)
        rules.check_password_policy(msg.password, email)
        name_key = None if msg.display_name is None else rules.display_name_key(msg.display_name)
        hashed = await self.passwords.hash(msg.password)
        try:
            async with self.app.pool.acquire() as conn, conn.transaction():
                account = await repo.create(
                    conn,
                    email=email,
                    password_hash=hashed,
                    display_name=msg.display_name,
                    display_name_key=name_key,
                )
                if account is not None:
                    await repo.audit(conn, "register", target_account_id=account.id, ip=client.ip)
                    return await self.start_session(conn, account.id, "password", client, msg.rid)
                taken_email = await repo.by_email(conn, email) is not None
        except _DB_ERRORS as exc:
            raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None
        if not taken_email:
            raise ConflictError("that display name is taken", field="display_name")
        # The email has an account: answer as a login would, so sign-up says no more about
        # which emails exist than login does.
        return await self.login(Login(rid=msg.rid, email=email, password=msg.password), client)

    async def login(self, msg: Login, client: Client) -> Tokens:
        """Raises: UnauthenticatedError (``invalid email or password``, or
        ``details.mfa_required``), ForbiddenError (banned), RateLimitedError (locked out),
        BadRequestError, UnavailableError."""
        email = rules.normalise_email(msg.email)
        keys = [f"email:{email}", f"ip:{client.ip}"]
        try:
            async with self.app.pool.acquire() as conn:
                locked = await repo.locked_for(conn, keys)
                if locked > 0:
                    raise RateLimitedError(max(1, int(locked * 1000)))
                account = await repo.by_email(conn, email)
            ok = await self.passwords.verify(
                None if account is None else account.password_hash, msg.password
            )
            async with self.app.pool.acquire() as conn, conn.transaction():
                if not ok or account is None:
                    await self._failed(conn, keys, client, account, "password")
                    failure: UnauthenticatedError | None = UnauthenticatedError(
                        "invalid email or password"
                    )
                elif account.mfa_enabled:
                    failure = await self._check_second_factor(conn, account, msg, client, keys)
                else:
                    failure = None
                if failure is None:
                    assert account is not None
                    if account.banned_at is not None:
                        raise ForbiddenError("this account is banned", reason=account.ban_reason)
                    await repo.clear_failures(conn, keys)
                    if account.password_hash and self.passwords.needs_rehash(account.password_hash):
                        await repo.set_password(
                            conn, account.id, await self.passwords.hash(msg.password)
                        )
                    return await self.start_session(conn, account.id, "password", client, msg.rid)
        except _DB_ERRORS as exc:
            raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None
        raise failure  # after the transaction: the failure count is committed

    async def _check_second_factor(
        self,
        conn: asyncpg.Connection,
        account: repo.Account,
        msg: Login,
        client: Client,
        keys: list[str],
    ) -> UnauthenticatedError | None:
        if msg.totp is None and msg.recovery_code is None:
            return UnauthenticatedError(
                "this account needs a second factor: totp or recovery_code", mfa_required=True
            )
        if await self.second_factor_ok(conn, account, msg.totp, msg.recovery_code, client):
            return None
        await self._failed(conn, keys, client, account, "mfa")
        return UnauthenticatedError("invalid second factor", mfa_required=True)

    async def second_factor_ok(
        self,
        conn: asyncpg.Connection,
        account: repo.Account,
        code: str | None,
        recovery_code: str | None,
        client: Client,
    ) -> bool:
        """A current TOTP code not used before, or an unused recovery code (used up now)."""
        if code is not None and account.mfa_secret is not None:
            step = totp_step(account.mfa_secret, code, time.time())
            return step is not None and await repo.use_totp_step(conn, account.id, step)
        if recovery_code is not None:
            used = await repo.use_recovery_code(conn, account.id, recovery_hash(recovery_code))
            if used:
                await repo.audit(
                    conn,
                    "mfa_recovery_code_used",
                    actor_account_id=account.id,
                    target_account_id=account.id,
                    ip=client.ip,
                )
            return used
        return False

    async def _failed(
        self,
        conn: asyncpg.Connection,
        keys: list[str],
        client: Client,
        account: repo.Account | None,
        stage: str,
    ) -> None:
        for key in keys:
            failures = await repo.record_failure(conn, key)
            free = IP_FREE_FAILURES if key.startswith("ip:") else rules.FREE_FAILURES
            seconds = rules.lockout_seconds(failures - free + rules.FREE_FAILURES)
            if seconds:
                await repo.lock(conn, key, seconds)
        await repo.audit(
            conn,
            "login_failed",
            target_account_id=None if account is None else account.id,
            ip=client.ip,
            details={"stage": stage},
        )

    async def device_login(self, msg: DeviceLogin, client: Client) -> Tokens:
        """The device's guest account, created on first use."""
        device = token_hash("device:" + msg.device_id)
        try:
            async with self.app.pool.acquire() as conn, conn.transaction():
                account = await repo.by_device(conn, device)
                if account is None:
                    retry_ms = self._signups.take(client.ip, time.monotonic())
                    if retry_ms:
                        raise RateLimitedError(retry_ms)
                    account = await repo.create(conn, device_hash=device)
                    if account is None:  # created by a concurrent login of the same device
                        account = await repo.by_device(conn, device)
                        assert account is not None
                    else:
                        await repo.audit(
                            conn,
                            "register",
                            target_account_id=account.id,
                            ip=client.ip,
                            details={"method": "device"},
                        )
                if account.banned_at is not None:
                    raise ForbiddenError("this account is banned", reason=account.ban_reason)
                return await self.start_session(conn, account.id, "device", client, msg.rid)
        except _DB_ERRORS as exc:
            raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None

    async def refresh(self, refresh_token: str, client: Client, rid: int) -> Tokens:
        """Rotate: the presented refresh token is used up and a new pair answered. A used
        token presented again means it was stolen (or the client is broken): the whole
        session is revoked and its sockets closed.

        Raises: UnauthenticatedError (unknown, expired, revoked or reused).
        """
        h = token_hash(refresh_token)
        try:
            async with self.app.pool.acquire() as conn, conn.transaction():
                row = await repo.lock_refresh(conn, h)
                if row is not None and not row.used and not row.expired and row.session_live:
                    await repo.mark_refresh_used(conn, h)
                    return await self._issue(conn, row.account_id, row.session_id, rid)
                if row is not None and row.used and row.session_live:
                    await repo.revoke_sessions(
                        conn, reason="refresh_reuse", session_ids=[row.session_id]
                    )
                    await repo.audit(
                        conn,
                        "refresh_reuse",
                        target_account_id=row.account_id,
                        ip=client.ip,
                        details={"session_id": row.session_id},
                    )
        except _DB_ERRORS as exc:
            raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None
        raise UnauthenticatedError("refresh token is invalid, expired or revoked")

    # --- who is calling -----------------------------------------------------------------------

    async def authenticate(self, token: str, client: Client) -> tuple[Principal, int, str] | None:
        """The principal an access token or API key stands for, with its player (id and
        name; 0 and "" for an API key). None if neither is valid."""
        try:
            async with self.app.pool.acquire() as conn:
                if token.startswith(ACCESS_PREFIX):
                    grant = await repo.resolve_access(conn, token_hash(token))
                    if grant is None:
                        return None
                    principal = Principal(
                        "account",
                        account_id=grant.account_id,
                        auth_session_id=grant.session_id,
                        roles=frozenset(grant.roles),
                    )
                    return principal, grant.player_id, grant.player_name
                if token.startswith(API_KEY_PREFIX):
                    key = await repo.use_api_key(conn, token_hash(token))
                    if key is None:
                        return None
                    await repo.audit(
                        conn,
                        "api_key_used",
                        actor_api_key_id=key.key_id,
                        ip=client.ip,
                        details={"name": key.name},
                    )
                    perms = frozenset(
                        rules.Permission(p) for p in key.permissions if p in _PERMISSION_NAMES
                    )
                    return Principal("api_key", api_key_id=key.key_id, key_permissions=perms), 0, ""
        except _DB_ERRORS as exc:
            raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None
        return None

    # --- own account ------------------------------------------------------------------------------

    async def profile(self, account_id: int, rid: int) -> Profile:
        async with self.app.pool.acquire() as conn:
            account = await repo.by_id(conn, account_id)
        if account is None:
            raise UnauthenticatedError("account no longer exists")
        return profile_of(account, rid)


_PERMISSION_NAMES = frozenset(p.value for p in rules.Permission)


def profile_of(account: repo.Account, rid: int) -> Profile:
    return Profile(
        rid=rid,
        account_id=account.id,
        player_id=account.player_id,
        email=account.email,
        display_name=account.display_name,
        locale=account.locale,
        avatar_url=account.avatar_url,
        notification_prefs=NotificationPrefs(**account.notification_prefs),
        roles=sorted(account.roles),
        mfa_enabled=account.mfa_enabled,
        guest=account.guest,
    )


# --- MFA helpers (pure) ---------------------------------------------------------------------------


def totp_step(secret: str, code: str, now_s: float) -> int | None:
    """The time step ``code`` is valid for (now, or one step either side for clock skew),
    None if it is not a current code. Compared in constant time."""
    totp = pyotp.TOTP(secret)
    step_now = int(now_s // totp.interval)
    for step in (step_now, step_now - 1, step_now + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_codes() -> list[str]:
    """Ten codes like ``k3vq-8xmf-2hzn`` (60 bits each)."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = base64.b32encode(secrets.token_bytes(8)).decode().lower()[:12]
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:12]}")
    return codes


def recovery_hash(code: str) -> bytes:
    return token_hash("recovery:" + code.strip().lower().replace("-", "").replace(" ", ""))


def check_second_factor_given(code: str | None, recovery_code: str | None) -> None:
    """Raises: BadRequestError: neither or both given."""
    if (code is None) == (recovery_code is None):
        raise BadRequestError("give exactly one of code and recovery_code")

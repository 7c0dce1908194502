"""Account handlers on the socket: login before the session, then the account's own
sessions, MFA and profile, and the staff messages (roles, bans, account views, audit, API
keys). Each registration names the permission it needs (server/dispatch.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg
import pyotp

from persistence.repos import accounts as repo
from protocol.accounts import (
    AccountView,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeys,
    AuditEntry,
    AuditPage,
    AuditQuery,
    Ban,
    ChangePassword,
    CreateApiKey,
    DeviceLogin,
    Done,
    GetProfile,
    GrantRole,
    LinkEmail,
    ListApiKeys,
    ListSessions,
    Login,
    Logout,
    LogoutAll,
    MfaConfirm,
    MfaDisable,
    MfaEnroll,
    MfaEnrolment,
    MfaRecoveryCodes,
    Profile,
    Refresh,
    Register,
    RevokeApiKey,
    RevokeRole,
    RevokeSession,
    SessionInfo,
    Sessions,
    Tokens,
    Unban,
    UpdateProfile,
    ViewAccount,
)
from protocol.errors import (
    ConflictError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from server.dispatch import HandlerMap, public, requires
from server.domains.accounts import rules, service
from server.domains.accounts.principal import Principal
from server.domains.accounts.rules import Permission as P  # noqa: N817

if TYPE_CHECKING:
    from server.session import Session


def _client(session: Session) -> service.Client:
    return service.Client(session.client_ip, session.user_agent)


def _me(session: Session) -> Principal:
    """The caller's principal, which has an account (ACCOUNT_SELF is only held by those)."""
    p = session.principal
    assert p is not None and p.account_id is not None
    return p


def _ms(at: dt.datetime | None) -> int:
    return 0 if at is None else int(at.timestamp() * 1000)


@contextlib.asynccontextmanager
async def _db(session: Session, transaction: bool = True) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection (in a transaction, unless told otherwise) for one handler step;
    the database being unreachable is ``unavailable`` (retry), not ``internal``."""
    try:
        async with session.app.pool.acquire() as conn:
            if transaction:
                async with conn.transaction():
                    yield conn
            else:
                yield conn
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UnavailableError("account store unavailable", reason=type(exc).__name__) from None


# --- before the session ---------------------------------------------------------------------


async def register(session: Session, msg: Register) -> Tokens:
    return await session.app.accounts.register(msg, _client(session))


async def login(session: Session, msg: Login) -> Tokens:
    return await session.app.accounts.login(msg, _client(session))


async def device_login(session: Session, msg: DeviceLogin) -> Tokens:
    return await session.app.accounts.device_login(msg, _client(session))


async def refresh(session: Session, msg: Refresh) -> Tokens:
    return await session.app.accounts.refresh(msg.refresh_token, _client(session), msg.rid)


# --- own sessions and password ----------------------------------------------------------------


async def logout(session: Session, msg: Logout) -> Done:
    """Revoke this login session; this socket closes (after the reply) with the others."""
    me = _me(session)
    async with _db(session) as conn:
        assert me.auth_session_id is not None
        revoked = await repo.revoke_sessions(
            conn, reason="logout", session_ids=[me.auth_session_id]
        )
        await repo.audit(
            conn,
            "logout",
            **me.audit_actor(),
            target_account_id=me.account_id,
            ip=session.client_ip,
        )
    return Done(rid=msg.rid, count=len(revoked))


async def logout_all(session: Session, msg: LogoutAll) -> Done:
    me = _me(session)
    async with _db(session) as conn:
        revoked = await repo.revoke_sessions(conn, reason="logout_all", account_id=me.account_id)
        await repo.audit(
            conn,
            "logout_all",
            **me.audit_actor(),
            target_account_id=me.account_id,
            ip=session.client_ip,
            details={"sessions": len(revoked)},
        )
    return Done(rid=msg.rid, count=len(revoked))


async def change_password(session: Session, msg: ChangePassword) -> Done:
    """Needs the old password; every other login session is revoked.

    Raises: UnauthenticatedError (wrong old password), BadRequestError (policy)."""
    me = _me(session)
    accounts = session.app.accounts
    async with _db(session, transaction=False) as conn:
        account = await repo.by_id(conn, me.account_id or 0)
    if account is None or not await accounts.passwords.verify(
        account.password_hash, msg.old_password
    ):
        raise UnauthenticatedError("the old password is wrong")
    rules.check_password_policy(msg.new_password, account.email)
    hashed = await accounts.passwords.hash(msg.new_password)
    async with _db(session) as conn:
        await repo.set_password(conn, account.id, hashed)
        revoked = await repo.revoke_sessions(
            conn,
            reason="password_changed",
            account_id=account.id,
            except_session=me.auth_session_id,
        )
        await repo.audit(
            conn,
            "password_changed",
            **me.audit_actor(),
            target_account_id=account.id,
            ip=session.client_ip,
            details={"sessions_revoked": len(revoked)},
        )
    return Done(rid=msg.rid, count=len(revoked))


async def link_email(session: Session, msg: LinkEmail) -> Done:
    """Raises: ConflictError (not a guest account, or the email cannot be used)."""
    me = _me(session)
    email = rules.normalise_email(msg.email)
    rules.check_password_policy(msg.password, email)
    hashed = await session.app.accounts.passwords.hash(msg.password)
    async with _db(session) as conn:
        account = await repo.by_id(conn, me.account_id or 0, lock=True)
        if account is None or account.email is not None:
            raise ConflictError("this account already has an email")
        if not await repo.link_email(conn, account.id, email, hashed):
            raise ConflictError("this email cannot be linked", field="email")
        await repo.audit(
            conn,
            "email_linked",
            **me.audit_actor(),
            target_account_id=account.id,
            ip=session.client_ip,
        )
    return Done(rid=msg.rid)


async def list_sessions(session: Session, msg: ListSessions) -> Sessions:
    me = _me(session)
    async with _db(session, transaction=False) as conn:
        rows = await repo.list_sessions(conn, me.account_id or 0)
    return Sessions(
        rid=msg.rid,
        sessions=[
            SessionInfo(
                session_id=r["id"],
                method=r["method"],
                ip=r["ip"],
                user_agent=r["user_agent"],
                created_at_ms=_ms(r["created_at"]),
                last_used_at_ms=_ms(r["last_used_at"]),
                current=r["id"] == me.auth_session_id,
            )
            for r in rows
        ],
    )


async def revoke_session(session: Session, msg: RevokeSession) -> Done:
    """Raises: NotFoundError: no live session with this id belongs to the caller (another
    account's session id gets exactly this answer)."""
    me = _me(session)
    async with _db(session) as conn:
        owned = {r["id"] for r in await repo.list_sessions(conn, me.account_id or 0)}
        if msg.session_id not in owned:
            raise NotFoundError(f"no session {msg.session_id}", session_id=msg.session_id)
        await repo.revoke_sessions(conn, reason="logout", session_ids=[msg.session_id])
        await repo.audit(
            conn,
            "session_revoked",
            **me.audit_actor(),
            target_account_id=me.account_id,
            ip=session.client_ip,
            details={"session_id": msg.session_id},
        )
    return Done(rid=msg.rid)


# --- MFA --------------------------------------------------------------------------------------


async def mfa_enroll(session: Session, msg: MfaEnroll) -> MfaEnrolment:
    """A new secret, inactive until confirmed. Raises: ConflictError: MFA is already on."""
    me = _me(session)
    secret = pyotp.random_base32()
    async with _db(session) as conn:
        account = await repo.by_id(conn, me.account_id or 0, lock=True)
        assert account is not None
        if account.mfa_enabled:
            raise ConflictError("MFA is already on; disable it first")
        await repo.set_mfa(conn, account.id, secret=secret, enabled=False)
        await repo.audit(
            conn,
            "mfa_enrolment_started",
            **me.audit_actor(),
            target_account_id=account.id,
            ip=session.client_ip,
        )
    label = account.email or account.display_name or f"account {account.id}"
    uri = pyotp.TOTP(secret).provisioning_uri(name=label, issuer_name="Gearhall")
    return MfaEnrolment(rid=msg.rid, secret=secret, otpauth_uri=uri)


async def mfa_confirm(session: Session, msg: MfaConfirm) -> MfaRecoveryCodes:
    """Raises: ConflictError (nothing to confirm), UnauthenticatedError (wrong code)."""
    me = _me(session)
    codes = service.new_recovery_codes()
    async with _db(session) as conn:
        account = await repo.by_id(conn, me.account_id or 0, lock=True)
        assert account is not None
        if account.mfa_enabled or account.mfa_secret is None:
            raise ConflictError("no MFA enrolment to confirm; send mfa.enroll first")
        step = service.totp_step(account.mfa_secret, msg.code, time.time())
        if step is not None:
            await repo.set_mfa(conn, account.id, secret=account.mfa_secret, enabled=True)
            await repo.use_totp_step(conn, account.id, step)
            await repo.store_recovery_codes(
                conn, account.id, [service.recovery_hash(c) for c in codes]
            )
            await repo.audit(
                conn,
                "mfa_enabled",
                **me.audit_actor(),
                target_account_id=account.id,
                ip=session.client_ip,
            )
            return MfaRecoveryCodes(rid=msg.rid, codes=codes)
    raise UnauthenticatedError("that code is not current")


async def mfa_disable(session: Session, msg: MfaDisable) -> Done:
    """Re-authentication: the password and a current code or an unused recovery code.

    Raises: BadRequestError (neither or both factors), ConflictError (MFA is off),
    UnauthenticatedError (wrong password or code)."""
    me = _me(session)
    service.check_second_factor_given(msg.code, msg.recovery_code)
    accounts = session.app.accounts
    async with _db(session, transaction=False) as conn:
        account = await repo.by_id(conn, me.account_id or 0)
    assert account is not None
    if not account.mfa_enabled:
        raise ConflictError("MFA is not on")
    if not await accounts.passwords.verify(account.password_hash, msg.password):
        raise UnauthenticatedError("wrong password or code")
    client = _client(session)
    async with _db(session) as conn:
        if await accounts.second_factor_ok(conn, account, msg.code, msg.recovery_code, client):
            await repo.set_mfa(conn, account.id, secret=None, enabled=False)
            await repo.audit(
                conn,
                "mfa_disabled",
                **me.audit_actor(),
                target_account_id=account.id,
                ip=session.client_ip,
            )
            return Done(rid=msg.rid)
    raise UnauthenticatedError("wrong password or code")


# --- profile ----------------------------------------------------------------------------------


async def get_profile(session: Session, msg: GetProfile) -> Profile:
    return await session.app.accounts.profile(_me(session).account_id or 0, msg.rid)


async def update_profile(session: Session, msg: UpdateProfile) -> Profile:
    """Raises: BadRequestError (a field is invalid), ConflictError (name taken)."""
    me = _me(session)
    name = None
    if msg.display_name is not None:
        name = (msg.display_name, rules.display_name_key(msg.display_name))
    locale = None if msg.locale is None else rules.check_locale(msg.locale)
    avatar = None if msg.avatar_url is None else rules.check_avatar_url(msg.avatar_url)
    prefs = None
    if msg.notification_prefs is not None:
        prefs = {
            f: getattr(msg.notification_prefs, f) for f in msg.notification_prefs.__struct_fields__
        }
    async with _db(session) as conn:
        ok = await repo.update_profile(
            conn,
            me.account_id or 0,
            display_name=name,
            locale=locale,
            avatar_url=avatar,
            notification_prefs=prefs,
        )
        if not ok:
            raise ConflictError("that display name is taken", field="display_name")
        account = await repo.by_id(conn, me.account_id or 0)
    assert account is not None
    return service.profile_of(account, msg.rid)


# --- staff --------------------------------------------------------------------------------------


async def _target(conn: asyncpg.Connection, account_id: int, lock: bool = False) -> repo.Account:
    account = await repo.by_id(conn, account_id, lock=lock)
    if account is None:
        raise NotFoundError(f"no account {account_id}", account_id=account_id)
    return account


async def _view(
    session: Session, conn: asyncpg.Connection, account: repo.Account, rid: int, reveal: bool
) -> AccountView:
    ip = await repo.last_login_ip(conn, account.id)
    return AccountView(
        rid=rid,
        account_id=account.id,
        player_id=account.player_id,
        email=account.email if reveal else rules.mask_email(account.email),
        display_name=account.display_name,
        roles=sorted(account.roles),
        banned=account.banned_at is not None,
        ban_reason=account.ban_reason,
        mfa_enabled=account.mfa_enabled,
        created_at_ms=_ms(account.created_at),
        last_login_ip=ip if reveal else rules.mask_ip(ip),
        pii_masked=not reveal,
    )


async def _change_roles(
    session: Session, account_id: int, role: str, grant: bool, rid: int
) -> AccountView:
    actor = session.principal
    assert actor is not None
    async with _db(session) as conn:
        account = await _target(conn, account_id, lock=True)
        rules.check_may_manage(session.permissions, account.roles)
        if grant:
            rules.check_may_manage(session.permissions, [role])
        roles = sorted((set(account.roles) | {role}) if grant else (set(account.roles) - {role}))
        await repo.set_roles(conn, account.id, roles)
        await repo.notify(conn, {"kind": "roles", "account_id": account.id, "roles": roles})
        await repo.audit(
            conn,
            "role_granted" if grant else "role_revoked",
            **actor.audit_actor(),
            target_account_id=account.id,
            ip=session.client_ip,
            details={"role": role, "roles": roles},
        )
        account = await _target(conn, account_id)
        view = await _view(session, conn, account, rid, reveal=False)
    session.app.auth_bus.apply_roles(account_id, roles)
    return view


async def grant_role(session: Session, msg: GrantRole) -> AccountView:
    """Raises: NotFoundError, ForbiddenError (the target or the role outranks the caller)."""
    return await _change_roles(session, msg.account_id, msg.role.value, True, msg.rid)


async def revoke_role(session: Session, msg: RevokeRole) -> AccountView:
    return await _change_roles(session, msg.account_id, msg.role.value, False, msg.rid)


async def ban(session: Session, msg: Ban) -> AccountView:
    """Ban: every login session is revoked and every socket of the account closed, on
    every node. Raises: NotFoundError, ForbiddenError (the target outranks the caller)."""
    actor = session.principal
    assert actor is not None
    async with _db(session) as conn:
        account = await _target(conn, msg.account_id, lock=True)
        rules.check_may_manage(session.permissions, account.roles)
        await repo.set_ban(conn, account.id, msg.reason)
        await repo.revoke_sessions(conn, reason="banned", account_id=account.id)
        await repo.notify(conn, {"kind": "ban", "account_id": account.id})
        await repo.audit(
            conn,
            "banned",
            **actor.audit_actor(),
            target_account_id=account.id,
            ip=session.client_ip,
            details={"reason": msg.reason},
        )
        account = await _target(conn, msg.account_id)
        return await _view(session, conn, account, msg.rid, reveal=False)


async def unban(session: Session, msg: Unban) -> AccountView:
    actor = session.principal
    assert actor is not None
    async with _db(session) as conn:
        account = await _target(conn, msg.account_id, lock=True)
        rules.check_may_manage(session.permissions, account.roles)
        await repo.set_ban(conn, account.id, None)
        await repo.audit(
            conn,
            "unbanned",
            **actor.audit_actor(),
            target_account_id=account.id,
            ip=session.client_ip,
        )
        account = await _target(conn, msg.account_id)
        return await _view(session, conn, account, msg.rid, reveal=False)


async def view_account(session: Session, msg: ViewAccount) -> AccountView:
    """Masked unless ``reveal_pii`` and the caller holds ``pii.read``; an unmasked read is
    audited in the same transaction (no read without its record)."""
    actor = session.principal
    assert actor is not None
    reveal = msg.reveal_pii and P.PII_READ in session.permissions
    async with _db(session) as conn:
        account = await _target(conn, msg.account_id)
        if reveal:
            await repo.audit(
                conn,
                "pii_read",
                **actor.audit_actor(),
                target_account_id=account.id,
                ip=session.client_ip,
                details={"fields": ["email", "last_login_ip"]},
            )
        return await _view(session, conn, account, msg.rid, reveal=reveal)


def _at(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def audit_query(session: Session, msg: AuditQuery) -> AuditPage:
    async with _db(session, transaction=False) as conn:
        rows = await repo.query_audit(
            conn,
            action=msg.action,
            actor_account_id=msg.actor_account_id,
            target_account_id=msg.target_account_id,
            since=_at(msg.since_ms),
            until=_at(msg.until_ms),
            before_id=msg.before_id,
            limit=msg.limit,
        )
    entries = [
        AuditEntry(
            id=r["id"],
            at_ms=_ms(r["at"]),
            action=r["action"],
            actor_account_id=r["actor_account_id"],
            actor_api_key_id=r["actor_api_key_id"],
            target_account_id=r["target_account_id"],
            ip=r["ip"],
            details=json.loads(r["details"]) if isinstance(r["details"], str) else r["details"],
        )
        for r in rows
    ]
    more = len(entries) == msg.limit
    return AuditPage(rid=msg.rid, entries=entries, next_before_id=entries[-1].id if more else None)


async def create_api_key(session: Session, msg: CreateApiKey) -> ApiKeyCreated:
    """Raises: BadRequestError (unknown or person-only permission), ForbiddenError (the
    caller does not hold one)."""
    actor = session.principal
    assert actor is not None
    perms = rules.check_api_key_permissions(msg.permissions, session.permissions)
    key = service.new_token(service.API_KEY_PREFIX)
    async with _db(session) as conn:
        key_id = await repo.create_api_key(
            conn, msg.name, service.token_hash(key), perms, actor.account_id
        )
        await repo.audit(
            conn,
            "api_key_created",
            **actor.audit_actor(),
            ip=session.client_ip,
            details={"key_id": key_id, "name": msg.name, "permissions": perms},
        )
    return ApiKeyCreated(rid=msg.rid, key_id=key_id, key=key, permissions=perms)


async def list_api_keys(session: Session, msg: ListApiKeys) -> ApiKeys:
    async with _db(session, transaction=False) as conn:
        rows = await repo.list_api_keys(conn)
    return ApiKeys(
        rid=msg.rid,
        keys=[
            ApiKeyInfo(
                key_id=r["id"],
                name=r["name"],
                permissions=list(r["permissions"]),
                created_at_ms=_ms(r["created_at"]),
                last_used_at_ms=None if r["last_used_at"] is None else _ms(r["last_used_at"]),
                revoked=r["revoked"],
            )
            for r in rows
        ],
    )


async def revoke_api_key(session: Session, msg: RevokeApiKey) -> Done:
    """Sockets using the key are closed. Raises: NotFoundError (no such live key)."""
    actor = session.principal
    assert actor is not None
    async with _db(session) as conn:
        if not await repo.revoke_api_key(conn, msg.key_id):
            raise NotFoundError(f"no API key {msg.key_id}", key_id=msg.key_id)
        await repo.audit(
            conn,
            "api_key_revoked",
            **actor.audit_actor(),
            ip=session.client_ip,
            details={"key_id": msg.key_id},
        )
    return Done(rid=msg.rid)


HANDLERS: HandlerMap = {
    Register: public(register),
    Login: public(login),
    DeviceLogin: public(device_login),
    Refresh: public(refresh),
    Logout: requires(P.ACCOUNT_SELF, logout),
    LogoutAll: requires(P.ACCOUNT_SELF, logout_all),
    ChangePassword: requires(P.ACCOUNT_SELF, change_password),
    LinkEmail: requires(P.ACCOUNT_SELF, link_email),
    ListSessions: requires(P.ACCOUNT_SELF, list_sessions),
    RevokeSession: requires(P.ACCOUNT_SELF, revoke_session),
    MfaEnroll: requires(P.ACCOUNT_SELF, mfa_enroll),
    MfaConfirm: requires(P.ACCOUNT_SELF, mfa_confirm),
    MfaDisable: requires(P.ACCOUNT_SELF, mfa_disable),
    GetProfile: requires(P.ACCOUNT_SELF, get_profile),
    UpdateProfile: requires(P.ACCOUNT_SELF, update_profile),
    GrantRole: requires(P.ROLES_MANAGE, grant_role),
    RevokeRole: requires(P.ROLES_MANAGE, revoke_role),
    Ban: requires(P.ACCOUNT_BAN, ban),
    Unban: requires(P.ACCOUNT_BAN, unban),
    ViewAccount: requires(P.ACCOUNT_VIEW, view_account),
    AuditQuery: requires(P.AUDIT_READ, audit_query),
    CreateApiKey: requires(P.APIKEYS_MANAGE, create_api_key),
    ListApiKeys: requires(P.APIKEYS_MANAGE, list_api_keys),
    RevokeApiKey: requires(P.APIKEYS_MANAGE, revoke_api_key),
}

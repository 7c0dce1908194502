"""Accounts: sign-up, login, tokens, sessions, MFA, profiles, roles, bans, audit, API keys.

The messages before ``session.hello`` (``auth.register``, ``auth.login``,
``auth.device_login``, ``auth.refresh``, ``auth.oidc_start``, ``auth.oidc_finish``) may be
sent on a fresh connection; they answer tokens, and the access token is what
``session.hello`` carries. The same requests are served as JSON over HTTP on the same port
(``POST /auth/...``, docs/accounts.md). Everything else needs a session and the permission
its handler declares.

Ids that name something of another account (a session id, an account id in an admin
message) are answered exactly as a missing id when the caller may not see them.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from protocol.base import Reply, Request

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
# Length limits only; the policy (common passwords, minimum length) is the server's.
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
TotpCode = Annotated[str, msgspec.Meta(min_length=6, max_length=8, pattern=r"^[0-9]+$")]
RecoveryCode = Annotated[str, msgspec.Meta(min_length=8, max_length=32)]
DeviceId = Annotated[str, msgspec.Meta(min_length=16, max_length=128)]
OpaqueToken = Annotated[str, msgspec.Meta(min_length=16, max_length=512)]
AccountId = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Locale = Annotated[str, msgspec.Meta(min_length=2, max_length=35)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
ApiKeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PermissionName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=500)]


class Role(enum.StrEnum):
    PLAYER = "player"
    SELLER = "seller"
    SUPPORT = "support"
    MODERATOR = "moderator"
    ADMIN = "admin"


class NotificationPrefs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a player wants to be told about, and where. Security notices are always sent."""

    in_game: bool = True
    email: bool = True
    push: bool = False
    marketplace: bool = True
    trades: bool = True
    maintenance: bool = True
    chat: bool = True


# --- before the session --------------------------------------------------------------------


class Register(Request, tag="auth.register", frozen=True):
    """Create an account with email and password, and log in."""

    email: Email
    password: Password
    display_name: DisplayName | None = None


class Login(Request, tag="auth.login", frozen=True):
    """Log in. With MFA on, also ``totp`` or a single-use ``recovery_code``."""

    email: Email
    password: Password
    totp: TotpCode | None = None
    recovery_code: RecoveryCode | None = None


class DeviceLogin(Request, tag="auth.device_login", frozen=True):
    """Log in as the guest account of this device (created on first use). ``device_id`` is
    a random secret the client generates once and keeps; link an email later."""

    device_id: DeviceId


class Refresh(Request, tag="auth.refresh", frozen=True):
    """Trade a refresh token for a new access token and a new refresh token. A refresh
    token works once: presenting it again revokes its whole session."""

    refresh_token: OpaqueToken


class OidcStart(Request, tag="auth.oidc_start", frozen=True):
    """Begin an OpenID Connect login: answers the issuer's authorization URL (with PKCE).
    Sent with a session, the external identity is linked to that account instead."""

    redirect_uri: Url


class OidcFinish(Request, tag="auth.oidc_finish", frozen=True):
    """Finish an OpenID Connect login with the ``code`` and ``state`` the issuer returned."""

    code: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    state: Annotated[str, msgspec.Meta(min_length=16, max_length=256)]


class Tokens(Reply, tag="auth.tokens", frozen=True):
    """Credentials for one login session. ``expires_in`` is the access token's lifetime in
    seconds; refresh before it runs out."""

    account_id: int
    session_id: int
    access_token: str
    refresh_token: str
    expires_in: int


class OidcAuthorize(Reply, tag="auth.oidc_authorize", frozen=True):
    """Send the user to ``url``; the issuer redirects back with ``code`` and ``state``."""

    url: str
    state: str


# --- own account and sessions --------------------------------------------------------------


class Logout(Request, tag="auth.logout", frozen=True):
    """Revoke this connection's login session; this socket is closed."""


class LogoutAll(Request, tag="auth.logout_all", frozen=True):
    """Revoke every login session of the account, this one too."""


class ChangePassword(Request, tag="auth.change_password", frozen=True):
    """Change the password; every other login session is revoked."""

    old_password: Password
    new_password: Password


class LinkEmail(Request, tag="auth.link_email", frozen=True):
    """Give a guest (device) account an email and password, so it can log in anywhere."""

    email: Email
    password: Password


class ListSessions(Request, tag="auth.list_sessions", frozen=True):
    """The account's login sessions that are still valid."""


class RevokeSession(Request, tag="auth.revoke_session", frozen=True):
    """Revoke one of the account's own login sessions; its sockets are closed."""

    session_id: AccountId


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    session_id: int
    method: str
    ip: str
    user_agent: str
    created_at_ms: int
    last_used_at_ms: int
    current: bool


class Sessions(Reply, tag="auth.sessions", frozen=True):
    sessions: list[SessionInfo]


class Done(Reply, tag="ok", frozen=True):
    """A request that changes something and has nothing else to say. ``count`` is how many
    things it changed where that is more than one (sessions revoked...)."""

    count: int = 1


# --- MFA -----------------------------------------------------------------------------------


class MfaEnroll(Request, tag="mfa.enroll", frozen=True):
    """Start TOTP enrolment: a new secret, not active until confirmed."""


class MfaEnrolment(Reply, tag="mfa.enrolment", frozen=True):
    secret: str
    otpauth_uri: str


class MfaConfirm(Request, tag="mfa.confirm", frozen=True):
    """Confirm enrolment with a current code: MFA is on from now, and the single-use
    recovery codes are answered, once."""

    code: TotpCode


class MfaRecoveryCodes(Reply, tag="mfa.recovery_codes", frozen=True):
    codes: list[str]


class MfaDisable(Request, tag="mfa.disable", frozen=True):
    """Turn MFA off: needs the password again and a current code or a recovery code."""

    password: Password
    code: TotpCode | None = None
    recovery_code: RecoveryCode | None = None


# --- profile -------------------------------------------------------------------------------


class GetProfile(Request, tag="profile.get", frozen=True):
    """The caller's own profile."""


class UpdateProfile(Request, tag="profile.update", frozen=True):
    """Change the fields given; null leaves a field as it is."""

    display_name: DisplayName | None = None
    locale: Locale | None = None
    avatar_url: Url | None = None
    notification_prefs: NotificationPrefs | None = None


class Profile(Reply, tag="profile", frozen=True):
    account_id: int
    player_id: int
    email: str | None
    display_name: str | None
    locale: str
    avatar_url: str | None
    notification_prefs: NotificationPrefs
    roles: list[str]
    mfa_enabled: bool
    guest: bool


# --- admin ---------------------------------------------------------------------------------


class GrantRole(Request, tag="admin.grant_role", frozen=True):
    account_id: AccountId
    role: Role


class RevokeRole(Request, tag="admin.revoke_role", frozen=True):
    account_id: AccountId
    role: Role


class Ban(Request, tag="admin.ban", frozen=True):
    """Ban an account: its sessions are revoked and its sockets closed."""

    account_id: AccountId
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class Unban(Request, tag="admin.unban", frozen=True):
    account_id: AccountId


class ViewAccount(Request, tag="admin.view_account", frozen=True):
    """An account as staff see it. Email and IPs are masked unless ``reveal_pii`` is true
    and the caller holds ``pii.read``; an unmasked read is audited."""

    account_id: AccountId
    reveal_pii: bool = False


class AccountView(Reply, tag="admin.account", frozen=True):
    account_id: int
    player_id: int
    email: str | None
    display_name: str | None
    roles: list[str]
    banned: bool
    ban_reason: str | None
    mfa_enabled: bool
    created_at_ms: int
    last_login_ip: str | None
    pii_masked: bool


class AuditQuery(Request, tag="admin.audit_query", frozen=True):
    """Audit entries, newest first, filtered; page with ``before_id`` = the last page's
    ``next_before_id``."""

    action: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    actor_account_id: AccountId | None = None
    target_account_id: AccountId | None = None
    since_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    until_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    before_id: Annotated[int, msgspec.Meta(ge=1)] | None = None
    limit: Limit = 50


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at_ms: int
    action: str
    actor_account_id: int | None
    actor_api_key_id: int | None
    target_account_id: int | None
    ip: str
    details: dict[str, object]


class AuditPage(Reply, tag="admin.audit_page", frozen=True):
    entries: list[AuditEntry]
    next_before_id: int | None


class CreateApiKey(Request, tag="admin.create_api_key", frozen=True):
    """A key for a service or operator, limited to ``permissions`` (a subset of the
    caller's). The key itself is answered once and never stored."""

    name: ApiKeyName
    permissions: Annotated[list[PermissionName], msgspec.Meta(min_length=1, max_length=32)]


class ApiKeyCreated(Reply, tag="admin.api_key_created", frozen=True):
    key_id: int
    key: str
    permissions: list[str]


class ListApiKeys(Request, tag="admin.list_api_keys", frozen=True):
    pass


class ApiKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    key_id: int
    name: str
    permissions: list[str]
    created_at_ms: int
    last_used_at_ms: int | None
    revoked: bool


class ApiKeys(Reply, tag="admin.api_keys", frozen=True):
    keys: list[ApiKeyInfo]


class RevokeApiKey(Request, tag="admin.revoke_api_key", frozen=True):
    key_id: AccountId


ClientAccountsMessage = (
    Register
    | Login
    | DeviceLogin
    | Refresh
    | OidcStart
    | OidcFinish
    | Logout
    | LogoutAll
    | ChangePassword
    | LinkEmail
    | ListSessions
    | RevokeSession
    | MfaEnroll
    | MfaConfirm
    | MfaDisable
    | GetProfile
    | UpdateProfile
    | GrantRole
    | RevokeRole
    | Ban
    | Unban
    | ViewAccount
    | AuditQuery
    | CreateApiKey
    | ListApiKeys
    | RevokeApiKey
)

ServerAccountsMessage = (
    Tokens
    | OidcAuthorize
    | Sessions
    | Done
    | MfaEnrolment
    | MfaRecoveryCodes
    | Profile
    | AccountView
    | AuditPage
    | ApiKeyCreated
    | ApiKeys
)

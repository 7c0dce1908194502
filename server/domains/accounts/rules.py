"""Pure account rules: permissions of each role, email normalisation, the password policy,
profile field validation, lockout schedule and masking. No I/O, no clock reads (times are
passed in), no randomness."""

from __future__ import annotations

import enum
import gzip
import re
import unicodedata
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from protocol.accounts import Role
from protocol.errors import BadRequestError, ForbiddenError

_DATA = Path(__file__).resolve().parent / "data"


class Permission(enum.StrEnum):
    """What a handler may require. A principal holds the union of its roles' permissions
    (an API key: exactly the ones it was created with)."""

    SESSION = "session"  # any signed-in principal: ping
    GAME_PLAY = "game.play"  # player intents; needs a player
    ACCOUNT_SELF = "account.self"  # own profile, sessions, MFA, password
    MARKET_SELL = "market.sell"
    ACCOUNT_VIEW = "account.view"  # staff view of an account, personal data masked
    PII_READ = "pii.read"  # unmask personal data (audited)
    ACCOUNT_BAN = "account.ban"
    ROLES_MANAGE = "roles.manage"
    AUDIT_READ = "audit.read"
    APIKEYS_MANAGE = "apikeys.manage"
    ITEMS_GRANT = "items.grant"


P = Permission
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.PLAYER: frozenset({P.SESSION, P.GAME_PLAY, P.ACCOUNT_SELF}),
    Role.SELLER: frozenset({P.SESSION, P.GAME_PLAY, P.ACCOUNT_SELF, P.MARKET_SELL}),
    Role.SUPPORT: frozenset({P.SESSION, P.ACCOUNT_VIEW, P.AUDIT_READ}),
    Role.MODERATOR: frozenset({P.SESSION, P.ACCOUNT_VIEW, P.ACCOUNT_BAN}),
    Role.ADMIN: frozenset(Permission),
}

# An API key acts for a service, never as a player: these stay with people.
API_KEY_FORBIDDEN = frozenset({P.GAME_PLAY, P.ACCOUNT_SELF})
# What every player holds: not power over others, so not compared by check_may_manage.
PERSONAL = frozenset({P.SESSION, P.GAME_PLAY, P.ACCOUNT_SELF, P.MARKET_SELL})


def permissions_for(roles: Iterable[str]) -> frozenset[Permission]:
    """The union of the roles' permissions; unknown role names grant nothing."""
    granted: set[Permission] = set()
    for name in roles:
        try:
            granted |= ROLE_PERMISSIONS[Role(name)]
        except ValueError:
            continue
    return frozenset(granted)


def check_may_manage(actor: frozenset[Permission], target_roles: Iterable[str]) -> None:
    """An actor may ban or change the roles of an account only if it holds every staff
    permission the account's roles give: a moderator cannot ban an admin, or a support
    agent (who can read the audit log, which a moderator cannot).

    Raises:
        ForbiddenError: the target outranks the actor.
    """
    if not permissions_for(target_roles) - PERSONAL <= actor:
        raise ForbiddenError("that account holds permissions you do not")


def check_api_key_permissions(requested: Iterable[str], actor: frozenset[Permission]) -> list[str]:
    """The permissions of a new API key: known, not for people only, held by the creator.

    Raises:
        BadRequestError: an unknown or person-only permission.
        ForbiddenError: the creator does not hold one of them.
    """
    out: list[str] = []
    for name in requested:
        try:
            perm = Permission(name)
        except ValueError:
            raise BadRequestError(f"unknown permission {name!r}", permission=name) from None
        if perm in API_KEY_FORBIDDEN:
            raise BadRequestError(f"{name!r} cannot be given to an API key", permission=name)
        if perm not in actor:
            raise ForbiddenError(f"you do not hold {name!r}", permission=name)
        if perm.value not in out:
            out.append(perm.value)
    return sorted(out)


# --- email and password ---------------------------------------------------------------------

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s.]{2,63}$")


def normalise_email(raw: str) -> str:
    """The key an email is stored and looked up by: NFKC, trimmed, lower-cased, the domain
    IDNA-encoded. Local parts are case-folded too (every major provider ignores case);
    dots and ``+tags`` are kept (they are significant at most providers).

    Raises:
        BadRequestError: not an email address.
    """
    email = unicodedata.normalize("NFKC", raw).strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise BadRequestError("not an email address", field="email")
    try:
        domain = domain.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise BadRequestError("not an email address", field="email") from None
    email = f"{local.lower()}@{domain.lower()}"
    if len(email) > 254 or not _EMAIL.match(email):
        raise BadRequestError("not an email address", field="email")
    return email


MIN_PASSWORD = 10
MAX_PASSWORD = 256


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords (data/NOTICE), lower-cased."""
    with gzip.open(_DATA / "common-passwords.txt.gz", "rt", encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip())


def check_password_policy(password: str, email: str | None = None) -> None:
    """NIST SP 800-63B style: long enough, not common, not the email; no composition rules.

    Raises:
        BadRequestError: which rule failed (``details.rule``).
    """
    if len(password) < MIN_PASSWORD:
        raise BadRequestError(
            f"password must be at least {MIN_PASSWORD} characters", field="password", rule="length"
        )
    if len(password) > MAX_PASSWORD:
        raise BadRequestError(
            f"password must be at most {MAX_PASSWORD} characters", field="password", rule="length"
        )
    lowered = password.lower()
    if lowered in common_passwords() or len(set(password)) < 4:
        raise BadRequestError("password is too common", field="password", rule="common")
    if email is not None and lowered in (email.lower(), email.split("@")[0].lower()):
        raise BadRequestError("password must not be the email", field="password", rule="email")


# --- profile fields ----------------------------------------------------------------------------

_DISPLAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_ .-]{1,22}[A-Za-z0-9]$")
_RESERVED_NAMES = frozenset(
    {"admin", "administrator", "moderator", "support", "system", "gearhall"}
)
_LOCALE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def display_name_key(name: str) -> str:
    """The uniqueness key of a display name: case-insensitive, spaces collapsed.

    Raises:
        BadRequestError: not a valid display name.
    """
    if not _DISPLAY_NAME.match(name) or "  " in name:
        raise BadRequestError(
            "display names are 3-24 letters, digits, spaces, '_', '.' or '-', "
            "starting and ending with a letter or digit",
            field="display_name",
        )
    key = name.casefold()
    if key in _RESERVED_NAMES:
        raise BadRequestError("that display name is reserved", field="display_name")
    return key


def check_locale(locale: str) -> str:
    """Raises: BadRequestError: not a BCP 47 style tag (``en``, ``pt-BR``)."""
    if not _LOCALE.match(locale):
        raise BadRequestError("locale must be a language tag like en or pt-BR", field="locale")
    return locale


def check_avatar_url(url: str) -> str:
    """Raises: BadRequestError: not an https URL with a host."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or any(c.isspace() for c in url):
        raise BadRequestError("avatar_url must be an https URL", field="avatar_url")
    return url


# --- abuse limits --------------------------------------------------------------------------

FREE_FAILURES = 5
"""Failed logins allowed per key before lockouts start."""
MAX_LOCKOUT_S = 15 * 60


def lockout_seconds(failures: int) -> int:
    """How long a key is locked after its ``failures``-th consecutive failure: nothing for
    the first few, then 1 s doubling per failure, capped at 15 minutes."""
    if failures < FREE_FAILURES:
        return 0
    return min(MAX_LOCKOUT_S, 1 << (failures - FREE_FAILURES))


# --- masking ----------------------------------------------------------------------------------


def mask_email(email: str | None) -> str | None:
    """``a***@e***.com``: enough for staff to recognise, not to contact."""
    if email is None:
        return None
    local, _, domain = email.partition("@")
    host, dot, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***{dot}{tld}"


def mask_ip(ip: str | None) -> str | None:
    """The network, not the host: ``203.0.113.x``, ``2001:db8:…``."""
    if not ip:
        return ip
    if ":" in ip:
        return ":".join(ip.split(":")[:2]) + ":…"
    return ".".join(ip.split(".")[:3]) + ".x"

"""Who a session acts for: an account (through one login session), an API key, or a
development identity. Permissions are derived from roles (or are the key's own) and are
what :mod:`server.dispatch` checks on every message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from server.domains.accounts.rules import Permission, permissions_for

PrincipalKind = Literal["account", "api_key", "dev"]


@dataclass(slots=True)
class Principal:
    kind: PrincipalKind
    account_id: int | None = None
    auth_session_id: int | None = None
    api_key_id: int | None = None
    roles: frozenset[str] = frozenset()
    key_permissions: frozenset[Permission] = frozenset()

    @property
    def permissions(self) -> frozenset[Permission]:
        if self.kind == "api_key":
            return self.key_permissions
        if self.kind == "dev":  # a development identity has no account to manage
            return permissions_for(self.roles) - {Permission.ACCOUNT_SELF}
        return permissions_for(self.roles)

    def audit_actor(self) -> dict[str, Any]:
        """The actor columns of an audit entry."""
        return {"actor_account_id": self.account_id, "actor_api_key_id": self.api_key_id}

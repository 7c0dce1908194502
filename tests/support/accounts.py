"""Accounts for tests: sign up over the socket (``auth.register``), give the account roles in
Postgres before it says hello (roles are read at hello), open signed-in clients, create API
keys. Everything goes through the real server; Postgres is only written to set roles and
prepare states (a ban, an extra role, a spare API key) that the test is not about."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tests.support.client import JSON, Client

PASSWORD = "Gearhall-test-Passw0rd-7391"
"""Long, not common, not the email: passes the password policy."""

MANY_ACCOUNTS: dict[str, object] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 8,
    "argon2_parallelism": 1,
    "signups_per_ip_per_hour": 1_000_000,
    "handshakes_per_ip_per_s": 100_000.0,
    "handshake_burst_per_ip": 100_000,
    "max_sockets_per_ip": 10_000,
}
"""Settings overrides for suites that sign up many accounts and open many connections from
one address: the cheapest argon2id parameters the server accepts, and the per-address
sign-up, handshake and socket limits out of the way."""


def new_email(prefix: str = "user") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}@example.com"


@dataclass(frozen=True, slots=True)
class Account:
    """A signed-up account and the tokens of its first login session."""

    account_id: int
    player_id: int
    session_id: int
    email: str
    access_token: str
    refresh_token: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: int
    key: str
    permissions: tuple[str, ...]


class Clients:
    """Opens clients and closes every one of them on exit (``async with Clients(url)``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Clients:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    async def anonymous(self, subprotocol: str = JSON) -> Client:
        """A connection that never says hello."""
        client = await Client.open(self.url, subprotocol)
        self._stack.push_async_callback(client.close)
        return client

    async def signed_in(self, token: str, subprotocol: str = JSON) -> tuple[Client, dict[str, Any]]:
        """A connection that said hello with ``token`` (access token or API key)."""
        client = await self.anonymous(subprotocol)
        welcome = await client.request("session.hello", token=token)
        assert welcome["t"] == "session.welcome", welcome
        return client, welcome


async def set_roles(db: Any, account_id: int, roles: Sequence[str]) -> None:
    """``db``: an asyncpg pool or connection. Takes effect at the account's next hello."""
    await db.execute("UPDATE accounts SET roles = $2 WHERE id = $1", account_id, list(roles))


async def register(
    lobby: Client,
    db: Any,
    *,
    roles: Sequence[str] | None = None,
    email: str | None = None,
    password: str = PASSWORD,
) -> Account:
    """Sign up over ``lobby`` (any connection; it need not have said hello) and, when
    ``roles`` is given, set them in Postgres (``db``: asyncpg pool or connection) before the
    account's first hello."""
    email = email or new_email()
    tokens = await lobby.request("auth.register", email=email, password=password)
    assert tokens["t"] == "auth.tokens", tokens
    account_id: int = tokens["account_id"]
    row = await db.fetchrow("SELECT player_id, roles FROM accounts WHERE id = $1", account_id)
    assert row is not None, f"auth.register answered account {account_id}, which is not stored"
    if roles is not None:
        await set_roles(db, account_id, roles)
    return Account(
        account_id=account_id,
        player_id=row["player_id"],
        session_id=tokens["session_id"],
        email=email,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        roles=tuple(roles if roles is not None else row["roles"]),
    )


async def create_api_key(
    admin: Client, permissions: Sequence[str], name: str | None = None
) -> ApiKey:
    """``admin.create_api_key`` from a client holding ``apikeys.manage``."""
    reply = await admin.request(
        "admin.create_api_key",
        name=name or f"key-{uuid.uuid4().hex[:8]}",
        permissions=list(permissions),
    )
    assert reply["t"] == "admin.api_key_created", reply
    assert reply["key"].startswith("ghk_"), reply
    return ApiKey(reply["key_id"], reply["key"], tuple(reply["permissions"]))


async def insert_api_key(db: Any, permissions: Sequence[str], name: str | None = None) -> int:
    """A live API key written straight to Postgres (its secret is thrown away): something
    for ``admin.revoke_api_key`` to act on without going through the server."""
    key_id: int = await db.fetchval(
        "INSERT INTO api_keys (name, key_hash, permissions) VALUES ($1, $2, $3) RETURNING id",
        name or f"spare-{uuid.uuid4().hex[:8]}",
        hashlib.sha256(secrets.token_bytes(32)).digest(),
        list(permissions),
    )
    return key_id

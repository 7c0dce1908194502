"""Permissions end to end (issue 5, item 10), over real sockets and a real Postgres.

1. Roles x staff messages: every staff/admin message is sent by every kind of principal — a
   signed-in account of each role, an API key with some permissions, and a connection that
   never said hello. Exactly the cells of the hand-written :data:`ALLOWED` table succeed (with
   their effect in Postgres); every other cell answers ``forbidden`` (``unauthenticated``
   without hello) and changes nothing in Postgres. :data:`ALLOWED` is written out by hand and
   checked against ``ROLE_PERMISSIONS`` and the handler registrations separately, so a wrong
   permission anywhere fails a test instead of moving the expectation along with it.
2. B uses A's ids: every client message with an id naming something of a player or account is
   sent by player B with A's id, and must be answered exactly as a missing id, with nothing
   changed. :func:`test_every_id_field_is_covered_or_excused` keeps the list complete.

One server (and database) per transport serves the whole module; each cell makes its own
target accounts, so cells do not depend on each other.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from protocol.base import tag_of
from protocol.messages import CLIENT_MESSAGES
from server.app import App
from server.config import load_settings
from server.domains.accounts.handlers import HANDLERS as ACCOUNT_HANDLERS
from server.domains.accounts.rules import ROLE_PERMISSIONS
from server.domains.inventory.handlers import HANDLERS as INVENTORY_HANDLERS
from tests.support.accounts import (
    MANY_ACCOUNTS,
    Account,
    ApiKey,
    Clients,
    create_api_key,
    insert_api_key,
    register,
)
from tests.support.client import Client
from tests.support.pg import TestCluster as PgCluster
from tests.support.transports import TRANSPORTS

ERROR_KEYS = {"t", "rid", "code", "message", "details"}

# --- the hand-written tables ---------------------------------------------------------------

ROLES = ("player", "seller", "support", "moderator", "admin")
ALL_PERMISSIONS = frozenset(
    {
        "session",
        "game.play",
        "account.self",
        "market.sell",
        "account.view",
        "pii.read",
        "account.ban",
        "roles.manage",
        "audit.read",
        "apikeys.manage",
        "items.grant",
    }
)
SPEC_ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "player": frozenset({"session", "game.play", "account.self"}),
    "seller": frozenset({"session", "game.play", "account.self", "market.sell"}),
    "support": frozenset({"session", "account.view", "audit.read"}),
    "moderator": frozenset({"session", "account.view", "account.ban"}),
    "admin": ALL_PERMISSIONS,
}
"""Issue 5's role table, as the test expects it (compared with ROLE_PERMISSIONS below)."""

KEY_PERMISSIONS = ("account.view", "audit.read", "items.grant", "pii.read")
"""The API key principal: a service that looks accounts up (unmasked) and grants items."""

PRINCIPALS = (*ROLES, "api_key", "anonymous")

SPEC_MESSAGE_PERMISSION: dict[str, str] = {
    "admin.grant_role": "roles.manage",
    "admin.revoke_role": "roles.manage",
    "admin.ban": "account.ban",
    "admin.unban": "account.ban",
    "admin.view_account": "account.view",
    "admin.audit_query": "audit.read",
    "admin.create_api_key": "apikeys.manage",
    "admin.list_api_keys": "apikeys.manage",
    "admin.revoke_api_key": "apikeys.manage",
    "admin.grant_item": "items.grant",
}
"""The permission each staff message needs (compared with the handler registrations)."""

STAFF = frozenset({"support", "moderator", "admin", "api_key"})
ALLOWED: dict[str, frozenset[str]] = {
    "admin.grant_role": frozenset({"admin"}),
    "admin.revoke_role": frozenset({"admin"}),
    "admin.ban": frozenset({"moderator", "admin"}),
    "admin.unban": frozenset({"moderator", "admin"}),
    "admin.view_account": STAFF,
    "admin.view_account+reveal_pii": STAFF,
    "admin.audit_query": frozenset({"support", "admin", "api_key"}),
    "admin.create_api_key": frozenset({"admin"}),
    "admin.list_api_keys": frozenset({"admin"}),
    "admin.revoke_api_key": frozenset({"admin"}),
    "admin.grant_item": frozenset({"admin", "api_key"}),
}
"""Matrix 1, by hand: which principals each case succeeds for. Everyone else is refused."""

PII_READERS = frozenset({"admin", "api_key"})
"""Who sees an account unmasked when asking with ``reveal_pii``."""


def tag_of_case(case: str) -> str:
    return case.partition("+")[0]


def held(principal: str) -> frozenset[str]:
    if principal == "api_key":
        return frozenset(KEY_PERMISSIONS)
    if principal == "anonymous":
        return frozenset()
    return SPEC_ROLE_PERMISSIONS[principal]


# --- the tables agree with the code and with each other ------------------------------------


def test_role_table_is_role_permissions() -> None:
    actual = {
        role.value: frozenset(p.value for p in perms) for role, perms in ROLE_PERMISSIONS.items()
    }
    assert actual == SPEC_ROLE_PERMISSIONS


def test_message_table_is_the_registrations() -> None:
    registrations = {tag_of(t): r for t, r in {**ACCOUNT_HANDLERS, **INVENTORY_HANDLERS}.items()}
    actual = {}
    for tag in SPEC_MESSAGE_PERMISSION:
        permission = registrations[tag].permission
        actual[tag] = None if permission is None else permission.value
    assert actual == SPEC_MESSAGE_PERMISSION
    # Every staff message is in the matrix: a new admin.* message fails here until added.
    admin_tags = {tag_of(m) for m in CLIENT_MESSAGES if tag_of(m).startswith("admin.")}
    assert admin_tags == set(SPEC_MESSAGE_PERMISSION)
    assert {tag_of_case(c) for c in ALLOWED} == set(SPEC_MESSAGE_PERMISSION)


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_matrix_agrees_with_role_table(case: str) -> None:
    needed = SPEC_MESSAGE_PERMISSION[tag_of_case(case)]
    derived = frozenset(p for p in PRINCIPALS if needed in held(p))
    assert ALLOWED[case] == derived
    assert frozenset(p for p in PRINCIPALS if "pii.read" in held(p)) == PII_READERS


# --- one server per transport ----------------------------------------------------------------


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@dataclass
class World:
    app: App
    url: str
    db: Any  # asyncpg pool on the server's database, for preparing and checking rows
    lobby: Client  # never says hello: signs accounts up
    actors: dict[str, Account]
    api_key: ApiKey

    def token(self, principal: str) -> str:
        if principal == "api_key":
            return self.api_key.key
        return self.actors[principal].access_token

    def actor_columns(self, principal: str) -> tuple[int | None, int | None]:
        """(actor_account_id, actor_api_key_id) of the principal's audit entries."""
        if principal == "api_key":
            return None, self.api_key.key_id
        return self.actors[principal].account_id, None

    async def account(self, roles: tuple[str, ...] | None = None) -> Account:
        return await register(self.lobby, self.db, roles=roles)


@pytest.fixture(scope="module")
async def world(pg: PgCluster, transport: str) -> AsyncIterator[World]:
    name = await pg.create_database()
    dsn = pg.dsn_for(name)
    settings = load_settings(
        {
            "database_url": dsn,
            "port": 0,
            "log_level": "warning",
            "transport": transport,
            **MANY_ACCOUNTS,
        },
        environ={},
    )
    app = App(settings)
    await app.start()
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    url = f"ws://127.0.0.1:{app.port}/"
    lobby = await Client.open(url)
    try:
        actors = {role: await register(lobby, db, roles=[role]) for role in ROLES}
        async with Clients(url) as clients:
            admin, _ = await clients.signed_in(actors["admin"].access_token)
            api_key = await create_api_key(admin, KEY_PERMISSIONS, name="matrix-service")
        assert sorted(api_key.permissions) == sorted(KEY_PERMISSIONS)
        yield World(app, url, db, lobby, actors, api_key)
    finally:
        await lobby.close()
        await db.close()
        await app.stop()
        await pg.drop_database(name)


# --- what Postgres holds -----------------------------------------------------------------------


async def fingerprint(db: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a staff message or a player intent could change (timestamps of use, which
    hello and token checks touch, left out). Player versions are the durable ones: the
    newest journal row or snapshot (snapshots prune the journal in the background)."""
    queries = {
        "accounts": "SELECT id, email, roles, banned_at, ban_reason, mfa_enabled, password_hash,"
        " display_name FROM accounts ORDER BY id",
        "auth_sessions": "SELECT id, account_id, revoked_at, revoked_reason FROM auth_sessions"
        " ORDER BY id",
        "api_keys": "SELECT id, name, permissions, created_by, revoked_at FROM api_keys"
        " ORDER BY id",
        "audit_log": "SELECT count(*), max(id) FROM audit_log",
        "players": "SELECT p.id, GREATEST("
        " (SELECT max(version) FROM journal j WHERE j.player_id = p.id),"
        " (SELECT version FROM snapshots s WHERE s.player_id = p.id)) FROM players p ORDER BY p.id",
    }
    async with db.acquire() as conn:
        return {k: [tuple(r) for r in await conn.fetch(q)] for k, q in queries.items()}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, "changed in Postgres: " + "; ".join(
        f"{k}: {sorted(set(after[k]) - set(before[k]))} (was "
        f"{sorted(set(before[k]) - set(after[k]))})"
        for k in changed
    )


async def audit_after(db: Any, before: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(action, actor_account_id, actor_api_key_id, target_account_id) written since."""
    last = before["audit_log"][0][1] or 0
    rows = await db.fetch(
        "SELECT action, actor_account_id, actor_api_key_id, target_account_id FROM audit_log"
        " WHERE id > $1 ORDER BY id",
        last,
    )
    return [tuple(r) for r in rows]


async def durable_version(db: Any, player_id: int) -> int:
    version: int = await db.fetchval(
        "SELECT GREATEST((SELECT max(version) FROM journal WHERE player_id = $1),"
        " (SELECT version FROM snapshots WHERE player_id = $1), 0)",
        player_id,
    )
    return version


def assert_error(reply: dict[str, Any], code: str) -> dict[str, Any]:
    assert set(reply) == ERROR_KEYS, reply
    assert reply["t"] == "error", reply
    assert reply["code"] == code, reply
    details: dict[str, Any] = reply["details"]
    return details


def masked(email: str) -> str:
    """What staff without pii.read see: ``u***@e***.com`` (docs: first letters only)."""
    local, _, domain = email.partition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[0]}***@{host[0]}***.{tld}"


# --- matrix 1: the cases -------------------------------------------------------------------------


@dataclass
class Prepared:
    fields: dict[str, Any]
    target: Account | None = None
    key_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Verify = Callable[[World, str, Prepared, dict[str, Any], dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    prepare: Callable[[World], Awaitable[Prepared]]
    verify: Verify
    """Checks a success: the reply, and that Postgres holds its effect (and only then)."""


async def _prep_target(w: World) -> Prepared:
    target = await w.account()
    return Prepared({"account_id": target.account_id}, target)


async def _prep_grant_role(w: World) -> Prepared:
    prep = await _prep_target(w)
    prep.fields["role"] = "seller"
    return prep


async def _prep_revoke_role(w: World) -> Prepared:
    target = await w.account(roles=("player", "seller"))
    return Prepared({"account_id": target.account_id, "role": "seller"}, target)


async def _prep_ban(w: World) -> Prepared:
    prep = await _prep_target(w)
    prep.fields["reason"] = "matrix ban"
    return prep


async def _prep_unban(w: World) -> Prepared:
    prep = await _prep_target(w)
    assert prep.target is not None
    await w.db.execute(
        "UPDATE accounts SET banned_at = now(), ban_reason = 'prepared' WHERE id = $1",
        prep.target.account_id,
    )
    return prep


async def _prep_reveal(w: World) -> Prepared:
    prep = await _prep_target(w)
    prep.fields["reveal_pii"] = True
    return prep


async def _prep_audit_query(w: World) -> Prepared:
    target = await w.account()
    return Prepared({"target_account_id": target.account_id}, target)


async def _prep_create_api_key(w: World) -> Prepared:
    name = f"made-{uuid.uuid4().hex[:8]}"
    return Prepared({"name": name, "permissions": ["audit.read"]})


async def _prep_nothing(w: World) -> Prepared:
    return Prepared({})


async def _prep_revoke_api_key(w: World) -> Prepared:
    key_id = await insert_api_key(w.db, ["audit.read"])
    return Prepared({"key_id": key_id}, key_id=key_id)


async def _prep_grant_item(w: World) -> Prepared:
    target = await w.account()
    return Prepared(
        {
            "player_id": target.player_id,
            "template": "bread",
            "qty": 2,
            "idempotency_key": f"matrix-{uuid.uuid4().hex}",
        },
        target,
        extra={"version": await durable_version(w.db, target.player_id)},
    )


def _view_of(reply: dict[str, Any], target: Account | None) -> Account:
    assert target is not None
    assert reply["t"] == "admin.account", reply
    assert reply["account_id"] == target.account_id
    assert reply["player_id"] == target.player_id
    return target


async def _roles_in_db(w: World, target: Account) -> list[str]:
    roles: list[str] = await w.db.fetchval(
        "SELECT roles FROM accounts WHERE id = $1", target.account_id
    )
    return sorted(roles)


async def _verify_grant_role(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    target = _view_of(reply, prep.target)
    assert reply["roles"] == ["player", "seller"]
    assert await _roles_in_db(w, target) == ["player", "seller"]
    assert await audit_after(w.db, before) == [
        ("role_granted", *w.actor_columns(who), target.account_id)
    ]


async def _verify_revoke_role(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    target = _view_of(reply, prep.target)
    assert reply["roles"] == ["player"]
    assert await _roles_in_db(w, target) == ["player"]
    assert await audit_after(w.db, before) == [
        ("role_revoked", *w.actor_columns(who), target.account_id)
    ]


async def _verify_ban(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    target = _view_of(reply, prep.target)
    assert reply["banned"] is True
    assert reply["ban_reason"] == "matrix ban"
    row = await w.db.fetchrow(
        "SELECT banned_at IS NOT NULL AS banned, ban_reason,"
        " (SELECT count(*) FROM auth_sessions s WHERE s.account_id = a.id"
        "  AND s.revoked_at IS NULL) AS live FROM accounts a WHERE id = $1",
        target.account_id,
    )
    assert (row["banned"], row["ban_reason"], row["live"]) == (True, "matrix ban", 0)
    assert await audit_after(w.db, before) == [("banned", *w.actor_columns(who), target.account_id)]


async def _verify_unban(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    target = _view_of(reply, prep.target)
    assert reply["banned"] is False
    banned = await w.db.fetchval(
        "SELECT banned_at IS NOT NULL FROM accounts WHERE id = $1", target.account_id
    )
    assert banned is False
    assert await audit_after(w.db, before) == [
        ("unbanned", *w.actor_columns(who), target.account_id)
    ]


async def _verify_masked_view(
    w: World, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    target = _view_of(reply, prep.target)
    assert reply["pii_masked"] is True
    assert reply["email"] == masked(target.email) != target.email
    assert reply["last_login_ip"] == "127.0.0.x"
    assert reply["roles"] == ["player"]
    assert await audit_after(w.db, before) == [], "a masked view is not a pii_read"
    assert_unchanged(before, await fingerprint(w.db))


async def _verify_view(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    await _verify_masked_view(w, prep, reply, before)


async def _verify_reveal(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    if who not in PII_READERS:  # asked to reveal without pii.read: masked, nothing audited
        await _verify_masked_view(w, prep, reply, before)
        return
    target = _view_of(reply, prep.target)
    assert reply["pii_masked"] is False
    assert reply["email"] == target.email
    assert reply["last_login_ip"] == "127.0.0.1"
    assert await audit_after(w.db, before) == [
        ("pii_read", *w.actor_columns(who), target.account_id)
    ], "exactly one pii_read entry per unmasked view"


async def _verify_audit_query(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    assert prep.target is not None
    assert reply["t"] == "admin.audit_page", reply
    entries = reply["entries"]
    assert [e["action"] for e in entries] == ["login", "register"]
    assert {e["target_account_id"] for e in entries} == {prep.target.account_id}
    assert_unchanged(before, await fingerprint(w.db))


async def _verify_create_api_key(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    assert reply["t"] == "admin.api_key_created", reply
    assert reply["key"].startswith("ghk_")
    assert reply["permissions"] == ["audit.read"]
    row = await w.db.fetchrow(
        "SELECT name, permissions, created_by, revoked_at FROM api_keys WHERE id = $1",
        reply["key_id"],
    )
    assert row is not None
    assert tuple(row) == (prep.fields["name"], ["audit.read"], w.actor_columns(who)[0], None)
    assert await audit_after(w.db, before) == [("api_key_created", *w.actor_columns(who), None)]


async def _verify_list_api_keys(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    assert reply["t"] == "admin.api_keys", reply
    mine = [k for k in reply["keys"] if k["key_id"] == w.api_key.key_id]
    assert len(mine) == 1
    assert mine[0]["name"] == "matrix-service"
    assert sorted(mine[0]["permissions"]) == sorted(KEY_PERMISSIONS)
    assert "key" not in mine[0] and "key_hash" not in mine[0]
    assert_unchanged(before, await fingerprint(w.db))


async def _verify_revoke_api_key(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    assert reply["t"] == "ok", reply
    revoked = await w.db.fetchval(
        "SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1", prep.key_id
    )
    assert revoked is True
    assert await audit_after(w.db, before) == [("api_key_revoked", *w.actor_columns(who), None)]


async def _verify_grant_item(
    w: World, who: str, prep: Prepared, reply: dict[str, Any], before: dict[str, Any]
) -> None:
    assert prep.target is not None
    assert reply["t"] == "admin.grant_item_reply", reply
    assert reply["player_id"] == prep.target.player_id
    assert reply["replayed"] is False
    assert len(reply["item_ids"]) == 1, reply  # bread stacks: one new stack of 2
    assert reply["version"] > prep.extra["version"]
    # Acknowledged means durable.
    assert await durable_version(w.db, prep.target.player_id) == reply["version"]
    target = prep.target.account_id
    assert await audit_after(w.db, before) == [("items_granted", *w.actor_columns(who), target)]


CASES: dict[str, Case] = {
    "admin.grant_role": Case(_prep_grant_role, _verify_grant_role),
    "admin.revoke_role": Case(_prep_revoke_role, _verify_revoke_role),
    "admin.ban": Case(_prep_ban, _verify_ban),
    "admin.unban": Case(_prep_unban, _verify_unban),
    "admin.view_account": Case(_prep_target, _verify_view),
    "admin.view_account+reveal_pii": Case(_prep_reveal, _verify_reveal),
    "admin.audit_query": Case(_prep_audit_query, _verify_audit_query),
    "admin.create_api_key": Case(_prep_create_api_key, _verify_create_api_key),
    "admin.list_api_keys": Case(_prep_nothing, _verify_list_api_keys),
    "admin.revoke_api_key": Case(_prep_revoke_api_key, _verify_revoke_api_key),
    "admin.grant_item": Case(_prep_grant_item, _verify_grant_item),
}

CELLS = [(case, who) for case in CASES for who in PRINCIPALS]


def test_cases_are_the_matrix_rows() -> None:
    assert set(CASES) == set(ALLOWED)


@pytest.mark.parametrize(("case", "who"), CELLS, ids=[f"{c}-{w}" for c, w in CELLS])
async def test_staff_message_matrix(world: World, case: str, who: str) -> None:
    spec = CASES[case]
    prep = await spec.prepare(world)
    async with Clients(world.url) as clients:
        if who == "anonymous":
            client = await clients.anonymous()
        else:
            client, _ = await clients.signed_in(world.token(who))
        before = await fingerprint(world.db)
        reply = await client.request(tag_of_case(case), **prep.fields)
        if who in ALLOWED[case]:
            await spec.verify(world, who, prep, reply, before)
            return
        after = await fingerprint(world.db)
    assert_error(reply, "unauthenticated" if who == "anonymous" else "forbidden")
    assert_unchanged(before, after)


# --- check_may_manage: nobody manages an account that outranks them ----------------------------

MANAGE_CASES = [
    # (actor, message, the target's roles, allowed)
    ("moderator", "admin.ban", ("admin",), False),
    ("moderator", "admin.unban", ("admin",), False),
    ("moderator", "admin.ban", ("support",), False),  # support holds audit.read
    ("moderator", "admin.ban", ("moderator",), True),
    ("moderator", "admin.ban", ("player", "seller"), True),  # selling is no power over others
    ("admin", "admin.ban", ("admin",), True),
    ("admin", "admin.unban", ("moderator",), True),
]


@pytest.mark.parametrize(
    ("who", "tag", "target_roles", "allowed"),
    MANAGE_CASES,
    ids=[f"{w}-{t}-{'+'.join(r)}" for w, t, r, _ in MANAGE_CASES],
)
async def test_may_not_manage_who_outranks_you(
    world: World, who: str, tag: str, target_roles: tuple[str, ...], allowed: bool
) -> None:
    target = await world.account(roles=target_roles)
    fields: dict[str, Any] = {"account_id": target.account_id}
    if tag == "admin.ban":
        fields["reason"] = "outranked?"
    else:
        await world.db.execute(
            "UPDATE accounts SET banned_at = now(), ban_reason = 'prepared' WHERE id = $1",
            target.account_id,
        )
    async with Clients(world.url) as clients:
        client, _ = await clients.signed_in(world.token(who))
        before = await fingerprint(world.db)
        reply = await client.request(tag, **fields)
        after = await fingerprint(world.db)
    if not allowed:
        assert_error(reply, "forbidden")
        assert_unchanged(before, after)
        return
    assert reply["t"] == "admin.account", reply
    assert reply["banned"] is (tag == "admin.ban")
    action = "banned" if tag == "admin.ban" else "unbanned"
    assert await audit_after(world.db, before) == [
        (action, *world.actor_columns(who), target.account_id)
    ]


# --- matrix 2: B sends A's ids -------------------------------------------------------------

# Starter kit (sim/data/templates.toml): backpack cells 0..8 in this order; the belt's cell 0
# holds a stack of 3 healing potions.
KIT = (
    "cloth_cap",
    "iron_helm",
    "leather_vest",
    "copper_ring",
    "copper_ring2",
    "short_sword",
    "buckler",
    "bread",
    "training_manual",
)
MISSING = 2**53
"""An id nothing has (the largest the protocol accepts; ids are allocated from 1 upwards)."""


def kit_item(welcome: dict[str, Any], name: str) -> int:
    compartments = welcome["state"]["compartments"]
    item_id = (
        compartments["belt"][0] if name == "potion" else compartments["backpack"][KIT.index(name)]
    )
    assert isinstance(item_id, int), (name, compartments)
    return item_id


@dataclass(frozen=True)
class IdCase:
    tag: str
    field: str
    """The id field B fills with A's id."""
    theirs: str
    """What of A's it names: a kit item, ``potion`` (the belt stack) or ``session``."""
    fields: Callable[[int, dict[str, Any]], dict[str, Any]]
    """The request, given the id and B's welcome (the other fields valid for B)."""

    @property
    def id(self) -> str:
        return f"{self.tag}.{self.field}"


ID_CASES = [
    IdCase(
        "inventory.equip_item", "item_id", "cloth_cap", lambda x, b: {"item_id": x, "slot": "head"}
    ),
    IdCase(
        "inventory.move_item",
        "item_id",
        "iron_helm",
        lambda x, b: {"item_id": x, "compartment": "backpack", "index": 20},
    ),
    IdCase(
        "inventory.split_stack",
        "item_id",
        "bread",
        lambda x, b: {"item_id": x, "qty": 1, "compartment": "backpack", "index": 20},
    ),
    IdCase(
        "inventory.merge_stacks",
        "item_id",
        "potion",
        lambda x, b: {"item_id": x, "into_item_id": kit_item(b, "potion")},
    ),
    IdCase(
        "inventory.merge_stacks",
        "into_item_id",
        "potion",
        lambda x, b: {"item_id": kit_item(b, "potion"), "into_item_id": x},
    ),
    IdCase("inventory.destroy_item", "item_id", "training_manual", lambda x, b: {"item_id": x}),
    IdCase("inventory.use_item", "item_id", "potion", lambda x, b: {"item_id": x}),
    IdCase("auth.revoke_session", "session_id", "session", lambda x, b: {"session_id": x}),
]

_ACCOUNT_STAFF = (
    "staff act on any account by design; who may is matrix 1 "
    "(test_staff_message_matrix), and a missing account is not_found for them"
)
ID_FIELD_EXCLUSIONS: dict[tuple[str, str], str] = {
    ("auth.device_login", "device_id"): (
        "a secret the client generated for itself: a credential presented before the "
        "session (public message), not a reference to something of another account"
    ),
    ("admin.grant_role", "account_id"): _ACCOUNT_STAFF,
    ("admin.revoke_role", "account_id"): _ACCOUNT_STAFF,
    ("admin.ban", "account_id"): _ACCOUNT_STAFF,
    ("admin.unban", "account_id"): _ACCOUNT_STAFF,
    ("admin.view_account", "account_id"): _ACCOUNT_STAFF,
    ("admin.audit_query", "actor_account_id"): "audit.read holders filter the whole audit log",
    ("admin.audit_query", "target_account_id"): "audit.read holders filter the whole audit log",
    ("admin.audit_query", "before_id"): "a page cursor over the audit log, owned by nobody",
    ("admin.revoke_api_key", "key_id"): (
        "API keys are the service's, not an account's: any apikeys.manage holder manages all"
    ),
    ("admin.grant_item", "player_id"): "items.grant gives to any player by design",
}
"""Id fields that legitimately name another account's things, and why."""


def id_fields() -> set[tuple[str, str]]:
    """Every (message tag, field) of a client message whose field looks like an id."""
    found = set()
    for message in CLIENT_MESSAGES:
        for name in message.__struct_fields__:
            if name.endswith("_id") or name in {"item_id", "into_item_id", "session_id"}:
                found.add((tag_of(message), name))
    return found


def test_every_id_field_is_covered_or_excused() -> None:
    covered = {(c.tag, c.field) for c in ID_CASES}
    excused = set(ID_FIELD_EXCLUSIONS)
    found = id_fields()
    assert not covered & excused, "covered and excused at once"
    assert found - covered - excused == set(), (
        "a client message has an id field nobody decided about: add an IdCase (B must not "
        "reach A's thing through it) or an ID_FIELD_EXCLUSIONS entry with the reason"
    )
    assert (covered | excused) - found == set(), "listed fields that no message has any more"
    assert len({c.id for c in ID_CASES}) == len(ID_CASES)


def shape(reply: dict[str, Any], id_value: int) -> dict[str, Any]:
    """An error reply with the id it names replaced by ``<id>``: what must not tell whose it is."""
    assert set(reply) == ERROR_KEYS, reply
    text = str(id_value)
    return {
        "t": reply["t"],
        "code": reply["code"],
        "message": reply["message"].replace(text, "<id>"),
        "details": {k: "<id>" if v == id_value else v for k, v in reply["details"].items()},
    }


@pytest.mark.parametrize("case", ID_CASES, ids=[c.id for c in ID_CASES])
async def test_b_cannot_use_a_id(world: World, case: IdCase) -> None:
    a, b = await world.account(), await world.account()
    async with Clients(world.url) as clients:
        a_client, a_welcome = await clients.signed_in(a.access_token)
        b_client, b_welcome = await clients.signed_in(b.access_token)
        theirs = a.session_id if case.theirs == "session" else kit_item(a_welcome, case.theirs)
        before = await fingerprint(world.db)
        with_theirs = await b_client.request(case.tag, **case.fields(theirs, b_welcome))
        with_missing = await b_client.request(case.tag, **case.fields(MISSING, b_welcome))
        after = await fingerprint(world.db)

        assert_error(with_missing, "not_found")
        assert shape(with_theirs, theirs) == shape(with_missing, MISSING), (
            f"A's id is answered differently from a missing one: {with_theirs} vs {with_missing}"
        )
        assert_unchanged(before, after)
        # A is untouched: its live socket still works, a new hello (same login session)
        # sees the same state, and the session is live in Postgres.
        assert (await a_client.request("ping"))["t"] == "pong"
        stats = await a_client.request("player.get_stats")
        assert stats["t"] == "player.stats", stats
        assert stats["version"] == a_welcome["version"]
        _, again = await clients.signed_in(a.access_token)
        assert again["state"] == a_welcome["state"]
        revoked = await world.db.fetchval(
            "SELECT revoked_at FROM auth_sessions WHERE id = $1", a.session_id
        )
        assert revoked is None

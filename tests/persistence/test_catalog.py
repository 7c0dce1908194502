"""The item catalog in Postgres: versions, activation, what a server runs, the migration path
for players when the catalog changes, and ``gearhall templates load/check``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from persistence.catalog import active_catalog, active_or_store, store_catalog
from persistence.migrate import migrate
from protocol.model import LOST_AND_FOUND, AnyEffect, ItemsMoved, PlayerState
from server.app import App
from server.config import Settings
from sim.state import encode_state
from sim.templates import DEFAULT_TEMPLATES, ItemTemplate, TemplateError, parse_templates
from tests.support.client import MSGPACK, Client

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = DEFAULT_TEMPLATES.read_text(encoding="utf-8")
_effect_decoder = msgspec.msgpack.Decoder(AnyEffect)

BAD_TEMPLATE = """
[[template]]
id = "anvil"
name = "Anvil"
category = "material"
weight = "heavy"
"""


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"the shipped catalog no longer contains {old!r}: update this test"
    return text.replace(old, new, 1)


def changed_catalog() -> str:
    """The shipped catalog with ``leather_vest`` gone and ``cloth_cap`` moved to the neck."""
    text = edit(
        SHIPPED,
        '[[template]]\nid = "leather_vest"\nname = "Leather Vest"\ncategory = "armor"\n'
        'slots = ["chest"]\nstats = { armor = 3 }\nweight = 2500\n',
        "",
    )
    text = edit(text, '  { template = "leather_vest" },\n', "")
    return edit(
        text,
        'id = "cloth_cap"\nname = "Cloth Cap"\ncategory = "armor"\nslots = ["head"]',
        'id = "cloth_cap"\nname = "Cloth Cap"\ncategory = "armor"\nslots = ["neck"]',
    )


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    await migrate(connection)
    yield connection
    await connection.close()


async def versions(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT id, digest FROM catalog_versions ORDER BY id")
    return [(r["id"], r["digest"]) for r in rows]


async def active_id(conn: asyncpg.Connection) -> int | None:
    value = await conn.fetchval("SELECT catalog_id FROM active_catalog")
    return None if value is None else int(value)


def state_bytes(welcome: dict[str, Any]) -> bytes:
    return encode_state(msgspec.convert(welcome["state"], PlayerState))


async def hello(app: App, name: str) -> dict[str, Any]:
    client = await Client.open(f"ws://127.0.0.1:{app.port}/", MSGPACK)
    try:
        return await client.hello(name)
    finally:
        await client.close()


# --- the repository ------------------------------------------------------------------------


async def test_store_records_every_template_and_activates(conn: asyncpg.Connection) -> None:
    assert await active_catalog(conn) is None

    stored = await store_catalog(conn, SHIPPED, "shipped.toml", "test")

    expected = parse_templates(SHIPPED)
    assert stored.created
    assert stored.catalog.digest == expected.digest
    assert await versions(conn) == [(stored.catalog_id, expected.digest)]
    assert await active_id(conn) == stored.catalog_id
    row = await conn.fetchrow("SELECT toml, origin, loaded_by FROM catalog_versions")
    assert (row["toml"], row["origin"], row["loaded_by"]) == (SHIPPED, "shipped.toml", "test")
    rows = await conn.fetch(
        "SELECT template_id, data FROM item_templates WHERE catalog_id = $1", stored.catalog_id
    )
    assert {r["template_id"]: msgspec.json.decode(r["data"], type=ItemTemplate) for r in rows} == (
        expected.templates
    )
    active = await active_catalog(conn)
    assert active is not None
    assert active.digest == expected.digest
    assert active.templates == expected.templates
    assert active.compartments == expected.compartments
    assert active.starter_kit == expected.starter_kit


async def test_loading_a_stored_text_again_only_reactivates_it(conn: asyncpg.Connection) -> None:
    first = await store_catalog(conn, SHIPPED, "a.toml", "test")
    other = await store_catalog(conn, changed_catalog(), "b.toml", "test")
    assert other.created
    assert other.catalog_id != first.catalog_id
    assert await active_id(conn) == other.catalog_id

    again = await store_catalog(conn, SHIPPED, "elsewhere/a.toml", "test")

    assert (again.catalog_id, again.created) == (first.catalog_id, False)
    assert await active_id(conn) == first.catalog_id
    assert [v[0] for v in await versions(conn)] == [first.catalog_id, other.catalog_id]
    count = await conn.fetchval("SELECT count(*) FROM item_templates")
    assert count == len(first.catalog.templates) + len(other.catalog.templates)
    active = await active_catalog(conn)
    assert active is not None and active.digest == first.catalog.digest


async def test_an_invalid_catalog_writes_nothing(conn: asyncpg.Connection) -> None:
    before = await store_catalog(conn, SHIPPED, "a.toml", "test")

    with pytest.raises(TemplateError) as caught:
        await store_catalog(conn, SHIPPED + BAD_TEMPLATE, "designer/new.toml", "test")

    assert str(caught.value).startswith("designer/new.toml: template 'anvil': field `weight`")
    assert await versions(conn) == [(before.catalog_id, before.catalog.digest)]
    assert await active_id(conn) == before.catalog_id
    assert await conn.fetchval("SELECT count(*) FROM item_templates") == len(
        before.catalog.templates
    )


async def test_active_or_store_keeps_an_active_catalog(conn: asyncpg.Connection) -> None:
    loaded = await store_catalog(conn, changed_catalog(), "b.toml", "operator")

    found = await active_or_store(conn, SHIPPED, "shipped.toml", "server")

    assert (found.catalog_id, found.created) == (loaded.catalog_id, False)
    assert found.catalog.digest == loaded.catalog.digest
    assert len(await versions(conn)) == 1


async def test_two_first_starts_at_once_agree_on_one_version(dsn: str) -> None:
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await migrate(a)
        results = await asyncio.gather(
            active_or_store(a, SHIPPED, "shipped.toml", "node a"),
            active_or_store(b, changed_catalog(), "other.toml", "node b"),
        )
        assert sorted(r.created for r in results) == [False, True]
        assert results[0].catalog_id == results[1].catalog_id
        assert results[0].catalog.digest == results[1].catalog.digest
        assert len(await versions(a)) == 1
    finally:
        await a.close()
        await b.close()


async def test_stored_text_edited_in_the_database_is_refused(conn: asyncpg.Connection) -> None:
    stored = await store_catalog(conn, SHIPPED, "a.toml", "test")
    await conn.execute("UPDATE catalog_versions SET toml = toml || E'\\n# edited by hand\\n'")
    with pytest.raises(TemplateError, match=rf"catalog #{stored.catalog_id} \(a.toml\).*digest"):
        await active_catalog(conn)


# --- what a server runs --------------------------------------------------------------------


async def test_first_start_stores_the_shipped_catalog(
    make_settings: Callable[..., Settings], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(make_settings())
    with caplog.at_level(logging.INFO, logger="gearhall"):
        await app.start()
    try:
        shipped = parse_templates(SHIPPED)
        assert app.catalog.digest == shipped.digest
        conn = await asyncpg.connect(dsn)
        try:
            assert [v[1] for v in await versions(conn)] == [shipped.digest]
            assert await active_id(conn) == (await versions(conn))[0][0]
        finally:
            await conn.close()
        assert f"{shipped.digest[:12]} ({len(shipped.templates)} templates" in caplog.text
    finally:
        await app.stop()


async def test_templates_setting_stores_and_runs_that_file(
    make_settings: Callable[..., Settings], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await store_catalog(conn, SHIPPED, "shipped.toml", "test")
    path = tmp_path / "designer.toml"
    path.write_text(changed_catalog(), encoding="utf-8")

    app = App(make_settings(templates=str(path)))
    await app.start()
    try:
        assert app.catalog.digest == parse_templates(changed_catalog()).digest
        assert "leather_vest" not in app.catalog.templates
        active = await active_catalog(conn)
        assert active is not None and active.digest == app.catalog.digest
        origin = await conn.fetchval(
            "SELECT origin FROM catalog_versions v JOIN active_catalog a ON a.catalog_id = v.id"
        )
        assert origin == str(path)
    finally:
        await app.stop()


async def test_an_invalid_templates_file_stops_the_start(
    make_settings: Callable[..., Settings], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(SHIPPED + BAD_TEMPLATE, encoding="utf-8")
    app = App(make_settings(templates=str(path)))
    with pytest.raises(TemplateError, match=r"broken\.toml: template 'anvil': field `weight`"):
        await app.start()
    assert await versions(conn) == []


async def test_a_catalog_given_to_the_app_is_used_as_is(
    make_settings: Callable[..., Settings], conn: asyncpg.Connection
) -> None:
    given = parse_templates(changed_catalog(), "given")
    app = App(make_settings(), catalog=given)
    await app.start()
    try:
        assert app.catalog is given
        welcome = await hello(app, "tester")
        templates = {item["template"] for item in welcome["state"]["items"].values()}
        assert "leather_vest" not in templates  # the kit came from the given catalog
        assert await versions(conn) == []
    finally:
        await app.stop()


async def test_a_changed_catalog_moves_items_to_lost_and_found_and_replays(
    make_settings: Callable[..., Settings], conn: asyncpg.Connection
) -> None:
    first = App(make_settings())
    await first.start()
    try:
        client = await Client.open(f"ws://127.0.0.1:{first.port}/", MSGPACK)
        welcome = await client.hello("keeper")
        backpack = welcome["state"]["compartments"]["backpack"]
        items = welcome["state"]["items"]
        cap, vest = backpack[0], backpack[2]
        assert (items[cap]["template"], items[vest]["template"]) == ("cloth_cap", "leather_vest")
        reply = await client.request("inventory.equip_item", item_id=cap, slot="head")
        assert reply["t"] == "effects", reply
        await client.close()
    finally:
        await first.stop()
    player_id, version = welcome["player_id"], reply["version"]

    changed = await store_catalog(conn, changed_catalog(), "designer.toml", "test")

    second = App(make_settings())
    await second.start()
    try:
        assert second.catalog.digest == changed.catalog.digest
        after = await hello(second, "keeper")
    finally:
        await second.stop()
    state = after["state"]
    assert after["version"] == version + 1  # one ItemsMoved, lost_and_found had room
    assert "head" not in state["equipment"]
    assert state["compartments"]["backpack"][2] is None
    assert sorted(c for c in state["compartments"][LOST_AND_FOUND] if c is not None) == sorted(
        [cap, vest]
    )
    assert state["items"] == items  # nothing deleted or changed, only moved
    effect = _effect_decoder.decode(
        await conn.fetchval(
            "SELECT effect FROM journal WHERE player_id = $1 AND version = $2",
            player_id,
            version + 1,
        )
    )
    assert isinstance(effect, ItemsMoved)
    assert effect.reason == "lost_and_found"
    assert {(m.item_id, m.src) for m in effect.moves} == {
        (cap, ("equipment", "head")),
        (vest, ("backpack", 2)),
    }
    assert {m.dst[0] for m in effect.moves} == {LOST_AND_FOUND}

    third = App(make_settings())
    await third.start()
    try:
        again = await hello(third, "keeper")
    finally:
        await third.stop()
    assert again["version"] == after["version"]
    assert state_bytes(again) == state_bytes(after)


# --- the command line ----------------------------------------------------------------------


async def gearhall(*args: str, database_url: str) -> tuple[int, str, str]:
    env = {**os.environ, "GEARHALL_DATABASE_URL": database_url, "GEARHALL_LOG_LEVEL": "warning"}
    env.pop("GEARHALL_CONFIG", None)
    env.pop("GEARHALL_TEMPLATES", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_load_stores_activates_and_reports(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(changed_catalog(), encoding="utf-8")
    expected = parse_templates(changed_catalog())

    code, out, err = await gearhall("templates", "load", str(path), database_url=dsn)
    assert code == 0, err
    assert f"catalog #1 {expected.digest[:12]}: {len(expected.templates)} templates" in out
    assert "(new version)" in out
    active = await active_catalog(conn)
    assert active is not None and active.digest == expected.digest

    code, out, err = await gearhall("templates", "load", str(path), database_url=dsn)
    assert code == 0, err
    assert f"catalog #1 {expected.digest[:12]}" in out
    assert "already stored" in out
    assert len(await versions(conn)) == 1


async def test_cli_load_migrates_a_fresh_database(dsn: str) -> None:
    code, out, err = await gearhall("templates", "load", str(DEFAULT_TEMPLATES), database_url=dsn)
    assert code == 0, err
    assert "(new version)" in out
    check = await asyncpg.connect(dsn)
    try:
        active = await active_catalog(check)
        assert active is not None and active.digest == parse_templates(SHIPPED).digest
    finally:
        await check.close()


async def test_cli_load_refuses_a_bad_file_and_writes_nothing(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(SHIPPED + BAD_TEMPLATE, encoding="utf-8")

    code, out, err = await gearhall("templates", "load", str(path), database_url=dsn)

    assert code == 1
    assert out == ""
    assert f"{path}: template 'anvil': field `weight`" in err
    assert await versions(conn) == []

    code, _, err = await gearhall(
        "templates", "load", str(tmp_path / "missing.toml"), database_url=dsn
    )
    assert code == 1
    assert f"{tmp_path / 'missing.toml'}: cannot read" in err


async def test_cli_check_needs_no_database(tmp_path: Path) -> None:
    nowhere = "postgresql://nobody@127.0.0.1:1/none"  # nothing listens on port 1
    good = tmp_path / "good.toml"
    good.write_text(SHIPPED, encoding="utf-8")
    code, out, err = await gearhall("templates", "check", str(good), database_url=nowhere)
    assert code == 0, err
    assert f"{good}: {len(parse_templates(SHIPPED).templates)} templates OK" in out

    bad = tmp_path / "bad.toml"
    bad.write_text(SHIPPED + BAD_TEMPLATE, encoding="utf-8")
    code, out, err = await gearhall("templates", "check", str(bad), database_url=nowhere)
    assert code == 1
    assert f"{bad}: template 'anvil': field `weight`" in err

    code, _, err = await gearhall("templates", "load", str(good), database_url=nowhere)
    assert code == 1
    assert "database unavailable" in err

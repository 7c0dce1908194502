"""``wsprobe run FILE`` as a user runs it: the real CLI in a subprocess, against a real server
(the ``url`` fixture: in this test's event loop, dev auth, an empty database).

Players get the starter kit at their first hello; each test uses its own player names.
Whether a step ran or not is checked on the server, with a ProbeClient of our own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.proc import free_port
from tests.support.wsprobe import Result, run_wsprobe
from tools.wsprobe.client import Message, ProbeClient


def script(tmp_path: Path, text: str, name: str = "script.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


async def run(path: Path, url: str, *args: str) -> Result:
    return await run_wsprobe("run", str(path), "--url", url, *args)


async def welcome(url: str, token: str) -> Message:
    async with await ProbeClient.connect(url) as client:
        return await client.hello(token)


def templates_at(welcome: Message, where: str) -> dict[str, str]:
    """Slot (or compartment cell) -> template, from a welcome's state."""
    state = welcome["state"]
    assert isinstance(state, dict)
    items = state["items"]
    if where == "equipment":
        return {slot: items[str(i)]["template"] for slot, i in state["equipment"].items()}
    cells = state["compartments"][where]
    return {str(n): items[str(i)]["template"] for n, i in enumerate(cells) if i is not None}


TOUR = """\
[sessions.p]
token = "dev:{name}"

[[step]]
send = "equip"
body = {{ item_id = "@cloth_cap", slot = "head" }}
expect = {{ t = "effects", effects = [{{ e = "items_moved", reason = "equip" }}] }}

[[step]]
send = "use"
body = {{ item_id = "@bread" }}
expect = {{ t = "effects", effects = [{{ e = "stack_changed", qty = 4 }}, "..."] }}

[[step]]
send = "use"
body = {{ item_id = "@bread" }}
expect_error = "cooldown_active"

[[step]]
send = "stats"
expect = {{ t = "player.stats", encumbrance = "normal", stats = {{ armor = 1 }} }}
"""


async def test_a_passing_script_prints_a_line_per_step_and_exits_0(
    url: str, tmp_path: Path
) -> None:
    result = await run(script(tmp_path, TOUR.format(name="passer")), url)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].startswith("   -  p  connected: hello -> session.welcome player ")
    assert [line.split()[0] for line in lines[1:5]] == ["1", "2", "3", "4"]
    assert all(line.endswith(" ok") for line in lines[1:5]), result
    assert "equip item_id=" in lines[1] and "slot=head -> effects v17 [items_moved]" in lines[1]
    assert "-> error cooldown_active" in lines[3]
    assert lines[5].startswith("ok: 4 steps, 1 session, ")
    assert result.err == ""
    assert templates_at(await welcome(url, "dev:passer"), "equipment") == {"head": "cloth_cap"}


async def test_quiet_prints_nothing_and_json_a_line_per_step(url: str, tmp_path: Path) -> None:
    quiet = await run(script(tmp_path, TOUR.format(name="quiet")), url, "--quiet")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")

    loud = await run(script(tmp_path, TOUR.format(name="jason")), url, "--json")
    assert loud.code == 0, loud
    records = [json.loads(line) for line in loud.out.splitlines()]
    assert records[0]["session"] == "p" and records[0]["connected"] is True
    assert records[0]["welcome"].startswith("session.welcome player ")
    steps = records[1:]
    assert [(r["step"], r["line"], r["action"], r["ok"]) for r in steps] == [
        (1, 4, "send", True),
        (2, 9, "send", True),
        (3, 14, "send", True),
        (4, 19, "send", True),
    ]
    assert steps[0]["target"] == "inventory.equip_item"
    sent = steps[0]["sent"]
    assert sent == {"t": "inventory.equip_item", "item_id": sent["item_id"], "slot": "head"}
    assert isinstance(sent["item_id"], int)  # the @ref, resolved
    assert steps[0]["received"]["effects"][0]["e"] == "items_moved"
    assert steps[2]["received"]["code"] == "cooldown_active"


FAILING = """\
[sessions.p]
token = "dev:failer"

[[step]]
send = "equip"
body = { item_id = "@cloth_cap", slot = "head" }
expect = { t = "effects", effects = [{ e = "item_created" }] }

[[step]]
send = "equip"
body = { item_id = "@leather_vest", slot = "chest" }
"""


async def test_an_unmet_expectation_exits_1_with_a_diff_and_runs_nothing_after(
    url: str, tmp_path: Path
) -> None:
    result = await run(script(tmp_path, FAILING), url)
    assert result.code == 1, result
    err = result.err.splitlines()
    assert err[0] == (
        "wsprobe run: step 1 (line 4) FAILED (p: send inventory.equip_item): "
        '$.effects[0].e: expected "item_created", got "items_moved"'
    )
    assert "  --- expected" in err and "  +++ got" in err
    assert '  -      "e": "item_created"' in err
    assert '  +      "e": "items_moved"' in err
    assert any(line.startswith('  received: {"t": "effects"') for line in err)
    assert "FAILED" in result.out.splitlines()[-1]
    assert not any(line.lstrip().startswith("2 ") for line in result.out.splitlines())
    # Step 1 ran (the cap is on), step 2 did not (the vest is still in the backpack).
    state = await welcome(url, "dev:failer")
    assert templates_at(state, "equipment") == {"head": "cloth_cap"}
    assert "leather_vest" in templates_at(state, "backpack").values()


async def test_an_unexpected_error_reply_fails_the_step(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.p]
token = "dev:erring"

[[step]]
send = "equip"
body = { item_id = "@iron_helm", slot = "head" }
"""
    result = await run(script(tmp_path, text), url)
    assert result.code == 1, result
    assert "step 1 (line 4) FAILED" in result.err
    assert "got error requirements_not_met" in result.err
    assert 'expect_error = "requirements_not_met"' in result.err


async def test_expect_error(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.p]
token = "dev:{name}"

[[step]]
send = "equip"
body = {{ item_id = "@iron_helm", slot = "head" }}
expect_error = "{code}"
"""
    passed = await run(
        script(tmp_path, text.format(name="helm1", code="requirements_not_met")), url
    )
    assert passed.code == 0, passed
    failed = await run(script(tmp_path, text.format(name="helm2", code="conflict")), url)
    assert failed.code == 1, failed
    assert '$.code: expected "conflict", got "requirements_not_met"' in failed.err


async def test_captures_and_typed_variables(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.p]
token = "dev:splitter"

[[step]]
send = "split"
body = { item_id = "@bread", qty = 2, compartment = "backpack", index = 12 }
capture = { new = "effects[1].item.id", v = "version", kinds = "effects[].e" }

[[step]]
send = "merge"
body = { item_id = "${new}", into_item_id = "@bread" }
expect = { effects = [
    { e = "stack_changed", qty = 5 },
    { e = "item_destroyed", item_id = "${new}", src = ["backpack", 12] },
] }

[[step]]
send = "stats"
expect = { version = "${v}", t = "player.stats" }
note = "not this version: the merge came after"
"""
    result = await run(script(tmp_path, text), url)
    assert result.code == 1, result
    # The capture is an int: it matched the item id in step 2, and a version in step 3.
    lines = result.out.splitlines()
    assert re.search(r"  new=\d+  v=18  kinds=\[", lines[1]), result
    assert lines[2].endswith(" ok"), result
    assert "$.version: expected 18, got 20" in result.err
    assert "# not this version" in lines[3]


async def test_a_capture_that_finds_nothing_fails(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.p]
token = "dev:nocapture"

[[step]]
send = "ping"
capture = { v = "version" }
"""
    result = await run(script(tmp_path, text), url)
    assert result.code == 1, result
    assert "capture v = 'version' found nothing" in result.err


async def test_var_overrides_vars_with_their_type(url: str, tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """\
[vars]
who = "nobody"
version = 0

[sessions.p]
token = "dev:${who}"

[[step]]
hello = true
expect = { state = { name = "overridden" }, version = "${version}" }
""",
    )
    default = await run(path, url)
    assert default.code == 1, default
    assert '$.state.name: expected "overridden", got "nobody"' in default.err
    given = await run(path, url, "--var", "who=overridden", "--var", "version=16")
    assert given.code == 0, given
    wrong = await run(path, url, "--var", "version=sixteen")
    assert wrong.code == 2, wrong
    assert "--var version=sixteen" in wrong.err


async def test_expect_push_and_wait_push_across_sessions(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.watcher]
token = "dev:pushy"
[sessions.actor]
token = "dev:pushy"
[sessions.gm]
token = "dev-admin:pushgm"

[[step]]
session = "watcher"
hello = true
capture = { me = "player_id" }

[[step]]
session = "actor"
send = "equip"
body = { item_id = "@cloth_cap", slot = "head" }

[[step]]
session = "actor"
send = "use"
body = { item_id = "@bread" }

[[step]]
session = "gm"
send = "grant"
capture = { ore = "item_ids[0]" }
[step.body]  # a table of its own works as well as an inline one
player_id = "${me}"
template = "iron_ore"
qty = 2
compartment = "bank"
idempotency_key = "push-test-1"

# Passes over the two deltas of the actor's requests (they stay queued).
[[step]]
session = "watcher"
wait_push = "player.delta"
expect = { effects = [{ e = "item_created", item = { id = "${ore}" } }, "..."] }

# The oldest push still queued: the equip.
[[step]]
session = "watcher"
expect_push = "player.delta"
expect = { effects = [{ e = "items_moved", reason = "equip" }] }

[[step]]
session = "watcher"
expect_push = "player.delta"
expect = { effects = [{ e = "stack_changed", qty = 4 }, "..."] }

# The actor's own bread cooldown ends: its cooldown_ready push.
[[step]]
session = "actor"
wait_push = "player.cooldown_ready"
expect = { key = "item:bread" }

# The watcher's mirror applied every delta: @iron_ore is the granted stack.
[[step]]
session = "watcher"
send = "move"
body = { item_id = "@iron_ore", compartment = "backpack", index = 20 }
expect = { effects = [{ e = "items_moved", moves = [["${ore}", ["bank", 0], ["backpack", 20]]] }] }
"""
    result = await run(script(tmp_path, text), url)
    assert result.code == 0, result
    assert "ok: 9 steps, 3 sessions" in result.out


async def test_expect_push_takes_the_next_push_whatever_it_is(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.watcher]
token = "dev:nextpush"
[sessions.actor]
token = "dev:nextpush"

[[step]]
session = "watcher"
hello = true

[[step]]
session = "actor"
send = "use"
body = { item_id = "@bread" }

[[step]]
session = "watcher"
expect_push = "player.cooldown_ready"
"""
    result = await run(script(tmp_path, text), url)
    assert result.code == 1, result
    assert '$.t: expected "player.cooldown_ready", got "player.delta"' in result.err


async def test_wait_push_times_out(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.p]
token = "dev:waiter"

[[step]]
send = "use"
body = { item_id = "@bread" }

[[step]]
wait_push = "player.delta"
timeout = 0.2

[[step]]
send = "equip"
body = { item_id = "@cloth_cap", slot = "head" }
"""
    result = await run(script(tmp_path, text), url)
    assert result.code == 1, result
    assert (
        "step 2 (line 8) FAILED (p: wait_push player.delta): no player.delta push within 0.2 s"
        in (result.err)
    )
    assert templates_at(await welcome(url, "dev:waiter"), "equipment") == {}


async def test_wait_push_times_out_showing_the_push_that_did_not_match(
    url: str, tmp_path: Path
) -> None:
    text = """\
[sessions.p]
token = "dev:nearmiss"

[[step]]
send = "use"
body = { item_id = "@bread" }

[[step]]
wait_push = "player.cooldown_ready"
expect = { key = "healing_potion" }
"""
    result = await run(script(tmp_path, text), url, "--timeout", "4.5")
    assert result.code == 1, result
    assert "no player.cooldown_ready push matching the expectation within 4.5 s" in result.err
    assert '  $.key: expected "healing_potion", got "item:bread"' in result.err
    assert "pushes still queued on p: player.cooldown_ready" in result.err


# (script, words stderr must contain)
INVALID = [
    (
        '[sessions.p]\ntoken = "dev:x"\n[[step]]\nsend = "ping"\nexpekt = {}\n',
        ["step 1 (line 3)", "'expekt'"],
    ),
    ('[sessions.p]\ntoken = "dev:x"\n[[step]\n', ["not valid TOML", "line 3"]),
    (
        '[sessions.p]\ntoken = "dev:x"\n[[step]]\nsession = "q"\nsend = "ping"\n',
        ["unknown session 'q'"],
    ),
    ('[sessions.p]\ntoken = "dev:${x}"\n[[step]]\nsend = "ping"\n', ["step 1", "${x}"]),
]


@pytest.mark.parametrize(("text", "words"), INVALID)
async def test_an_invalid_script_exits_2_before_connecting(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = script(tmp_path, text)
    # Nothing listens there: a script that tried to connect would say so instead.
    result = await run(path, f"ws://127.0.0.1:{free_port()}/")
    assert result.code == 2, result
    assert result.err.startswith(f"wsprobe run: {path}: "), result
    for word in words:
        assert word in result.err, result
    assert result.out == ""


async def test_connection_refused_exits_2(tmp_path: Path) -> None:
    result = await run(script(tmp_path, TOUR.format(name="x")), f"ws://127.0.0.1:{free_port()}/")
    assert result.code == 2, result
    assert "step 1 (line 4): session p: cannot connect:" in result.err
    assert "connection refused" in result.err


async def test_no_url_exits_2(tmp_path: Path) -> None:
    result = await run_wsprobe("run", str(script(tmp_path, TOUR.format(name="x"))))
    assert result.code == 2, result
    assert "no url" in result.err


async def test_a_refused_hello_exits_2(url: str, tmp_path: Path) -> None:
    text = '[sessions.p]\ntoken = "not-a-token"\n[[step]]\nsend = "ping"\n'
    result = await run(script(tmp_path, text), url)
    assert result.code == 2, result
    assert "session p: hello refused: error unauthenticated" in result.err


async def test_msgpack(url: str, tmp_path: Path) -> None:
    text = """\
[sessions.p]
token = "dev:packer"

[[step]]
hello = true
capture = { cap = "state.items.* | [?template == 'cloth_cap'] | [0].id" }

[[step]]
send = "equip"
body = { item_id = "${cap}", slot = "head" }
expect = { effects = [
    { e = "items_moved", moves = [["${cap}", ["backpack", 0], ["equipment", "head"]]] },
] }

[[step]]
raw = '{"t": "ping", "rid": 99}'
expect = { t = "pong", rid = 99 }

[[step]]
raw = '{"t": "ping", "rid": 1'
expect_error = "bad_request"
"""
    result = await run(script(tmp_path, text), url, "--msgpack")
    assert result.code == 0, result
    assert templates_at(await welcome(url, "dev:packer"), "equipment") == {"head": "cloth_cap"}

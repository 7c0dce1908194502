"""``ScriptRecorder``: what it writes for requests and pushes, and that a recording of a real
session replays green with ``wsprobe run`` for a fresh player, in both encodings."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import msgspec

from tests.support.wsprobe import run_wsprobe
from tools.wsprobe import ops
from tools.wsprobe.client import Message, ProbeClient
from tools.wsprobe.common import ConnectOptions, Recorder
from tools.wsprobe.mirror import MirrorTracker
from tools.wsprobe.script import ScriptRecorder
from tools.wsprobe.script_format import Step, load_script

WAIT_S = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder(tmp_path: Path, token: str | None = "dev:rec") -> tuple[ScriptRecorder, FakeClock]:
    clock = FakeClock()
    options = ConnectOptions(url="ws://127.0.0.1:8765/")
    return ScriptRecorder(tmp_path / "rec.toml", options, token, clock=clock), clock


def steps_of(rec: ScriptRecorder) -> list[dict[str, object]]:
    rec.close()
    steps = tomllib.loads(rec.path.read_text(encoding="utf-8"))["step"]
    assert isinstance(steps, list)
    return steps


# --- what it writes (no server: messages as a session would report them) ---------------------


def test_it_is_a_recorder() -> None:
    rec: Recorder = ScriptRecorder(Path("x.toml"), ConnectOptions(url="ws://h/"), None)
    assert rec is not None


def test_requests_become_send_steps_expecting_type_code_and_effect_kinds(tmp_path: Path) -> None:
    rec, _ = recorder(tmp_path)
    rec.request(
        {"t": "inventory.split_stack", "item_id": "@bread", "qty": "2", "compartment": "backpack",
         "index": 12},
        {"t": "effects", "rid": 3, "version": 20, "effects": [
            {"e": "stack_changed", "item_id": 1007, "qty": 3},
            {"e": "item_created", "item": {"id": 1010}, "dst": ["backpack", 12]},
        ]},
    )  # fmt: skip
    rec.request(
        {"t": "inventory.use_item", "item_id": "@bread"},
        {"t": "error", "rid": 4, "code": "cooldown_active", "message": "...", "details": {}},
    )
    rec.request(
        {"t": "inventory.unequip_item", "slot": "head", "index": None},
        {"t": "effects", "rid": 5, "version": 21, "effects": []},
    )
    rec.request({"t": "player.get_stats"}, {"t": "player.stats", "rid": 6, "version": 21})
    assert steps_of(rec) == [
        {
            "send": "split",
            "body": {"item_id": "@bread", "qty": 2, "compartment": "backpack", "index": 12},
            "expect": {"t": "effects", "effects": [{"e": "stack_changed"}, {"e": "item_created"}]},
        },
        {"send": "use", "body": {"item_id": "@bread"}, "expect_error": "cooldown_active"},
        {"send": "unequip", "body": {"slot": "head"}, "expect": {"t": "effects", "effects": []}},
        {"send": "stats", "expect": {"t": "player.stats"}},
    ]


def test_what_send_cannot_say_is_recorded_raw(tmp_path: Path) -> None:
    rec, _ = recorder(tmp_path)
    bad = {"t": "error", "rid": None, "code": "bad_request", "message": "m", "details": {}}
    rec.request({"t": "inventory.use_item", "item_id": "bread"}, bad)  # refused as invalid
    rec.request({"t": "inventory.steal_item", "item_id": 1}, bad)  # not an operation
    rec.request({"t": "ping", "extra": 1}, {"t": "pong", "rid": 3, "tick": 1})  # not a field
    rec.request({"t": "ping", "x": [None]}, {"t": "pong", "rid": 4, "tick": 1})
    refused = {"expect_error": "bad_request"}
    assert steps_of(rec) == [
        {"raw": '{"t":"inventory.use_item","item_id":"bread","rid":1}', **refused},
        {"raw": '{"t":"inventory.steal_item","item_id":1,"rid":2}', **refused},
        {"raw": '{"t":"ping","extra":1,"rid":3}', "expect": {"t": "pong"}},
        {"raw": '{"t":"ping","x":[null],"rid":4}', "expect": {"t": "pong"}},
    ]


def test_a_cooldown_it_saw_start_is_waited_for_long_enough(tmp_path: Path) -> None:
    rec, clock = recorder(tmp_path)
    started = {"e": "cooldown_started", "key": "healing_potion", "ready_at_ms": 1}
    rec.request(
        {"t": "inventory.use_item", "item_id": "@healing_potion"},
        {"t": "effects", "rid": 2, "version": 20, "effects": [started]},
    )
    clock.now += 30.2
    rec.push({"t": "player.cooldown_ready", "seq": 20, "key": "healing_potion", "ready_at_ms": 1})
    rec.push({"t": "player.cooldown_ready", "seq": 20, "key": "item:bread", "ready_at_ms": 1})
    rec.request(
        {"t": "inventory.use_item", "item_id": "@bread"},
        {"t": "effects", "rid": 3, "version": 21,
         "effects": [{"e": "cooldown_started", "key": "item:bread", "ready_at_ms": 1}]},
    )  # fmt: skip
    clock.now += 1.0
    rec.push({"t": "player.cooldown_ready", "seq": 21, "key": "item:bread", "ready_at_ms": 1})
    text = (rec.close(), rec.path.read_text(encoding="utf-8"))[1]
    steps = tomllib.loads(text)["step"]
    assert steps[1] == {
        "wait_push": "player.cooldown_ready",
        "expect": {"key": "healing_potion"},
        "timeout": 33.0,
    }
    # One that started before the recording: the replay would not cause it.
    assert "# push player.cooldown_ready item:bread: not replayed (its cooldown started" in text
    # A short one keeps the default timeout.
    assert steps[3] == {"wait_push": "player.cooldown_ready", "expect": {"key": "item:bread"}}


def _grant_reply(version: int, ids: list[int]) -> Message:
    return {"t": "admin.grant_item_reply", "rid": 2, "player_id": 7, "version": version,
            "item_ids": ids, "replayed": False}  # fmt: skip


def _delta(seq: int, item_id: int) -> Message:
    return {"t": "player.delta", "seq": seq, "effects": [
        {"e": "item_created", "item": {"id": item_id}}, {"e": "grant_recorded", "key": "k"}
    ]}  # fmt: skip


GRANT = {"t": "admin.grant_item", "player_id": 7, "template": "iron_ore", "qty": 2,
         "idempotency_key": "key-0001"}  # fmt: skip
DELTA_STEP = {
    "wait_push": "player.delta",
    "expect": {"effects": [{"e": "item_created"}, {"e": "grant_recorded"}]},
}


def test_the_delta_of_a_grant_to_oneself_is_waited_for_after_the_grant(tmp_path: Path) -> None:
    for delta_first in (True, False):
        rec, _ = recorder(tmp_path)
        rec.request({"t": "ping"}, {"t": "pong", "rid": 1, "tick": 1})
        if delta_first:  # the push may overtake the reply
            rec.push(_delta(18, 1020))
        rec.request(GRANT, _grant_reply(18, [1020]))
        if not delta_first:
            rec.push(_delta(18, 1020))
        rec.request({"t": "ping"}, {"t": "pong", "rid": 3, "tick": 1})
        steps = steps_of(rec)
        assert [s.get("send") or s.get("wait_push") for s in steps] == [
            "ping",
            "grant",
            "player.delta",
            "ping",
        ], delta_first
        assert steps[2] == DELTA_STEP


def test_deltas_from_elsewhere_are_comments(tmp_path: Path) -> None:
    rec, _ = recorder(tmp_path)
    rec.push(_delta(18, 1020))  # no grant of ours explains it
    rec.request(GRANT, _grant_reply(19, [1021]))  # another version and item: not it either
    rec.push({"t": "server.news\nurl = 3", "text": "hi"})  # odd input: still a valid file
    rec.close()
    text = rec.path.read_text(encoding="utf-8")
    assert "# push player.delta seq 18 [item_created, grant_recorded]: not replayed" in text
    assert "# push server.news url = 3: not replayed" in text
    assert [s.get("send") for s in tomllib.loads(text)["step"]] == ["grant"]


def test_the_file_names_the_server_and_keeps_the_token_in_a_variable(tmp_path: Path) -> None:
    rec, _ = recorder(tmp_path, token="dev:some one")
    rec.request({"t": "ping"}, {"t": "pong", "rid": 1, "tick": 1})
    rec.close()
    rec.close()  # twice is harmless
    script = load_script(rec.path)
    assert script.url == "ws://127.0.0.1:8765/"
    assert script.vars == {"token": "dev:some one"}
    assert script.sessions["main"].token == "${token}"
    assert [s.target for s in script.steps] == ["ping"]


def test_without_a_token_the_session_says_no_hello(tmp_path: Path) -> None:
    rec, _ = recorder(tmp_path, token=None)
    rec.request({"t": "ping"}, {"t": "error", "rid": 1, "code": "unauthenticated"})
    script = load_script((rec.close(), rec.path)[1])
    assert script.sessions["main"].token is None
    assert script.steps[0].expect_error == "unauthenticated"


# --- a real session, recorded and replayed --------------------------------------------------


class Repl:
    """Plays the interactive client: sends what a user typed (``@refs`` resolved here, against
    its own mirror) and reports to the recorder as the REPL does: the request as typed, the
    reply, and every push in the order it arrived."""

    def __init__(self, client: ProbeClient, recorder: ScriptRecorder) -> None:
        self.client = client
        self.recorder = recorder
        self.tracker: MirrorTracker | None = None

    async def hello(self, token: str) -> Message:
        msg: Message = {"t": "session.hello", "token": token}
        reply = await self.client.request(msg)
        self.tracker = MirrorTracker(reply)
        self.recorder.request(msg, reply)
        return reply

    def _pushes(self) -> None:
        assert self.tracker is not None
        while self.client.pushes:
            push = self.client.pushes.popleft()
            self.tracker.observe(push)
            self.recorder.push(push)

    async def call(self, name: str, **typed: str) -> Message:
        assert self.tracker is not None
        op = ops.find(name)
        state = msgspec.to_builtins(self.tracker.mirror.state)
        wire = ops.build_request(op, ops.resolve_refs(typed, state, self.tracker.player_id))
        reply = await self.client.request(wire)
        self._pushes()
        self.tracker.observe(reply)
        self.recorder.request({"t": op.tag, **typed}, reply)
        return reply

    async def send(self, msg: Message) -> Message:
        """A raw message, unchecked (``wsprobe send``)."""
        reply = await self.client.request(msg)
        self._pushes()
        self.recorder.request(dict(msg), reply)
        return reply

    async def wait_push(self, tag: str) -> Message:
        async with asyncio.timeout(WAIT_S):
            while True:
                self._pushes()
                push = await self.client.receive()
                self.client.pushes.append(push)
                if push.get("t") == tag:
                    self._pushes()
                    return push

    def id_of(self, template: str, n: int = 0) -> str:
        assert self.tracker is not None
        items = self.tracker.mirror.state.items
        return str(sorted(i for i, item in items.items() if item.template == template)[n])


async def test_a_recorded_session_replays_for_a_fresh_player(url: str, tmp_path: Path) -> None:
    path = tmp_path / "recorded.toml"
    rec = ScriptRecorder(path, ConnectOptions(url=url), "dev-admin:recorder")
    async with await ProbeClient.connect(url) as client:
        repl = Repl(client, rec)
        welcome = await repl.hello("dev-admin:recorder")
        me = str(welcome["player_id"])
        await repl.call("equip", item_id="@cloth_cap", slot="head")
        await repl.call("equip", item_id=repl.id_of("leather_vest"), slot="chest")  # a literal id
        await repl.call("use", item_id="@bread")
        assert (await repl.call("use", item_id="@bread"))["code"] == "cooldown_active"
        await repl.wait_push("player.cooldown_ready")  # the user waits for it
        await repl.call("use", item_id="@bread")
        await repl.wait_push("player.cooldown_ready")  # (else it comes whenever it comes)
        split = await repl.call(
            "split", item_id="@bread", qty="2", compartment="backpack", index="12"
        )
        assert split["t"] == "effects", split
        await repl.call("merge", item_id=repl.id_of("bread", 1), into_item_id=repl.id_of("bread"))
        assert (await repl.send({"t": "inventory.use_item", "item_id": "bread"}))["code"] == (
            "bad_request"
        )
        grant = await repl.call("grant", player_id=me, template="iron_ore", qty="2",
                                compartment="bank", idempotency_key="rec-grant-0001")  # fmt: skip
        assert grant["t"] == "admin.grant_item_reply", grant
        await repl.wait_push("player.delta")  # a grant to oneself comes back as a delta
        await repl.call("move", item_id="@iron_ore", compartment="backpack", index="20")
        await repl.call("stats")
        # Another session of the same player changes something: seen, but not replayable.
        async with await ProbeClient.connect(url) as other:
            await other.hello("dev-admin:recorder")
            await other.request({"t": "inventory.unequip_item", "slot": "head"})
        await repl.wait_push("player.delta")
    rec.close()

    script = load_script(path)
    text = path.read_text(encoding="utf-8")

    def shown(step: Step) -> str:
        return (
            f"{step.action} {ops.find(step.target).name if step.action == 'send' else step.target}"
        )

    assert [shown(s) for s in script.steps] == [
        "send equip",
        "send equip",
        "send use",
        "send use",
        "wait_push player.cooldown_ready",
        "send use",
        "wait_push player.cooldown_ready",
        "send split",
        "send merge",
        "raw " + '{"t":"inventory.use_item","item_id":"bread","rid":1}',
        "send grant",
        "wait_push player.delta",
        "send move",
        "send stats",
    ]
    bodies = [s.body for s in script.steps]
    assert bodies[1] == {"item_id": "@leather_vest", "slot": "chest"}  # the literal id, as a ref
    assert bodies[7] == {"item_id": "@bread", "qty": 2, "compartment": "backpack", "index": 12}
    assert bodies[8] == {"item_id": "@bread.1", "into_item_id": "@bread"}
    assert bodies[10]["player_id"] == "@me"
    assert """raw = '{"t":"inventory.use_item","item_id":"bread","rid":1}'""" in text
    assert "# push player.delta" in text and "not replayed (another session caused it)" in text

    fresh = await run_wsprobe("run", str(path), "--url", url, "--var", "token=dev-admin:fresh1")
    assert fresh.code == 0, f"{fresh}\n{text}"
    assert "ok: 14 steps, 1 session" in fresh.out
    packed = await run_wsprobe(
        "run", str(path), "--url", url, "--msgpack", "--var", "token=dev-admin:fresh2"
    )
    assert packed.code == 0, f"{packed}\n{text}"

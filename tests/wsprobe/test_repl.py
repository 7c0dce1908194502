"""``wsprobe connect`` / ``record`` against a real server: the piped CLI as a subprocess, the
REPL core in-process (line mode fed from a queue, prompt mode fed through a pipe input) so a
test can act between lines — a second session of the same player, a server shutdown."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import re
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from protocol import SUBPROTOCOL_JSON
from protocol.base import tag_of
from protocol.messages import CLIENT_MESSAGES
from protocol.schema import json_schema
from server.app import App
from tests.support.proc import ROOT, free_port
from tests.support.wsprobe import run_wsprobe
from tools.wsprobe.client import Message, ProbeClient
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.repl import LineIO, PromptIO, run_repl
from tools.wsprobe.repl_input import ReplCompleter
from tools.wsprobe.repl_render import TextSink, colour_enabled, render_message

DEADLINE_S = 20.0
PROMPT = "gearhall>"  # the renderer writes the trailing space separately
# An SGR sequence that sets a colour (foreground, background, 256 or true colour); bold,
# reverse or a reset are not colours.
COLOUR_SGR = re.compile(r"\x1b\[(?:[0-9]+;)*(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9]+)*m")


# --- helpers -------------------------------------------------------------------------------


class Capture(io.StringIO):
    """A text stream a test can wait on: ``await out.wait_for("player.delta")``."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def write(self, text: str) -> int:
        self._changed.set()
        return super().write(text)

    async def wait_for(self, text: str, after: int = 0) -> int:
        """The index of ``text`` at or after ``after``, once it has been written."""
        try:
            async with asyncio.timeout(DEADLINE_S):
                while (found := self.getvalue().find(text, after)) < 0:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"never printed {text!r}:\n{self.getvalue()}") from None
        return found


class Lines:
    """Input lines the test sends one at a time; ``end()`` is the end of input."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

    def send(self, line: str) -> None:
        self._queue.put_nowait(line)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[str]:
        while (line := await self._queue.get()) is not None:
            yield line


class FakeRecorder:
    def __init__(self) -> None:
        self.requests: list[tuple[Message, Message]] = []
        self.pushes: list[Message] = []
        self.closed = 0

    def request(self, msg: Message, reply: Message) -> None:
        self.requests.append((msg, reply))

    def push(self, msg: Message) -> None:
        self.pushes.append(msg)

    def close(self) -> None:
        self.closed += 1


def block_after(out: str, header: str) -> object:
    """The pretty JSON printed on the lines after the (last) line starting with ``header``."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(header)) + 1
    end = next(i for i in range(start, len(lines)) if lines[i] in ("}", "]"))
    return json.loads("\n".join(lines[start : end + 1]))


def item_id(state: object, template: str, n: int = 0) -> int:
    assert isinstance(state, dict)
    ids = sorted(int(k) for k, item in state["items"].items() if item["template"] == template)
    return ids[n]


async def equip_from_other_session(url: str, token: str, template: str, slot: str) -> None:
    """What a second client of the same player does: its effects reach the REPL as a delta."""
    async with await ProbeClient.connect(url) as other:
        welcome = await other.hello(token)
        wanted = item_id(welcome["state"], template)
        reply = await other.request({"t": "inventory.equip_item", "item_id": wanted, "slot": slot})
        assert reply["t"] == "effects", reply


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "history"
    monkeypatch.setenv("WSPROBE_HISTORY", str(path))
    return path


# --- the piped command line ----------------------------------------------------------------


async def test_piped_session_shows_replies_errors_commands_and_the_mirror(
    url: str, history: Path
) -> None:
    script = [
        "ping",
        "equip @cloth_cap head",
        "equip @iron_helm head",  # needs level 2: an error reply
        '{"t": "ping"}',
        '{"t": "inventory.nope", "x": 1}',  # invalid, sent anyway: the server must answer
        "split @bread qty=2 compartment=backpack index=20",
        "destroy @bread.1",  # the stack split off just now: only the live mirror knows it
        "equip @cloth_cap slot=elbow",  # refused locally: nothing sent
        "# a comment",
        ":state",
        ":tags",
        ":schema equip",
        ":help",
        ":frobnicate",
    ]
    result = await run_wsprobe(
        "connect", url, "--token", "dev:alice", stdin="\n".join(script) + "\n"
    )
    out = result.out
    assert result.code == 0, result
    assert result.err == "", result
    assert "\x1b" not in out, "NO_COLOR is set (and stdout is a pipe): no escape codes"

    sent = [json.loads(line[3:]) for line in out.splitlines() if line.startswith(">> ")]
    assert [m["t"] for m in sent] == [
        "session.hello",
        "ping",
        "inventory.equip_item",
        "inventory.equip_item",
        "ping",
        "inventory.nope",
        "inventory.split_stack",
        "inventory.destroy_item",
    ], out
    assert [m["rid"] for m in sent] == list(range(1, 9))
    assert "<< session.welcome  rid=1" in out
    assert re.search(r"^<< pong  rid=2  [0-9.]+ ms$", out, re.M), out
    assert re.search(r"^<< pong  rid=5  [0-9.]+ ms$", out, re.M), out
    assert re.search(r"^!! error requirements_not_met: .*rid=4  [0-9.]+ ms$", out, re.M), out
    assert re.search(r"^!! error bad_request: .*rid=6", out, re.M), out
    assert re.search(r"^!! not sent: slot=elbow", out, re.M), out
    assert "!! unknown command :frobnicate; commands: :help :tags :schema :state :quit" in out

    state = block_after(out, "== mirror")
    assert re.search(r"^== mirror v\d+  digest [0-9a-f]{16}  in sync$", out, re.M), out
    assert isinstance(state, dict)
    assert state["equipment"] == {"head": item_id(state, "cloth_cap")}
    assert [i["qty"] for i in state["items"].values() if i["template"] == "bread"] == [3]
    split_id = sent[6]["item_id"]
    assert sent[7]["item_id"] not in (split_id, None)  # @bread.1 was the new stack

    for cls in CLIENT_MESSAGES:
        assert re.search(rf"^{re.escape(tag_of(cls))} ", out, re.M), tag_of(cls)
    assert re.search(r"^inventory\.equip_item +equip +Equip an item", out, re.M), out
    schema = block_after(out, "== inventory.equip_item")
    defs = json_schema()["$defs"]
    assert isinstance(defs, dict)
    assert schema == defs["EquipItem"]
    assert ":schema TAG" in out
    assert not await asyncio.to_thread(history.exists), "no prompt, no history"


async def test_piped_session_over_msgpack(url: str, history: Path) -> None:
    result = await run_wsprobe(
        "connect", url, "--msgpack", "--token", "dev:mia", stdin="ping\nstats\n"
    )
    assert result.code == 0, result
    assert "<< pong  rid=2" in result.out
    assert "<< player.stats  rid=3" in result.out


async def test_hello_typed_in_the_session_starts_the_mirror(url: str, history: Path) -> None:
    lines = ["equip @cloth_cap head", "session.hello token=dev:noa", "equip @cloth_cap head"]
    result = await run_wsprobe("connect", url, stdin="\n".join([*lines, ":state"]) + "\n")
    assert result.code == 0, result
    assert re.search(
        r"^!! not sent: references \(@\.\.\.\) need the player's state", result.out, re.M
    )
    assert "<< session.welcome  rid=1" in result.out
    assert re.search(r"^<< effects  rid=2 ", result.out, re.M), result
    state = block_after(result.out, "== mirror")
    assert isinstance(state, dict)
    assert state["equipment"] == {"head": item_id(state, "cloth_cap")}


async def test_connection_refused_exits_2_with_a_readable_message(history: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    result = await run_wsprobe("connect", url, "--token", "dev:a", stdin="ping\n")
    assert result.code == 2, result
    assert "connection refused: is the server running?" in result.err, result
    assert result.out == ""


async def test_refused_hello_exits_2(url: str, history: Path) -> None:
    result = await run_wsprobe("connect", url, "--token", "nobody", stdin="ping\n")
    assert result.code == 2, result
    assert re.search(r"^!! error unauthenticated: ", result.out, re.M), result
    assert "session.hello was refused" in result.err
    assert "pong" not in result.out


async def test_server_closing_the_connection_exits_2(app: App, url: str, history: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tools.wsprobe.cli", "connect", url, "--token", "dev:zoe"),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(DEADLINE_S):
            proc.stdin.write(b"ping\n")
            await proc.stdin.drain()
            while not (await proc.stdout.readline()).startswith(b"<< pong"):
                pass
            await app.stop()  # stdin stays open: only the close can end the session
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await proc.stderr.read()).decode()
    assert code == 2, err
    assert "the server closed the connection (code 1001: server shutting down)" in err


async def test_record_writes_a_script(url: str, tmp_path: Path, history: Path) -> None:
    path = tmp_path / "session.script"
    result = await run_wsprobe(
        "record", url, "--token", "dev:rex", "-o", str(path), stdin="equip @cloth_cap head\n"
    )
    assert result.code == 0, result
    assert "@cloth_cap" in path.read_text(), "the reference is kept, not this player's item id"
    replay = await run_wsprobe("run", str(path), "--var", "token=dev:rex-again")
    assert replay.code == 0, f"{replay}\n--- script\n{path.read_text()}"


# --- in-process: pushes, the mirror, recording, closing --------------------------------------


async def test_push_from_another_session_is_printed_and_mirrored(url: str) -> None:
    lines, out, err = Lines(), Capture(), io.StringIO()
    options = ConnectOptions(url=url)
    repl = asyncio.create_task(run_repl(options, "dev:carol", LineIO(lines, out), err=err))
    lines.send("ping")
    await out.wait_for("<< pong")

    await equip_from_other_session(url, "dev:carol", "cloth_cap", "head")
    push = await out.wait_for("** push player.delta")
    await out.wait_for("   mirror v", push)

    lines.send(":state")
    await out.wait_for("== mirror", push)
    lines.end()
    assert await repl == 0, err.getvalue()
    state = block_after(out.getvalue(), "== mirror")
    assert isinstance(state, dict)
    assert state["equipment"] == {"head": item_id(state, "cloth_cap")}
    assert "in sync" in out.getvalue()[push:]


async def test_references_resolve_against_the_current_mirror(url: str) -> None:
    lines, out = Lines(), Capture()
    repl = asyncio.create_task(
        run_repl(ConnectOptions(url=url), "dev-admin:gus", LineIO(lines, out), err=io.StringIO())
    )
    lines.send("grant @me bread qty=4 idempotency_key=repl-test-0001")
    await out.wait_for("<< admin.grant_item_reply")
    await out.wait_for("** push player.delta")  # the grant reaches this session as a delta
    lines.send("destroy @bread.1")
    await out.wait_for("<< effects")
    lines.end()
    assert await repl == 0
    text = out.getvalue()
    sent = [json.loads(line[3:]) for line in text.splitlines() if line.startswith(">> ")]
    grant = block_after(text, "<< admin.grant_item_reply")
    assert isinstance(grant, dict)
    assert sent[1]["player_id"] == grant["player_id"]
    assert sent[2]["item_id"] == grant["item_ids"][0]


async def test_recorder_hears_requests_as_written_and_pushes(url: str) -> None:
    lines, out, recorder = Lines(), Capture(), FakeRecorder()
    repl = asyncio.create_task(
        run_repl(
            ConnectOptions(url=url),
            "dev:rita",
            LineIO(lines, out),
            recorder=recorder,
            err=io.StringIO(),
        )
    )
    lines.send("equip @cloth_cap head")
    lines.send('{"t": "ping", "rid": 77}')
    lines.send("equip @cloth_cap slot=elbow")
    lines.send("ping")
    await out.wait_for("<< pong  rid=3")  # the rid after 77 would be 3: hello 1, equip 2
    await equip_from_other_session(url, "dev:rita", "short_sword", "main_hand")
    await out.wait_for("** push player.delta")
    lines.end()
    assert await repl == 0

    assert [(msg, reply["t"]) for msg, reply in recorder.requests] == [
        ({"t": "session.hello", "token": "dev:rita"}, "session.welcome"),
        ({"t": "inventory.equip_item", "item_id": "@cloth_cap", "slot": "head"}, "effects"),
        ({"t": "ping"}, "pong"),
        ({"t": "ping"}, "pong"),
    ]
    assert recorder.requests[2][1]["rid"] == 77
    assert [push["t"] for push in recorder.pushes] == ["player.delta"]
    assert recorder.closed == 1


async def test_recorder_is_closed_when_the_session_fails() -> None:
    recorder, err = FakeRecorder(), io.StringIO()
    options = ConnectOptions(url=f"ws://127.0.0.1:{free_port()}/")
    code = await run_repl(options, "dev:a", LineIO(Lines(), Capture()), recorder=recorder, err=err)
    assert code == 2
    assert "connection refused" in err.getvalue()
    assert recorder.closed == 1


async def test_server_closing_ends_the_session_with_its_code(app: App, url: str) -> None:
    lines, out, err = Lines(), Capture(), io.StringIO()
    repl = asyncio.create_task(
        run_repl(ConnectOptions(url=url), "dev:otto", LineIO(lines, out), err=err)
    )
    lines.send("ping")
    await out.wait_for("<< pong")
    await app.stop()
    async with asyncio.timeout(DEADLINE_S):
        assert await repl == 2
    assert "the server closed the connection (code 1001: server shutting down)" in err.getvalue()


async def silent_server(ws: ServerConnection) -> None:
    async for _ in ws:  # reads every frame, answers none
        pass


async def test_a_request_without_reply_times_out_and_the_session_ends_with_2() -> None:
    protocols = [Subprotocol(SUBPROTOCOL_JSON)]
    async with serve(silent_server, "127.0.0.1", 0, subprotocols=protocols) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        lines, out = Lines(), Capture()
        for line in ("ping", ":help"):
            lines.send(line)
        lines.end()
        options = ConnectOptions(url=f"ws://127.0.0.1:{port}/")
        code = await run_repl(options, None, LineIO(lines, out), reply_timeout=0.2)
    assert code == 2
    assert "!! no reply within 0.2s (rid 1)" in out.getvalue()
    assert ":schema TAG" in out.getvalue(), "the session went on after the timeout"


async def closing_server(ws: ServerConnection) -> None:
    await ws.recv()  # the first request is never answered: the server leaves instead
    await ws.close(1011, "going down")


async def test_a_close_while_waiting_for_a_reply_ends_the_session_with_2() -> None:
    protocols = [Subprotocol(SUBPROTOCOL_JSON)]
    async with serve(closing_server, "127.0.0.1", 0, subprotocols=protocols) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        lines, out, err = Lines(), Capture(), io.StringIO()
        lines.send("ping")
        options = ConnectOptions(url=f"ws://127.0.0.1:{port}/")
        async with asyncio.timeout(DEADLINE_S):
            code = await run_repl(options, None, LineIO(lines, out), err=err)
    assert code == 2
    assert ">> " in out.getvalue()
    assert "no reply within" not in out.getvalue(), "the close fails the wait at once"
    assert "the server closed the connection (code 1011: going down)" in err.getvalue()


# --- the prompt ----------------------------------------------------------------------------


def vt100(stream: Capture) -> Vt100_Output:
    return Vt100_Output(stream, lambda: Size(rows=40, columns=120), term="xterm", enable_cpr=False)


async def test_prompt_shows_a_push_above_the_prompt_in_colour(url: str) -> None:
    screen, history = Capture(), InMemoryHistory()
    with create_pipe_input() as keys:
        io_ = PromptIO(input=keys, output=vt100(screen), history=history, colour=True)
        repl = asyncio.create_task(
            run_repl(ConnectOptions(url=url), "dev:pia", io_, err=io.StringIO())
        )
        await screen.wait_for(PROMPT)
        keys.send_text("ping\r")
        await screen.wait_for("<< pong")
        keys.send_text("equip @nothing head\r")  # refused locally
        refused = await screen.wait_for("!! not sent: item_id=@nothing")
        await screen.wait_for(PROMPT, refused)  # idle at the prompt when the push comes

        await equip_from_other_session(url, "dev:pia", "cloth_cap", "head")
        push = await screen.wait_for("** push player.delta")
        await screen.wait_for(PROMPT, push)  # the prompt is drawn again below the push
        keys.send_text("equip @iron_helm head\r")
        error = await screen.wait_for("!! error requirements_not_met")
        keys.send_text(":quit\r")
        assert await repl == 0
    text = screen.getvalue()
    assert re.search(r"\x1b\[[0-9;]*35[;m][^\x1b]*\*\* push player\.delta", text), text[push - 40 :]
    assert re.search(
        r"\x1b\[[0-9;]*41[;m][^\x1b]*!! error requirements_not_met", text[error - 40 :]
    )
    assert list(history.load_history_strings())[:3] == [
        ":quit",
        "equip @iron_helm head",
        "equip @nothing head",
    ]


async def test_prompt_without_colour_prints_no_colour(url: str) -> None:
    screen = Capture()
    with create_pipe_input() as keys:
        io_ = PromptIO(input=keys, output=vt100(screen), history=InMemoryHistory(), colour=False)
        repl = asyncio.create_task(
            run_repl(ConnectOptions(url=url), "dev:nell", io_, err=io.StringIO())
        )
        await screen.wait_for(PROMPT)
        keys.send_text("equip @iron_helm head\r")
        await screen.wait_for("!! error requirements_not_met")
        keys.send_text("\x04")  # Ctrl-D on an empty line ends the session
        assert await repl == 0
    assert COLOUR_SGR.search(screen.getvalue()) is None, repr(screen.getvalue())


async def test_prompt_ends_when_the_server_closes(app: App, url: str) -> None:
    screen, err = Capture(), io.StringIO()
    with create_pipe_input() as keys:
        io_ = PromptIO(input=keys, output=vt100(screen), history=InMemoryHistory())
        repl = asyncio.create_task(run_repl(ConnectOptions(url=url), "dev:ivy", io_, err=err))
        await screen.wait_for(PROMPT)
        keys.send_text("pi")  # half a line typed: the prompt is active when the server leaves
        await screen.wait_for("pi")
        await app.stop()
        async with asyncio.timeout(DEADLINE_S):
            assert await repl == 2
    assert "the server closed the connection (code 1001: server shutting down)" in err.getvalue()


async def test_connect_on_a_terminal_prompts_with_history_and_colour(
    url: str, history: Path
) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tools.wsprobe.cli", "connect", url, "--token", "dev:tess"),
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"},
    )
    os.close(slave)
    screen = Capture()
    loop = asyncio.get_running_loop()
    terminal = os.fdopen(master, "r+b", buffering=0)

    def on_readable() -> None:
        try:
            screen.write(os.read(master, 65536).decode(errors="replace"))
        except OSError:  # the child closed its side
            loop.remove_reader(master)

    loop.add_reader(master, on_readable)
    try:
        await screen.wait_for(PROMPT)
        terminal.write(b"ping\r")
        pong = await screen.wait_for("<< pong")
        await screen.wait_for(PROMPT, pong)
        terminal.write(b"\x04")
        async with asyncio.timeout(DEADLINE_S):
            code = await proc.wait()
    finally:
        loop.remove_reader(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        terminal.close()
    assert code == 0, screen.getvalue()
    assert COLOUR_SGR.search(screen.getvalue()), "a terminal without NO_COLOR gets colours"
    assert "ping" in await asyncio.to_thread(history.read_text)


def test_colours_only_on_a_terminal_without_no_color() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert colour_enabled(tty, {}) is True
            assert colour_enabled(tty, {"NO_COLOR": "1"}) is False
    finally:
        os.close(master)
        os.close(slave)
    assert colour_enabled(io.StringIO(), {}) is False


def test_line_mode_colours_replies_errors_and_pushes() -> None:
    error = {"t": "error", "rid": 4, "code": "not_found", "message": "no such item"}
    for colour in (True, False):
        out = io.StringIO()
        sink = TextSink(out, colour)
        sink.show(render_message({"t": "pong", "rid": 3, "tick": 1}, 1.25))
        sink.show(render_message(error, 0.5))
        sink.show(render_message({"t": "player.delta", "seq": 9, "effects": []}, None))
        text = out.getvalue()
        if colour:
            assert "\x1b[1;32m<< pong  rid=3  1.2 ms\x1b[0m" in text
            assert "\x1b[1;97;41m!! error not_found: no such item  rid=4  0.5 ms\x1b[0m" in text
            assert "\x1b[1;35m** push player.delta\x1b[0m" in text
        else:
            assert "\x1b" not in text
            assert "!! error not_found: no such item  rid=4  0.5 ms\n" in text


# --- completion ----------------------------------------------------------------------------


def completions(text: str, templates: tuple[str, ...] = ()) -> list[str]:
    completer = ReplCompleter(lambda: templates)
    found = completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    return [c.text for c in found]


def test_completes_tags_short_names_and_commands() -> None:
    assert completions("eq") == ["equip"]
    assert completions("inventory.eq") == ["inventory.equip_item"]
    assert completions("session") == ["session.hello"]
    every = completions("")
    assert {tag_of(cls) for cls in CLIENT_MESSAGES} <= set(every)
    assert {"ping", "equip", "grant", "stats"} <= set(every)
    assert completions(":s") == [":schema", ":state"]
    assert completions(":schema inventory.u") == ["inventory.unequip_item", "inventory.use_item"]
    assert completions(":schema equip ") == []
    assert completions('{"t": "p') == []


def test_completes_the_fields_of_the_typed_tag() -> None:
    assert completions("equip ") == ["item_id=", "slot="]
    assert completions("inventory.equip_item sl") == ["slot="]
    assert completions("equip item_id=3 ") == ["slot="]
    assert completions("unequip ") == ["slot=", "compartment=", "index="]
    assert completions("session.hello ") == ["token=", "resume="]
    assert completions("nonsense ") == []


def test_completes_values_and_references() -> None:
    assert completions("equip slot=ri") == ["ring1", "ring2"]
    assert completions("destroy qty=n") == ["null"]
    held = ("cloth_cap", "bread", "bread")
    assert completions("equip item_id=@b", held) == ["@bread"]
    assert completions("equip @c", held) == ["@cloth_cap"]
    assert completions("grant player_id=@", held) == ["@me", "@bread", "@cloth_cap"]

"""``wsprobe connect`` and ``wsprobe record``: an interactive session with one Gearhall server.

    wsprobe connect ws://127.0.0.1:8765/ --token dev:alice
    gearhall> equip @cloth_cap head
    gearhall> {"t": "inventory.nope", "x": 1}
    gearhall> :state
    printf 'ping\\n:state\\n' | wsprobe connect ws://127.0.0.1:8765/ --token dev:alice
    wsprobe record ws://127.0.0.1:8765/ --token dev:alice -o session.toml

A line is a request — ``tag field=value ...`` with a short name or full tag, the fields of
its protocol Struct, ``@template[.n]`` and ``@me`` resolved against the *current* mirrored
state (see ``tools/wsprobe/ops``) — or raw JSON (a line starting with ``{``, sent as it is,
valid or not, with a ``rid`` added if it has none), or a ``:command`` (``:help``). A request
that does not validate locally is reported and nothing is sent.

Everything the server sends is printed as it arrives, in arrival order: replies (with their
round-trip time), error replies, pushes. One reader task owns the socket (``live``: ``websockets``
allows one ``recv`` at a time) and hands each reply to the request waiting for its ``rid``;
the REPL sends one request at a time and waits for its reply (``--timeout``). The reader also
feeds every message to a ``MirrorTracker``, so ``:state`` shows the player as the client sees
it and says when the mirror lost track of the server's versions.

On a terminal the prompt has history (``$WSPROBE_HISTORY``, default ``~/.wsprobe_history``)
and completion of tags, fields, enum values, references and commands; pushes are printed
above it. Otherwise lines are read from stdin without a prompt and printed the same way,
with colours only if stdout is a terminal. ``NO_COLOR`` (set, not empty) turns colours off.

Exit status: 0 when the session ended by ``:quit``, Ctrl-D or the end of stdin — error
replies and lines refused locally are part of a normal session and do not change it; 2 when
the session failed: no connection or a refused handshake, a refused ``session.hello``, the
server closing the connection, or a request left without a reply within the timeout (the
session goes on after a timeout, but ends with 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TextIO

import msgspec
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session
from prompt_toolkit.history import FileHistory, History
from prompt_toolkit.input import Input
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.patch_stdout import patch_stdout

from protocol.schema import json_schema
from tools.wsprobe import common, ops
from tools.wsprobe.client import HandshakeRefusedError, Message, ProbeClient, ProbeError
from tools.wsprobe.live import Arrival, LiveConnection, SessionClosedError
from tools.wsprobe.mirror import state_digest
from tools.wsprobe.repl_input import (
    ALL_TAGS,
    COMMANDS,
    IterLines,
    LineSource,
    Outgoing,
    PromptLines,
    ReplCompleter,
    StdinLines,
    find_operation,
    parse_line,
)
from tools.wsprobe.repl_render import (
    PT_STYLE,
    Fragments,
    PromptSink,
    Sink,
    TextSink,
    colour_enabled,
    pretty,
    render_message,
    render_status,
    text_line,
)


def history_path(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("WSPROBE_HISTORY") or Path.home() / ".wsprobe_history")


# --- the REPL ----------------------------------------------------------------------------


class Repl:
    """Reads lines, runs commands, sends requests one at a time; a ``LiveConnection``'s
    reader prints everything that arrives, in arrival order, with the mirror's status, and
    reports requests and pushes to the recorder."""

    def __init__(
        self,
        client: ProbeClient,
        sink: Sink,
        *,
        reply_timeout: float,
        recorder: common.Recorder | None,
    ) -> None:
        self.sink = sink
        self.reply_timeout = reply_timeout
        self.recorder = recorder
        self.live = LiveConnection(client, on_message=self._arrived, on_unreadable=self._unreadable)
        self.failed = False
        """A request got no reply in time: the session goes on, but ends with exit 2."""

    async def hello(self, token: str) -> bool:
        """Say ``session.hello``; the reader shows the welcome. False if it was refused."""
        message: Message = {"t": "session.hello", "token": token}
        hello = Outgoing(message, message)  # a recorder learns the player from the welcome
        reply = await self.request(hello)
        return reply is not None and reply.get("t") == "session.welcome"

    async def run(self, source: LineSource) -> None:
        """Until the end of input or ``:quit``. Raises: SessionClosedError."""
        while True:
            line = await self.live.until_closed(source.read())
            if line is None:
                return
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(":"):
                if not self.command(line):
                    return
                continue
            try:
                out = parse_line(line, self.live.state(), self.live.player_id)
            except ops.OperationError as exc:
                self.sink.show(text_line("local", f"!! not sent: {exc}"))
                continue
            if await self.request(out) is None:
                self.failed = True

    async def request(self, out: Outgoing) -> Message | None:
        """Send ``out`` and wait for its reply (printed by the reader); None on timeout.

        Raises:
            SessionClosedError: the connection closed before the reply.
        """
        if self.live.closed.is_set():
            raise SessionClosedError(self.live.close_reason)
        wire = self.live.with_rid(out.wire)
        self.sink.show(text_line("sent", ">> " + msgspec.json.encode(wire).decode()))
        try:
            async with asyncio.timeout(self.reply_timeout):
                return await self.live.request(wire, note=out.recorded)
        except TimeoutError:
            wait = f"{self.reply_timeout:g}s"
            self.sink.show(text_line("local", f"!! no reply within {wait} (rid {wire['rid']})"))
            return None

    def _arrived(self, arrival: Arrival) -> None:
        msg = arrival.msg
        self.sink.show(render_message(msg, arrival.rtt_ms, late=arrival.stray))
        if arrival.mirror_error is not None:
            self.sink.show(text_line("warn", f"   mirror: {arrival.mirror_error}"))
        elif arrival.mirror is not None:
            self.sink.show(render_status(arrival.mirror))
        if self.recorder is None:
            return
        if arrival.rtt_ms is not None:  # the reply to a request: recorded as it was written
            if arrival.note is not None:
                self.recorder.request(arrival.note, msg)
        elif "rid" not in msg:
            self.recorder.push(msg)

    def _unreadable(self, exc: ProbeError) -> None:
        self.sink.show(text_line("local", f"!! {exc}"))

    def command(self, line: str) -> bool:
        """Run a ``:command``; False for ``:quit``."""
        name, *args = line.split()
        if name in (":quit", ":q"):
            return False
        handlers: dict[str, Callable[[list[str]], Fragments]] = {
            ":help": lambda _: _help(),
            ":tags": lambda _: _tags(),
            ":schema": _schema,
            ":state": lambda _: self._state(),
        }
        handler = handlers.get(name)
        if handler is None:
            known = " ".join(COMMANDS)
            self.sink.show(text_line("local", f"!! unknown command {name}; commands: {known}"))
        else:
            self.sink.show(handler(args))
        return True

    def _state(self) -> Fragments:
        tracker = self.live.tracker
        if tracker is None:
            return text_line("local", "!! no mirror: connect with --token or say session.hello")
        state = tracker.mirror.state
        header = f"== mirror v{state.version}  digest {state_digest(state)}"
        body = [("", pretty(msgspec.to_builtins(state)) + "\n")]
        held = tracker.mirror.pending
        if not tracker.in_sync:
            note = "  OUT OF SYNC: a change did not continue its version; reconnect to reload"
            return [("error", header + note + "\n"), *body]
        if held:
            note = f"  {held} later batch(es) held until the changes before them arrive"
            return [("warn", header + note + "\n"), *body]
        return [("ok", header + "  in sync\n"), *body]


def _help() -> Fragments:
    lines = [
        "tag field=value ...   a request: short name or full tag (:tags), fields of its Struct;",
        "                      plain values fill the fields in order; @cloth_cap, @bread.1 and",
        "                      @me name the mirrored player's items and id",
        '{"t": ..., ...}       a raw JSON message, sent as it is (a rid is added if absent)',
        *(f"{name:21} {text}" for name, text in COMMANDS.items()),
        "Tab completes tags, fields, values and references; replies show their round trip.",
    ]
    return [("info", "\n".join(lines) + "\n")]


def _tags() -> Fragments:
    lines = []
    for tag in ALL_TAGS:
        op = find_operation(tag)
        short = op.name if op.name != tag else "-"
        lines.append(f"{tag:28} {short:8} {op.summary}")
    return [("info", "\n".join(lines) + "\n")]


_REFS = re.compile(r'"#/\$defs/([^"]+)"')


@cache
def _schema_defs() -> dict[str, object]:
    defs = json_schema()["$defs"]
    assert isinstance(defs, dict)
    return defs


def _schema(args: list[str]) -> Fragments:
    if len(args) != 1:
        return text_line("local", "!! usage: :schema TAG (a tag or short name, see :tags)")
    try:
        op = find_operation(args[0])
    except ops.OperationError as exc:
        return text_line("local", f"!! {exc}")
    defs = _schema_defs()
    schema = defs[op.request.__name__]
    # Add the definitions it refers to (none for today's requests), so it reads alone.
    refs = set(_REFS.findall(msgspec.json.encode(schema).decode()))
    shown: dict[str, object] = {op.request.__name__: schema}
    while refs - shown.keys():
        name = (refs - shown.keys()).pop()
        shown[name] = defs[name]
        refs |= set(_REFS.findall(msgspec.json.encode(defs[name]).decode()))
    body = shown[op.request.__name__] if len(shown) == 1 else shown
    return [("info", f"== {op.tag} ({op.request.__name__})\n"), ("", pretty(body) + "\n")]


# --- entry points ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineIO:
    """Read lines without a prompt (stdin when ``lines`` is None); print plain text."""

    lines: AsyncIterable[str] | None = None
    out: TextIO | None = None
    colour: bool = False


@dataclass(frozen=True, slots=True)
class PromptIO:
    """A prompt_toolkit prompt (the terminal when ``input``/``output`` are None)."""

    input: Input | None = None
    output: Output | None = None
    history: History | None = None
    colour: bool = True


async def run_repl(
    options: common.ConnectOptions,
    token: str | None,
    io: LineIO | PromptIO,
    *,
    reply_timeout: float = 10.0,
    recorder: common.Recorder | None = None,
    err: TextIO | None = None,
) -> int:
    """Connect, say hello with ``token`` (if any), run the REPL; the exit status.

    Each request waits ``reply_timeout`` seconds for its reply. ``recorder`` hears every
    exchange and push, and is closed when the session ends (also when it failed).
    """
    err = err if err is not None else sys.stderr
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(io, LineIO):
                sink, source = _line_mode(io)
            else:
                # The reader task starts inside this app session, so its prints find the
                # prompt (``print_formatted_text`` prints above a running prompt, redraws it).
                stack.enter_context(create_app_session(input=io.input, output=io.output))
                stack.enter_context(patch_stdout(raw=True))
                sink, source = _prompt_mode(io)
            return await _session(
                options,
                token,
                sink,
                source,
                reply_timeout=reply_timeout,
                recorder=recorder,
                err=err,
            )
    finally:
        if recorder is not None:
            recorder.close()


SourceFactory = Callable[[LiveConnection], LineSource]


def _line_mode(io: LineIO) -> tuple[Sink, SourceFactory]:
    lines = StdinLines(sys.stdin.fileno()) if io.lines is None else IterLines(io.lines)
    return TextSink(io.out if io.out is not None else sys.stdout, io.colour), lambda _: lines


def _prompt_mode(io: PromptIO) -> tuple[Sink, SourceFactory]:
    def source(live: LiveConnection) -> LineSource:
        session: PromptSession[str] = PromptSession(
            history=FileHistory(str(history_path())) if io.history is None else io.history,
            completer=ReplCompleter(_templates_of(live)),
            complete_while_typing=True,
            style=PT_STYLE,
            color_depth=None if io.colour else ColorDepth.MONOCHROME,
            input=io.input,
            output=io.output,
        )
        return PromptLines(session)

    return PromptSink(io.output, io.colour), source


def _templates_of(live: LiveConnection) -> Callable[[], list[str]]:
    def templates() -> list[str]:
        if live.tracker is None:
            return []
        return [item.template for item in live.tracker.mirror.state.items.values()]

    return templates


async def _session(
    options: common.ConnectOptions,
    token: str | None,
    sink: Sink,
    make_source: SourceFactory,
    *,
    reply_timeout: float,
    recorder: common.Recorder | None,
    err: TextIO,
) -> int:
    try:
        client = await options.open()
    except HandshakeRefusedError as exc:
        print(f"wsprobe: {exc}", file=err)
        return common.EXIT_FAILURE
    repl = Repl(client, sink, reply_timeout=reply_timeout, recorder=recorder)
    try:
        if token is not None and not await repl.hello(token):
            print("wsprobe: session.hello was refused or not answered", file=err)
            return common.EXIT_FAILURE
        await repl.run(make_source(repl.live))
    except SessionClosedError as exc:
        print(f"wsprobe: {exc}", file=err)
        return common.EXIT_FAILURE
    finally:
        await repl.live.close()
    return common.EXIT_FAILURE if repl.failed else common.EXIT_OK


def _run_cli(args: argparse.Namespace, recorder: common.Recorder | None) -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    colour = colour_enabled(sys.stdout)
    io: LineIO | PromptIO = PromptIO(colour=colour) if interactive else LineIO(colour=colour)
    options = common.options_from_args(args)
    try:
        return asyncio.run(
            run_repl(options, args.token, io, reply_timeout=args.timeout, recorder=recorder)
        )
    except KeyboardInterrupt:  # Ctrl-C while waiting for a reply (at the prompt it clears)
        print("wsprobe: interrupted", file=sys.stderr)
        return common.EXIT_FAILURE


def _cmd_connect(args: argparse.Namespace) -> int:
    return _run_cli(args, None)


def _cmd_record(args: argparse.Namespace) -> int:
    from tools.wsprobe.script import ScriptRecorder  # the script runner's half of record

    options = common.options_from_args(args)
    return _run_cli(args, ScriptRecorder(Path(args.output), options, args.token))


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_connection_arguments(parser)
    parser.add_argument("--token", help="say session.hello with this token first (dev:<name>)")
    parser.add_argument(
        "--timeout", type=common.positive_float, default=10.0, help="seconds to wait for each reply"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``connect`` and ``record`` subcommands."""
    epilog = __doc__.split("Exit status: ", 1)[1] if __doc__ else None
    connect = sub.add_parser(
        "connect",
        help="interactive session: requests, raw JSON, pushes, the mirrored state",
        description="Interactive session with a Gearhall server (:help inside).",
        epilog="Exit status: " + epilog if epilog else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_session_arguments(connect)
    connect.set_defaults(func=_cmd_connect)
    record = sub.add_parser(
        "record",
        help="an interactive session saved as a script for `wsprobe run`",
        description="Like connect; every request, reply and push is written to FILE.",
        epilog="Exit status: " + epilog if epilog else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_session_arguments(record)
    record.add_argument("-o", "--output", required=True, metavar="FILE", help="script to write")
    record.set_defaults(func=_cmd_record)

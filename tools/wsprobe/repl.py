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
round-trip time), error replies, pushes. One reader task owns the socket (``websockets``
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
import shlex
import sys
import threading
import time
import types
import typing
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol, TextIO, TypeVar

import msgspec
from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History
from prompt_toolkit.input import Input
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style
from websockets.exceptions import ConnectionClosed

from protocol.messages import CLIENT_MESSAGES, tag_of
from protocol.schema import json_schema
from tools.wsprobe import common, ops
from tools.wsprobe.client import HandshakeRefusedError, Message, ProbeClient, ProbeError
from tools.wsprobe.mirror import MirrorTracker, state_digest

T = TypeVar("T")
Fragments = list[tuple[str, str]]
"""Styled text: (style name, text) pairs; the style names are the keys of ``_STYLES``."""

PROMPT = "gearhall> "
COMMANDS: dict[str, str] = {
    ":help": "this help",
    ":tags": "every client message: tag, short name, summary",
    ":schema": ":schema TAG — the JSON Schema of a client message (tag or short name)",
    ":state": "the mirrored player state, its version and digest",
    ":quit": "end the session (also :q, Ctrl-D)",
}

# style name -> (prompt_toolkit style, SGR parameters for plain terminals)
_STYLES: dict[str, tuple[str, str]] = {
    "ok": ("ansigreen bold", "1;32"),
    "error": ("bg:ansired ansiwhite bold", "1;97;41"),
    "errbody": ("ansired", "31"),
    "push": ("ansimagenta bold", "1;35"),
    "sent": ("ansibrightblack", "90"),
    "info": ("ansicyan", "36"),
    "warn": ("ansiyellow bold", "1;33"),
    "local": ("ansired", "31"),
}
_PT_STYLE = Style.from_dict({name: pt for name, (pt, _) in _STYLES.items()})


class SessionClosedError(ProbeError):
    """The server closed the connection (or it dropped); the message says how."""


def colour_enabled(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Colours only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    return not environ.get("NO_COLOR") and stream.isatty()


def history_path(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("WSPROBE_HISTORY") or Path.home() / ".wsprobe_history")


# --- rendering ---------------------------------------------------------------------------


_WIDTH = 96


def _pretty(value: object, indent: int = 0, used: int = 0) -> str:
    """Indented JSON that stays readable for game state: a nested value that fits on its line
    is written on it (an effect, a location), a long list of scalars fills lines (the cells
    of a compartment), anything else is indented by two. ``used``: columns already taken."""
    if not (isinstance(value, dict | list) and value):
        return _json(value)
    flat = _spaced(value)
    if indent and used + len(flat) < _WIDTH:
        return flat
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            prefix = f"{inner}{_json(str(key))}: "
            items.append(prefix + _pretty(item, indent + 2, len(prefix)))
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if any(isinstance(item, dict | list) for item in value):
        items = [inner + _pretty(item, indent + 2, len(inner)) for item in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    lines, line = [], inner
    for item in value:
        word = _json(item) + ", "
        if len(line) + len(word) > _WIDTH and line.strip():
            lines.append(line.rstrip())
            line = inner
        line += word
    lines.append(line.rstrip().rstrip(","))
    return "[\n" + "\n".join(lines) + f"\n{pad}]"


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _spaced(value: object) -> str:
    """One-line JSON with a space after each separator (msgspec writes none)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json(str(k))}: {_spaced(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_spaced(v) for v in value) + "]"
    return _json(value)


def render_message(msg: Message, rtt_ms: float | None, *, late: bool = False) -> Fragments:
    """A reply (``rtt_ms`` set), a late reply or a push, as a header line and its body."""
    kind, rid = msg.get("t"), msg.get("rid")
    took = f"  {rtt_ms:.1f} ms" if rtt_ms is not None else ""
    if late:
        took = "  (no request is waiting for it: late?)"
    if "rid" not in msg:
        return [("push", f"** push {kind}"), ("", "\n" + _pretty(msg) + "\n")]
    if kind == "error":
        header = f"!! error {msg.get('code')}: {msg.get('message')}  rid={_json(rid)}{took}"
        return [("error", header), ("errbody", "\n" + _pretty(msg) + "\n")]
    header = f"<< {kind}  rid={_json(rid)}{took}"
    if kind == "session.welcome":
        return [("ok", header), ("info", "\n" + _welcome_summary(msg) + "\n")]
    return [("ok", header), ("", "\n" + _pretty(msg) + "\n")]


def _welcome_summary(msg: Message) -> str:
    state = msg.get("state")
    items = state.get("items") if isinstance(state, dict) else None
    held = f"{len(items)} items" if isinstance(items, dict) else "resumed (no full state)"
    return (
        f"   player {msg.get('player_id')} · version {msg.get('version')} · {held} · "
        f"server {msg.get('server_version')} · protocol {msg.get('protocol_version')}"
        "   (:state shows the state, :help the commands)"
    )


def render_status(status: Message) -> Fragments:
    """A mirror status line, or nothing when it only says "still in sync, nothing applied"."""
    version, server = status.get("version"), status.get("server_version", status.get("version"))
    if not status.get("in_sync"):
        return [
            ("warn", f"   mirror OUT OF SYNC at v{version} (server at v{server}): see :state\n")
        ]
    applied = status.get("applied")
    if applied:
        digest = status.get("digest")
        return [("sent", f"   mirror v{version} (+{applied}), in sync, digest {digest}\n")]
    return []


def to_ansi(fragments: Fragments, colour: bool) -> str:
    if not colour:
        return "".join(text for _, text in fragments)
    out = []
    for style, text in fragments:
        sgr = _STYLES[style][1] if style else ""
        # One SGR span per line, so a line never starts inside another line's colour.
        parts = text.split("\n")
        out.append("\n".join(f"\x1b[{sgr}m{p}\x1b[0m" if sgr and p else p for p in parts))
    return "".join(out)


class Sink(Protocol):
    def show(self, fragments: Fragments) -> None:
        """Print ``fragments`` (which end with a newline)."""


class TextSink:
    """Line mode: plain text, SGR colours only when asked."""

    def __init__(self, out: TextIO, colour: bool) -> None:
        self._out, self._colour = out, colour

    def show(self, fragments: Fragments) -> None:
        self._out.write(to_ansi(fragments, self._colour))
        self._out.flush()


class PromptSink:
    """Prompt mode: printed above the prompt when it is shown, the prompt redrawn after."""

    def __init__(self, output: Output | None, colour: bool) -> None:
        self._output, self._colour = output, colour

    def show(self, fragments: Fragments) -> None:
        styled = [(f"class:{s}" if s and self._colour else "", text) for s, text in fragments]
        print_formatted_text(
            FormattedText(styled),
            end="",
            style=_PT_STYLE,
            output=self._output,
            color_depth=None if self._colour else ColorDepth.MONOCHROME,
            include_default_pygments_style=False,
            flush=True,
        )


def _line(style: str, text: str) -> Fragments:
    return [(style, text + "\n")]


# --- input lines -------------------------------------------------------------------------


class LineSource(Protocol):
    async def read(self) -> str | None:
        """The next line, None at the end of input."""


class IterLines:
    """Lines from an async iterable (tests, or any other producer)."""

    def __init__(self, lines: AsyncIterable[str]) -> None:
        self._lines = aiter(lines)

    async def read(self) -> str | None:
        try:
            return await anext(self._lines)
        except StopAsyncIteration:
            return None


class StdinLines:
    """Lines from a file descriptor that may be a pipe, a file or a socket.

    A daemon thread does the blocking reads (``connect_read_pipe`` refuses regular files)
    with ``os.read``, not ``sys.stdin``: a thread blocked in the buffered reader holds its
    lock, and the interpreter aborts if it must flush that reader at exit.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffer = b""
        self._eof = False
        self._started = False

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            try:
                loop.call_soon_threadsafe(self._chunks.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: nobody reads any more
                return
            if not chunk:
                return

    async def read(self) -> str | None:
        if not self._started:
            self._started = True
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._pump, args=(loop,), daemon=True).start()
        while b"\n" not in self._buffer and not self._eof:
            chunk = await self._chunks.get()
            self._buffer += chunk
            self._eof = not chunk
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")


class PromptLines:
    """Lines typed at a prompt_toolkit prompt; Ctrl-C clears the line, Ctrl-D ends."""

    def __init__(self, session: PromptSession[str]) -> None:
        self._session = session

    async def read(self) -> str | None:
        while True:
            try:
                return await self._session.prompt_async(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return None


# --- operations, completion --------------------------------------------------------------

_ALL_TAGS = [tag_of(cls) for cls in CLIENT_MESSAGES]


def find_operation(name: str) -> ops.Operation:
    """Any client message, ``session.hello`` included: in the REPL it is a request like any
    other, and a welcome it gets (re)starts the mirror.

    Raises:
        ops.OperationError: neither a short name nor a client message tag.
    """
    op = ops.find_message(name)
    if op is None:
        return ops.find(name)  # raises, listing the operations
    return op


def _literal_values(tp: object) -> list[str]:
    """The values a field can be completed with: enum members, and null when optional."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _literal_values(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return [str(a) for a in typing.get_args(tp)]
    if origin in (typing.Union, types.UnionType):
        return [v for a in typing.get_args(tp) for v in _literal_values(a)]
    if tp is type(None):
        return ["null"]
    if tp is bool:
        return ["true", "false"]
    return []


class ReplCompleter(Completer):
    """Completes ``:commands``, message tags (short names and full tags), ``field=`` names of
    the tag already typed, enum values after ``field=``, and ``@`` references (``templates``
    gives the templates the mirrored player holds)."""

    def __init__(self, templates: Callable[[], Iterable[str]] = tuple) -> None:
        self.templates = templates

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor.lstrip()
        word = document.get_word_before_cursor(WORD=True)
        if text.startswith("{"):
            return
        if " " not in text:
            if text.startswith(":"):
                yield from _matching(word, COMMANDS.items())
            else:
                yield from _matching(word, _tag_choices())
            return
        first, *given = text.split()
        if first == ":schema":
            typing_first_argument = len(given) == (0 if text.endswith(" ") else 1)
            if typing_first_argument:
                yield from _matching(word, _tag_choices())
            return
        try:
            op = find_operation(first)
        except ops.OperationError:
            return
        name, eq, value = word.partition("=")
        if not eq:
            name, value = "", word  # a value given by position, or a field name
        if value.startswith("@"):
            held = sorted(set(self.templates()))
            yield from _matching(value, ((r, "") for r in ["@me", *(f"@{t}" for t in held)]))
        elif eq:
            field = next((f for f in op.fields if f.name == name), None)
            if field is not None:
                yield from _matching(value, ((v, "") for v in _literal_values(field.type)))
        else:
            typed = {arg.partition("=")[0] for arg in given if "=" in arg}
            fields = ((f"{f.name}=", f.describe()) for f in op.fields if f.name not in typed)
            yield from _matching(word, fields)


def _tag_choices() -> Iterator[tuple[str, str]]:
    for name, op in ops.OPERATIONS.items():
        if name != op.tag:
            yield name, op.tag
    for tag in _ALL_TAGS:
        yield tag, find_operation(tag).summary


def _matching(prefix: str, choices: Iterable[tuple[str, str]]) -> Iterator[Completion]:
    for text, meta in choices:
        if text.startswith(prefix):
            yield Completion(text, start_position=-len(prefix), display_meta=meta)


# --- lines to messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    wire: Message
    """What is sent (a ``rid`` is added when it has none)."""
    recorded: Message | None
    """The message as the user wrote it, for a recorder: references unresolved, no rid."""


def parse_line(line: str, state: Mapping[str, object] | None, player_id: object) -> Outgoing:
    """A request line (``tag field=value ...``) or a raw JSON object, as a message to send.

    ``state`` is the mirrored state the references resolve against (None: no session yet).

    Raises:
        ops.OperationError: the line is not JSON, names no operation, or its fields do not
            validate: nothing must be sent.
    """
    if line.startswith("{"):
        try:
            msg = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise ops.OperationError(f"not a JSON object: {exc}") from None
        if not isinstance(msg, dict):  # a "{" line that decodes is an object; kept for mypy
            raise ops.OperationError("a raw message must be a JSON object")
        return Outgoing(msg, {k: v for k, v in msg.items() if k != "rid"})
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ops.OperationError(f"cannot split the line: {exc}") from None
    op = find_operation(words[0])
    raw = ops.parse_args(op, words[1:])
    if state is None and any(v.startswith("@") for v in raw.values()):
        raise ops.OperationError(
            "references (@...) need the player's state: connect with --token, "
            "or say session.hello first"
        )
    resolved = ops.resolve_refs(raw, state, player_id)
    wire = ops.build_request(op, resolved)
    recorded: Message = {"t": op.tag}
    for name, text in raw.items():
        recorded[name] = text if resolved[name] != text else wire[name]
    return Outgoing(wire, recorded)


# --- the connection: one reader, replies by rid, the mirror -------------------------------


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Message]
    sent_at: float
    recorded: Message | None


def _rid_key(rid: object) -> bytes:
    # Any JSON value can be a rid in a raw message (the server must refuse most of them);
    # keyed by its encoding, an unhashable rid still finds its reply.
    return msgspec.json.encode(rid)


class Connection:
    """The socket's only reader: prints what arrives, in arrival order, mirrors the player,
    completes the request waiting for each reply and reports both to the recorder."""

    def __init__(
        self,
        client: ProbeClient,
        sink: Sink,
        *,
        reply_timeout: float,
        recorder: common.Recorder | None,
    ) -> None:
        self.client = client
        self.sink = sink
        self.reply_timeout = reply_timeout
        self.recorder = recorder
        self.tracker: MirrorTracker | None = None
        self.closed = asyncio.Event()
        self.close_reason = "the connection is closed"
        self._pending: dict[bytes, _Pending] = {}
        self._reader = asyncio.create_task(self._read_loop(), name="wsprobe reader")

    def state(self) -> dict[str, object] | None:
        if self.tracker is None:
            return None
        state = msgspec.to_builtins(self.tracker.mirror.state)
        assert isinstance(state, dict)
        return state

    async def request(self, out: Outgoing) -> Message | None:
        """Send ``out`` and wait for its reply (printed by the reader); None on timeout.

        Raises:
            SessionClosedError: the connection closed before the reply.
        """
        if self.closed.is_set():
            raise SessionClosedError(self.close_reason)
        wire = out.wire if "rid" in out.wire else {**out.wire, "rid": self.client.next_rid()}
        key = _rid_key(wire["rid"])
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = _Pending(future, time.perf_counter(), out.recorded)
        self.sink.show(_line("sent", ">> " + msgspec.json.encode(wire).decode()))
        try:
            await self.client.send_frame(self.client.codec.encode(wire))
            async with asyncio.timeout(self.reply_timeout):
                return await future  # the reader fails it if the connection closes
        except ConnectionClosed:
            await self.closed.wait()  # the reader saw it too, and says why
            raise SessionClosedError(self.close_reason) from None
        except TimeoutError:
            wait = f"{self.reply_timeout:g}s"
            self.sink.show(_line("local", f"!! no reply within {wait} (rid {wire['rid']})"))
            return None
        finally:
            self._pending.pop(key, None)

    async def until_closed(self, work: Awaitable[T]) -> T:
        """``work``'s result, unless the connection closes first (then ``work`` is cancelled).

        Raises:
            SessionClosedError: the connection closed first.
        """
        task = asyncio.ensure_future(work)
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise SessionClosedError(self.close_reason)
        return task.result()

    async def close(self) -> None:
        await self.client.close()
        await self._reader

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self.client.recv_frame()
                arrived = time.perf_counter()
                try:
                    msg = self.client.codec.decode(frame)
                except ProbeError as exc:
                    self.sink.show(_line("local", f"!! {exc}"))
                    continue
                self._on_message(msg, arrived)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                reason = f": {exc.rcvd.reason}" if exc.rcvd.reason else ""
                self.close_reason = (
                    f"the server closed the connection (code {exc.rcvd.code}{reason})"
                )
            else:
                self.close_reason = "the connection dropped without a close frame (1006)"
        except Exception as exc:  # a bug here must end the session loudly, not hang it
            self.close_reason = f"wsprobe's reader failed: {type(exc).__name__}: {exc}"
        finally:
            self.closed.set()
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(SessionClosedError(self.close_reason))

    def _on_message(self, msg: Message, arrived: float) -> None:
        pending: _Pending | None = None
        if "rid" in msg:
            pending = self._pending.pop(_rid_key(msg["rid"]), None)
            if pending is None and msg["rid"] is None and msg.get("t") == "error":
                # The server could not read a frame, so not its rid either: it answers the
                # one request in flight (there is at most one).
                pending = next(iter(self._pending.values()), None)
                self._pending.clear()
        rtt = (arrived - pending.sent_at) * 1000 if pending is not None else None
        late = "rid" in msg and pending is None
        self.sink.show(render_message(msg, rtt, late=late))
        self._mirror(msg)
        if pending is not None:
            if self.recorder is not None and pending.recorded is not None:
                self.recorder.request(pending.recorded, msg)
            if not pending.future.done():
                pending.future.set_result(msg)
        elif "rid" not in msg and self.recorder is not None:
            self.recorder.push(msg)

    def _mirror(self, msg: Message) -> None:
        try:
            if msg.get("t") == "session.welcome":
                if isinstance(msg.get("state"), dict):
                    self.tracker = MirrorTracker(msg)
                elif self.tracker is not None:
                    self.sink.show(render_status(self.tracker.resumed(msg)))
                return
            status = self.tracker.observe(msg) if self.tracker is not None else None
        except ProbeError as exc:
            self.sink.show(_line("warn", f"   mirror: {exc}"))
            if self.tracker is not None:
                self.tracker.in_sync = False
            return
        if status is not None:
            self.sink.show(render_status(status))


# --- the REPL ----------------------------------------------------------------------------


class Repl:
    """Reads lines, runs commands, sends requests one at a time."""

    def __init__(self, conn: Connection, sink: Sink) -> None:
        self.conn = conn
        self.sink = sink
        self.failed = False
        """A request got no reply in time: the session goes on, but ends with exit 2."""

    async def hello(self, token: str) -> bool:
        """Say ``session.hello``; the reader shows the welcome. False if it was refused."""
        message: Message = {"t": "session.hello", "token": token}
        hello = Outgoing(message, message)  # a recorder learns the player from the welcome
        reply = await self.conn.request(hello)
        return reply is not None and reply.get("t") == "session.welcome"

    async def run(self, source: LineSource) -> None:
        """Until the end of input or ``:quit``. Raises: SessionClosedError."""
        while True:
            line = await self.conn.until_closed(source.read())
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
                out = parse_line(line, self.conn.state(), self._player_id())
            except ops.OperationError as exc:
                self.sink.show(_line("local", f"!! not sent: {exc}"))
                continue
            if await self.conn.request(out) is None:
                self.failed = True

    def _player_id(self) -> object:
        return self.conn.tracker.player_id if self.conn.tracker is not None else None

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
            self.sink.show(_line("local", f"!! unknown command {name}; commands: {known}"))
        else:
            self.sink.show(handler(args))
        return True

    def _state(self) -> Fragments:
        tracker = self.conn.tracker
        if tracker is None:
            return _line("local", "!! no mirror: connect with --token or say session.hello")
        state = tracker.mirror.state
        header = f"== mirror v{state.version}  digest {state_digest(state)}"
        body = [("", _pretty(msgspec.to_builtins(state)) + "\n")]
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
    for tag in _ALL_TAGS:
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
        return _line("local", "!! usage: :schema TAG (a tag or short name, see :tags)")
    try:
        op = find_operation(args[0])
    except ops.OperationError as exc:
        return _line("local", f"!! {exc}")
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
    return [("info", f"== {op.tag} ({op.request.__name__})\n"), ("", _pretty(body) + "\n")]


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


SourceFactory = Callable[["Connection"], LineSource]


def _line_mode(io: LineIO) -> tuple[Sink, SourceFactory]:
    lines = StdinLines(sys.stdin.fileno()) if io.lines is None else IterLines(io.lines)
    return TextSink(io.out if io.out is not None else sys.stdout, io.colour), lambda _: lines


def _prompt_mode(io: PromptIO) -> tuple[Sink, SourceFactory]:
    def source(conn: Connection) -> LineSource:
        session: PromptSession[str] = PromptSession(
            history=FileHistory(str(history_path())) if io.history is None else io.history,
            completer=ReplCompleter(_templates_of(conn)),
            complete_while_typing=True,
            style=_PT_STYLE,
            color_depth=None if io.colour else ColorDepth.MONOCHROME,
            input=io.input,
            output=io.output,
        )
        return PromptLines(session)

    return PromptSink(io.output, io.colour), source


def _templates_of(conn: Connection) -> Callable[[], list[str]]:
    def templates() -> list[str]:
        if conn.tracker is None:
            return []
        return [item.template for item in conn.tracker.mirror.state.items.values()]

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
    conn = Connection(client, sink, reply_timeout=reply_timeout, recorder=recorder)
    repl = Repl(conn, sink)
    try:
        if token is not None and not await repl.hello(token):
            print("wsprobe: session.hello was refused or not answered", file=err)
            return common.EXIT_FAILURE
        await repl.run(make_source(conn))
    except SessionClosedError as exc:
        print(f"wsprobe: {exc}", file=err)
        return common.EXIT_FAILURE
    finally:
        await conn.close()
    return common.EXIT_FAILURE if repl.failed else common.EXIT_OK


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


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
        "--timeout", type=_positive_float, default=10.0, help="seconds to wait for each reply"
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

"""What the REPL reads: input lines, their completion, and the messages they become.

A line comes from a :class:`LineSource` — a prompt_toolkit prompt (:class:`PromptLines`,
completed by :class:`ReplCompleter`), stdin (:class:`StdinLines`) or any async iterable
(:class:`IterLines`) — and is either a ``:command`` (:data:`COMMANDS`) or a request that
:func:`parse_line` turns into an :class:`Outgoing` message: ``tag field=value ...`` checked
against the protocol Struct with ``@refs`` resolved, or raw JSON sent as it is.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import threading
import types
import typing
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from protocol.base import tag_of
from protocol.messages import CLIENT_MESSAGES
from tools.wsprobe import ops
from tools.wsprobe.client import Message

PROMPT = "gearhall> "
COMMANDS: dict[str, str] = {
    ":help": "this help",
    ":tags": "every client message: tag, short name, summary",
    ":schema": ":schema TAG — the JSON Schema of a client message (tag or short name)",
    ":state": "the mirrored player state, its version and digest",
    ":quit": "end the session (also :q, Ctrl-D)",
}


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

ALL_TAGS = [tag_of(cls) for cls in CLIENT_MESSAGES]


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
    for tag in ALL_TAGS:
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

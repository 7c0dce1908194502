"""How the REPL shows things: messages, mirror status lines, colours, and where they go.

Text is built as :data:`Fragments` (style name, text) and shown by a :class:`Sink`: a
:class:`TextSink` writes plain text with SGR colours only when asked (line mode), a
:class:`PromptSink` prints above a running prompt_toolkit prompt. JSON is indented so that
game state stays readable (:func:`pretty`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol, TextIO

import msgspec
from prompt_toolkit import print_formatted_text
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.styles import Style

from tools.wsprobe.client import Message

Fragments = list[tuple[str, str]]
"""Styled text: (style name, text) pairs; the style names are the keys of ``_STYLES``."""

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
PT_STYLE = Style.from_dict({name: pt for name, (pt, _) in _STYLES.items()})


def colour_enabled(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Colours only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    return not environ.get("NO_COLOR") and stream.isatty()


_WIDTH = 96


def pretty(value: object, indent: int = 0, used: int = 0) -> str:
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
            items.append(prefix + pretty(item, indent + 2, len(prefix)))
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if any(isinstance(item, dict | list) for item in value):
        items = [inner + pretty(item, indent + 2, len(inner)) for item in value]
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
        return [("push", f"** push {kind}"), ("", "\n" + pretty(msg) + "\n")]
    if kind == "error":
        header = f"!! error {msg.get('code')}: {msg.get('message')}  rid={_json(rid)}{took}"
        return [("error", header), ("errbody", "\n" + pretty(msg) + "\n")]
    header = f"<< {kind}  rid={_json(rid)}{took}"
    if kind == "session.welcome":
        return [("ok", header), ("info", "\n" + _welcome_summary(msg) + "\n")]
    return [("ok", header), ("", "\n" + pretty(msg) + "\n")]


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
            style=PT_STYLE,
            output=self._output,
            color_depth=None if self._colour else ColorDepth.MONOCHROME,
            include_default_pygments_style=False,
            flush=True,
        )


def text_line(style: str, text: str) -> Fragments:
    return [(style, text + "\n")]

"""The script file format of ``wsprobe run``: reading and checking it, variables, writing it.

Pure: no I/O beyond reading the file, no connection. :func:`parse_script` checks everything
that can be checked before connecting — keys, operation names and their fields, push tags,
JMESPath syntax, sessions, and that every ``${name}`` is defined by ``[vars]``, ``--var`` or an
earlier step's ``capture`` — so a script with a typo fails with exit 2 before it changes
anything on the server. The format itself is documented in ``tools/wsprobe/script.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import jmespath
import jmespath.exceptions

from protocol.base import Reply, tag_of
from protocol.messages import SERVER_MESSAGES
from tools.wsprobe import ops

Action = Literal["send", "raw", "hello", "expect_push", "wait_push"]
ACTIONS: tuple[Action, ...] = ("send", "raw", "hello", "expect_push", "wait_push")
_COMMON = ("session", "expect", "capture", "timeout", "note")
STEP_KEYS: dict[Action, tuple[str, ...]] = {
    "send": ("send", "body", "expect_error", *_COMMON),
    "raw": ("raw", "expect_error", *_COMMON),
    "hello": ("hello", "expect_error", *_COMMON),
    "expect_push": ("expect_push", *_COMMON),
    "wait_push": ("wait_push", *_COMMON),
}
TOP_KEYS = ("url", "vars", "sessions", "step")
SESSION_KEYS = ("token",)
# Server messages without a rid: the only tags a push step can wait for.
PUSH_TAGS: tuple[str, ...] = tuple(
    tag_of(cls)
    for cls in SERVER_MESSAGES
    if not issubclass(cls, Reply) and "rid" not in cls.__struct_fields__
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VAR = re.compile(r"\$(\$)?\{([^{}]*)\}")
_STEP_HEADER = re.compile(r"\s*\[\[\s*step\s*\]\]")


class ScriptError(ValueError):
    """The script is invalid (exit 2): the message names the file, the step and the key."""


class UndefinedVariableError(KeyError):
    """A ``${name}`` with no value; :attr:`name` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclasses.dataclass(frozen=True, slots=True)
class SessionSpec:
    name: str
    token: str | None
    """``None``: connect without ``session.hello`` (to test what an anonymous client gets)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    number: int
    """1-based, in file order."""
    line: int | None
    """The line of its ``[[step]]`` header, when the file has one per step."""
    action: Action
    session: str
    target: str
    """The request tag (``send``), the raw text (``raw``), ``session.hello`` (``hello``) or the
    push tag (``expect_push``, ``wait_push``)."""
    body: dict[str, object] = dataclasses.field(default_factory=dict)
    expect: dict[str, object] | None = None
    expect_error: str | None = None
    capture: dict[str, str] = dataclasses.field(default_factory=dict)
    timeout: float | None = None
    note: str | None = None

    @property
    def where(self) -> str:
        return f"step {self.number}" + (f" (line {self.line})" if self.line else "")

    @property
    def op(self) -> ops.Operation:
        """The operation of a ``send`` step (checked when the script was read)."""
        return ops.find(self.target)


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    path: Path
    url: str | None
    vars: dict[str, object]
    sessions: dict[str, SessionSpec]
    steps: tuple[Step, ...]


# --- variables -------------------------------------------------------------------------------


def substitute(value: object, variables: Mapping[str, object]) -> object:
    """``value`` with every ``${name}`` inside its strings replaced (recursively).

    A string that is exactly ``${name}`` becomes the variable's value with its type (a
    captured int stays an int); inside a longer string the value is written as text
    (``true``/``false`` for booleans, compact JSON for lists and tables). ``$${`` is a
    literal ``${``.

    Raises:
        UndefinedVariableError: a name has no value.
    """
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole is not None and whole[1] is None:
            return _lookup(whole[2], variables)
        return _VAR.sub(lambda m: _text(m, variables), value)
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    return value


def _lookup(name: str, variables: Mapping[str, object]) -> object:
    if name not in variables:
        raise UndefinedVariableError(name)
    return variables[name]


def _text(match: re.Match[str], variables: Mapping[str, object]) -> str:
    if match[1] is not None:  # $${name}: the text itself
        return match[0][1:]
    value = _lookup(match[2], variables)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def references(value: object) -> Iterator[str]:
    """Every variable name ``value`` refers to, in order (``$${`` escapes excluded)."""
    if isinstance(value, str):
        for match in _VAR.finditer(value):
            if match[1] is None:
                yield match[2]
    elif isinstance(value, dict):
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


# --- reading -----------------------------------------------------------------------------------


def load_script(path: Path, cli_vars: Iterable[str] = ()) -> Script:
    """Read and check a script; ``cli_vars`` are the names ``--var`` defines.

    Raises:
        ScriptError: unreadable, not TOML, or not a valid script.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"{path}: cannot read: {exc}") from None
    return parse_script(text, path, cli_vars)


def parse_script(text: str, path: Path, cli_vars: Iterable[str] = ()) -> Script:
    """Raises: :class:`ScriptError` (see :func:`load_script`)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScriptError(f"{path}: not valid TOML: {exc}") from None
    return _Reader(path, text).script(doc, set(cli_vars))


class _Reader:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.step_lines = [
            number
            for number, line in enumerate(text.splitlines(), start=1)
            if _STEP_HEADER.match(line)
        ]

    def fail(self, where: str, message: str) -> ScriptError:
        return ScriptError(f"{self.path}: {where}{': ' if where else ''}{message}")

    def script(self, doc: dict[str, object], cli_vars: set[str]) -> Script:
        self.check_keys("", doc, TOP_KEYS, "the top level")
        url = doc.get("url")
        if url is not None and not isinstance(url, str):
            raise self.fail("url", "must be a string")
        variables = self.table("[vars]", doc.get("vars", {}))
        for name, value in variables.items():
            if not _NAME.fullmatch(name):
                raise self.fail("[vars]", f"{name!r} is not a variable name ({_NAME.pattern})")
            self.check_value(f"[vars] {name}", value)
        sessions = self.sessions(doc.get("sessions", {}))
        raw_steps = doc.get("step", [])
        if not isinstance(raw_steps, list):
            raise self.fail("step", "write each step as a [[step]] table")
        if raw_steps and not sessions:
            raise self.fail("", "no sessions: declare one with [sessions.NAME] and a token")
        lines: list[int | None] = (
            list(self.step_lines) if len(self.step_lines) == len(raw_steps) else []
        )
        lines += [None] * (len(raw_steps) - len(lines))
        steps = tuple(
            self.step(number, line, raw, sessions)
            for number, (line, raw) in enumerate(zip(lines, raw_steps, strict=True), start=1)
        )
        used: set[str] = set()
        for step in steps:
            if step.action == "hello" and step.session in used:
                raise self.fail(
                    step.where,
                    f"hello: session {step.session!r} was opened by an earlier step (which "
                    "said hello); a hello step must be its session's first",
                )
            used.add(step.session)
        self.check_variables(url, variables.keys() | cli_vars, sessions, steps)
        return Script(self.path, url, variables, sessions, steps)

    def check_keys(
        self, where: str, table: Mapping[str, object], allowed: Iterable[str], what: str
    ) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(
                    where, f"unknown key {key!r}{hint}; {what} takes: {', '.join(allowed)}"
                )

    def table(self, where: str, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table")
        return value

    def check_value(self, where: str, value: object) -> None:
        """Messages hold JSON values: no TOML dates and times."""
        if isinstance(value, datetime.date | datetime.time):
            raise self.fail(where, f"{value} is a date/time; messages hold no such values")
        if isinstance(value, dict):
            for key, item in value.items():
                self.check_value(f"{where}.{key}", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check_value(f"{where}[{index}]", item)

    def sessions(self, value: object) -> dict[str, SessionSpec]:
        out: dict[str, SessionSpec] = {}
        for name, spec in self.table("[sessions]", value).items():
            where = f"[sessions.{name}]"
            table = self.table(where, spec)
            self.check_keys(where, table, SESSION_KEYS, "a session")
            token = table.get("token")
            if token is not None and not (isinstance(token, str) and token):
                raise self.fail(where, "token must be a non-empty string")
            out[name] = SessionSpec(name, token)
        return out

    def step(
        self, number: int, line: int | None, raw: object, sessions: Mapping[str, SessionSpec]
    ) -> Step:
        where = f"step {number}" + (f" (line {line})" if line else "")
        table = self.table(where, raw)
        actions = [a for a in ACTIONS if a in table]
        if len(actions) != 1:
            said = f"it has {', '.join(actions)}" if actions else "it has none"
            raise self.fail(where, f"a step does exactly one of {', '.join(ACTIONS)}; {said}")
        action = actions[0]
        self.check_keys(where, table, STEP_KEYS[action], f"a {action} step")
        if "expect" in table and "expect_error" in table:
            raise self.fail(where, "give expect or expect_error, not both")

        session = table.get("session", next(iter(sessions), ""))
        if not isinstance(session, str) or session not in sessions:
            known = ", ".join(sessions) or "none declared"
            raise self.fail(where, f"session: unknown session {session!r} (sessions: {known})")

        target = self.target(where, action, table[action], sessions[session])
        body = self.table(f"{where}: body", table.get("body", {}))
        if action == "send":
            names = [f.name for f in ops.find(target).fields]
            for key in body:
                if key not in names:
                    raise self.fail(
                        where,
                        f"body: {target} has no field {key!r}; fields: {', '.join(names) or '-'}",
                    )
        self.check_value(f"{where}: body", body)
        expect = table.get("expect")
        if expect is not None:
            expect = self.table(f"{where}: expect", expect)
            self.check_value(f"{where}: expect", expect)
        expect_error = table.get("expect_error")
        if expect_error is not None and not isinstance(expect_error, str):
            raise self.fail(where, "expect_error must be an error code (a string)")
        capture = self.capture(where, table.get("capture", {}))
        timeout = table.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < math.inf
        ):
            raise self.fail(where, "timeout must be a positive number of seconds")
        note = table.get("note")
        if note is not None and not isinstance(note, str):
            raise self.fail(where, "note must be a string")
        return Step(
            number,
            line,
            action,
            session,
            target,
            body,
            expect,
            expect_error,
            capture,
            None if timeout is None else float(timeout),
            note,
        )

    def target(self, where: str, action: Action, value: object, session: SessionSpec) -> str:
        if action == "hello":
            if value is not True:
                raise self.fail(where, "hello must be true")
            if session.token is None:
                raise self.fail(where, f"hello: session {session.name!r} has no token")
            return "session.hello"
        if not isinstance(value, str):
            raise self.fail(where, f"{action} must be a string")
        if action == "send":
            if value == "session.hello":
                raise self.fail(where, "send: say hello with a `hello = true` step")
            try:
                return ops.find(value).tag
            except ops.OperationError as exc:
                raise self.fail(where, f"send: {exc}") from None
        if action in ("expect_push", "wait_push") and value not in PUSH_TAGS:
            raise self.fail(
                where, f"{action}: {value!r} is not a push; pushes: {', '.join(PUSH_TAGS)}"
            )
        return value

    def capture(self, where: str, value: object) -> dict[str, str]:
        table = self.table(f"{where}: capture", value)
        out: dict[str, str] = {}
        for name, expression in table.items():
            if not _NAME.fullmatch(name):
                raise self.fail(where, f"capture: {name!r} is not a variable name")
            if not isinstance(expression, str):
                raise self.fail(where, f"capture.{name}: must be a JMESPath expression (string)")
            try:
                jmespath.compile(expression)
            except jmespath.exceptions.JMESPathError as exc:
                reason = " ".join(str(exc).split())
                raise self.fail(where, f"capture.{name}: bad JMESPath: {reason}") from None
            out[name] = expression
        return out

    def check_variables(
        self,
        url: str | None,
        defined: set[str],
        sessions: Mapping[str, SessionSpec],
        steps: Iterable[Step],
    ) -> None:
        """Each ``${name}`` must be defined before the step that uses it runs."""
        for name in references(url):
            if name not in defined:
                raise self.fail("url", _undefined(name))
        defined = set(defined)
        opened: set[str] = set()
        for step in steps:
            used = [
                step.body,
                step.expect,
                step.expect_error,
                step.target if step.action == "raw" else None,
            ]
            if step.session not in opened:
                opened.add(step.session)
                used.append(sessions[step.session].token)
            for name in references(used):
                if not _NAME.fullmatch(name):
                    raise self.fail(step.where, f"${{{name}}} is not a variable name")
                if name not in defined:
                    raise self.fail(step.where, _undefined(name))
            defined.update(step.capture)


def _undefined(name: str) -> str:
    return (
        f"undefined variable ${{{name}}}: define it in [vars], with --var {name}=VALUE, "
        "or capture it in an earlier step"
    )


def parse_var(text: str, defaults: Mapping[str, object]) -> tuple[str, object]:
    """``NAME=VALUE`` from ``--var``: the value takes the type of the ``[vars]`` default
    (int, float, bool, string); a variable without a default is a string.

    Raises:
        ScriptError: not ``NAME=VALUE``, or a value that does not fit the default's type.
    """
    name, eq, value = text.partition("=")
    if not eq or not _NAME.fullmatch(name):
        raise ScriptError(f"--var {text}: expected NAME=VALUE")
    default = defaults.get(name)
    try:
        if isinstance(default, bool):
            if value not in ("true", "false"):
                raise ValueError("expected true or false")
            return name, value == "true"
        if isinstance(default, int):
            return name, int(value)
        if isinstance(default, float):
            return name, float(value)
    except ValueError as exc:
        raise ScriptError(f"--var {text}: {exc}") from None
    return name, value


# --- writing -----------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_string(text: str) -> str:
    """A TOML string: literal (``'...'``) when that spares escaping quotes or backslashes,
    as in JSON text; else basic, whose escapes are JSON's (DEL must be escaped too)."""
    plain = not any((c < " " and c != "\t") or c == "\x7f" for c in text)
    if plain and "'" not in text and ('"' in text or "\\" in text):
        return f"'{text}'"
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: object) -> str:
    """One value on one line, tables inline: what a hand-written step looks like.

    Raises:
        TypeError: ``None`` or another value TOML cannot hold.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"TOML cannot hold {value!r}")


def toml_expressible(value: object) -> bool:
    """Whether :func:`toml_value` can write ``value`` (TOML has no null)."""
    try:
        toml_value(value)
    except TypeError:
        return False
    return True

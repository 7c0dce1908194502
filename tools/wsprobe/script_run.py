"""Running a script: one connection per session, each read by its own task, steps in order.

A step may wait on one session while another session's server pushes pile up, so every
session is a ``live.LiveConnection`` from the moment it connects: its reader settles the
request waiting for each reply, queues pushes in arrival order (so a push that came while a
step waited for a reply is still there for a later ``expect_push``/``wait_push``) and feeds
every message to a ``MirrorTracker`` so ``@refs`` resolve against the player's current state.
A frame no client can read ends the session, as a close does.

Exit codes follow ``common``: 0 every step passed, 1 the first unmet expectation (nothing
after it runs), 2 the script cannot go on (no connection, a refused hello, a closed session,
a request the protocol rejects locally, an undefined variable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from typing import Literal

import jmespath
import jmespath.exceptions
import msgspec

from tools.wsprobe import ops
from tools.wsprobe.client import Encoding, Message, ProbeClient, ProbeError
from tools.wsprobe.common import EXIT_ERROR_REPLY, EXIT_FAILURE, EXIT_OK, ConnectOptions
from tools.wsprobe.live import Arrival, LiveConnection, SessionClosedError
from tools.wsprobe.script_format import Script, SessionSpec, Step, UndefinedVariableError
from tools.wsprobe.script_format import substitute as substitute_vars
from tools.wsprobe.script_match import compact, explain, match, short

STEP_TIMEOUT_S = 5.0
Mode = Literal["text", "quiet", "json"]
JSONish = dict[str, object]


class StepFailedError(Exception):
    """An expectation was not met (exit 1): the server's answer, not the script, is wrong."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class AbortError(Exception):
    """The script cannot go on (exit 2); the message says why in the user's terms."""


def normalize(msg: Message) -> JSONish:
    """The message as JSON would show it (msgpack's int keys as strings, bytes as base64),
    which is what expectations and captures are written against."""
    out = msgspec.to_builtins(msg, str_keys=True)
    assert isinstance(out, dict)
    return out


_UNREADABLE = object()


def raw_frame(text: str, encoding: Encoding) -> tuple[bytes, object]:
    """The frame a ``raw`` step sends and the ``rid`` its reply should carry (None: any).

    JSON: the text itself. MessagePack: the same value re-encoded, or, when the text is
    not JSON, its UTF-8 bytes as they are (the server cannot read those either).
    """
    try:
        value: object = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = _UNREADABLE
    rid = value.get("rid") if isinstance(value, dict) else None
    key = rid if isinstance(rid, int) and not isinstance(rid, bool) else None
    if encoding == "json" or value is _UNREADABLE:
        return text.encode(), key
    return msgspec.msgpack.encode(value), key


class Session:
    """One named connection of the script: a ``LiveConnection`` that keeps its pushes, plus
    the replies nobody waited for and what ``@refs`` need."""

    def __init__(self, spec: SessionSpec, client: ProbeClient) -> None:
        self.name = spec.name
        self.strays: list[Message] = []
        """Replies nobody waited for (a server answering twice, or with a wrong rid)."""
        self.live = LiveConnection(
            client, on_message=self._arrived, keep_pushes=True, name=f"wsprobe-run-{spec.name}"
        )

    def _arrived(self, arrival: Arrival) -> None:
        if arrival.stray:
            self.strays.append(arrival.msg)

    async def send_raw(self, text: str) -> Message:
        """Send ``text`` as it is (see :func:`raw_frame`) and return the reply (bound the
        wait with ``asyncio.timeout``).

        Raises:
            SessionClosedError: the connection ended first.
        """
        frame, rid = raw_frame(text, self.live.client.codec.encoding)
        return await self.live.exchange(rid, frame)

    def refs_state(self) -> tuple[dict[str, object], object]:
        """The mirrored state and player id that ``@refs`` resolve against.

        Raises:
            AbortError: there is no mirror (no hello, or it could not be kept).
            StepFailedError: the mirror missed effects (a version gap).
        """
        tracker, error = self.live.tracker, self.live.mirror_error
        if tracker is None or error is not None:
            why = error or "it said no hello (the session has no token)"
            raise AbortError(f"session {self.name} has no mirror of the player: {why}")
        if not tracker.in_sync:
            raise StepFailedError(
                f"session {self.name}: the mirror missed effects (a version gap at "
                f"v{tracker.version}), so @refs cannot be trusted"
            )
        state = self.live.state()
        assert state is not None
        return state, tracker.player_id


# --- what a step prints ----------------------------------------------------------------------


def summarize(msg: Mapping[str, object]) -> str:
    """One message in a few words: its tag and what tells it apart."""
    tag = str(msg.get("t"))
    kinds = msg.get("effects")
    effects = (
        "[" + ", ".join(str(e.get("e")) for e in kinds if isinstance(e, dict)) + "]"
        if isinstance(kinds, list)
        else ""
    )
    if tag == "error":
        return f"error {msg.get('code')}: {msg.get('message')}"
    if tag == "effects":
        return f"effects v{msg.get('version')} {effects}"
    if tag == "player.delta":
        return f"player.delta seq {msg.get('seq')} {effects}"
    if tag == "session.welcome":
        return f"session.welcome player {msg.get('player_id')} v{msg.get('version')}"
    if tag == "player.cooldown_ready":
        return f"player.cooldown_ready {msg.get('key')}"
    if tag == "admin.grant_item_reply":
        replayed = " replayed" if msg.get("replayed") else ""
        return f"{tag} player {msg.get('player_id')} items {msg.get('item_ids')}{replayed}"
    version = msg.get("version")
    return f"{tag} v{version}" if isinstance(version, int) else tag


def clip(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fields(wire: Mapping[str, object]) -> str:
    return " ".join(
        f"{key}={value if isinstance(value, str) else compact(value)}"
        for key, value in wire.items()
        if key != "t"
    )


class Output:
    """Step lines on stdout (text or JSON lines, none when quiet); failures on stderr."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    def _out(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def opened(self, name: str, welcome: Message | None) -> None:
        if self.mode == "json":
            record: JSONish = {"session": name, "connected": True}
            if welcome is not None:
                record["welcome"] = summarize(welcome)
            self._out(compact(record))
        elif self.mode == "text":
            said = f": hello -> {summarize(welcome)}" if welcome is not None else " (no hello)"
            self._out(f"   -  {name}  connected{said}")

    def step(
        self,
        step: Step,
        sent: str,
        received: JSONish | None,
        *,
        wire: object = None,
        ms: float,
        captured: Mapping[str, object],
        problem: str | None = None,
    ) -> None:
        if self.mode == "json":
            record: JSONish = {
                "step": step.number,
                "line": step.line,
                "session": step.session,
                "action": step.action,
                "target": step.target if step.action != "raw" else None,
                "sent": wire,
                "received": received,
                "ms": round(ms, 1),
                "ok": problem is None,
            }
            if captured:
                record["captured"] = dict(captured)
            if problem is not None:
                record["problem"] = problem
            self._out(compact(record))
        elif self.mode == "text":
            got = summarize(received) if received is not None else "nothing"
            caught = "".join(f"  {k}={short(v, 40)}" for k, v in captured.items())
            note = f"  # {step.note}" if step.note else ""
            status = "ok" if problem is None else "FAILED"
            self._out(
                f"{step.number:>4}  {step.session}  {sent} -> {got}{caught}"
                f"  ({ms:.0f} ms) {status}{note}"
            )

    def warning(self, text: str) -> None:
        sys.stderr.write(f"wsprobe run: warning: {text}\n")
        sys.stderr.flush()

    def failure(self, headline: str, details: list[str]) -> None:
        sys.stderr.write("\n".join(["wsprobe run: " + headline, *details]) + "\n")
        sys.stderr.flush()

    def summary(self, steps: int, sessions: int, seconds: float) -> None:
        if self.mode == "text":
            self._out(
                f"ok: {steps} step{'s' * (steps != 1)}, "
                f"{sessions} session{'s' * (sessions != 1)}, {seconds:.2f} s"
            )


# --- the runner ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Received:
    sent: str
    """What the step did, for its output line."""
    wire: object
    """What it sent: the request, or the raw text (None for a push step)."""
    msg: Message
    pattern: object
    """What the message must match; None: anything but an error reply."""


class Runner:
    """Runs one script's steps in order against one server."""

    def __init__(
        self,
        script: Script,
        options: ConnectOptions,
        variables: Mapping[str, object],
        output: Output,
        timeout: float = STEP_TIMEOUT_S,
    ) -> None:
        self.script = script
        self.options = options
        self.variables = dict(variables)
        self.output = output
        self.timeout = timeout
        self.sessions: dict[str, Session] = {}
        self._near: list[JSONish] = []
        """While a wait_push waits: the expectation and the newest push of its tag that
        did not meet it, for the message if none does in time."""

    async def run(self) -> int:
        started = time.perf_counter()
        try:
            for step in self.script.steps:
                await self.run_step(step)
        except StepFailedError as exc:
            self.output.failure(str(exc), exc.details)
            return EXIT_ERROR_REPLY
        except AbortError as exc:
            self.output.failure(str(exc), [])
            return EXIT_FAILURE
        finally:
            for session in self.sessions.values():
                for stray in session.strays:
                    self.output.warning(
                        f"session {session.name}: a reply no step asked for: {short(stray, 500)}"
                    )
                await session.live.close()
        self.output.summary(
            len(self.script.steps), len(self.sessions), time.perf_counter() - started
        )
        return EXIT_OK

    async def run_step(self, step: Step) -> None:
        head = f"{step.where} FAILED ({step.session}: {self._doing(step)})"
        timeout = step.timeout or self.timeout
        self._near = []
        started: float | None = None
        try:
            values = self._substituted(step)
            session = await self._session(step.session, hello=step.action != "hello")
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    received = await self._act(step, session, values)
            except TimeoutError:
                raise self._timed_out(step, session, timeout) from None
            ms = (time.perf_counter() - started) * 1000
        except UndefinedVariableError as exc:
            raise AbortError(f"{step.where}: undefined variable ${{{exc.name}}}") from None
        except SessionClosedError as exc:
            raise AbortError(f"{step.where}: session {step.session}: {exc}") from None
        except StepFailedError as exc:
            ms = 0.0 if started is None else (time.perf_counter() - started) * 1000
            self.output.step(step, self._doing(step), None, ms=ms, captured={}, problem=str(exc))
            raise StepFailedError(f"{head}: {exc}", exc.details) from None
        except AbortError as exc:
            raise AbortError(f"{step.where}: {exc}") from None
        got = normalize(received.msg)
        try:
            self._check(received.pattern, got)
            captured = self._capture(step, got)
        except StepFailedError as exc:
            self.output.step(
                step, received.sent, got, wire=received.wire, ms=ms, captured={}, problem=str(exc)
            )
            raise StepFailedError(f"{head}: {exc}", exc.details) from None
        self.variables.update(captured)
        self.output.step(step, received.sent, got, wire=received.wire, ms=ms, captured=captured)

    def _doing(self, step: Step) -> str:
        if step.action == "raw":
            return f"raw {clip(step.target, 60)}"
        if step.action == "hello":
            return "hello"
        return f"{step.action} {step.target}"

    def _substituted(self, step: Step) -> JSONish:
        values = {
            "body": step.body,
            "expect": step.expect,
            "expect_error": step.expect_error,
            "raw": step.target if step.action == "raw" else None,
        }
        out = substitute_vars(values, self.variables)
        assert isinstance(out, dict)
        return out

    async def _session(self, name: str, *, hello: bool) -> Session:
        """The named session, connected (and welcomed, unless ``hello`` is False) at first use.

        Raises:
            AbortError: it cannot connect, or its hello is refused or unanswered.
        """
        if name in self.sessions:
            return self.sessions[name]
        spec = self.script.sessions[name]
        try:
            client = await self.options.open()
        except ProbeError as exc:
            raise AbortError(f"session {name}: cannot connect: {exc}") from None
        session = self.sessions[name] = Session(spec, client)
        if not hello:
            return session  # a `hello = true` step says it itself
        if spec.token is None:
            self.output.opened(name, None)
            return session
        try:
            async with asyncio.timeout(self.timeout):
                welcome = await session.live.request(self._hello(spec))
        except TimeoutError:
            raise AbortError(f"session {name}: no welcome within {self.timeout:g} s") from None
        if welcome.get("t") != "session.welcome":
            raise AbortError(f"session {name}: hello refused: {summarize(welcome)}")
        self.output.opened(name, welcome)
        return session

    def _hello(self, spec: SessionSpec) -> JSONish:
        token = substitute_vars(spec.token, self.variables)
        if not isinstance(token, str):
            raise AbortError(f"session {spec.name}: the token is {short(token)}, not a string")
        return {"t": "session.hello", "token": token}

    async def _act(self, step: Step, session: Session, values: JSONish) -> _Received:
        expect = values["expect"]
        if isinstance(values["expect_error"], str):
            expect = {"t": "error", "code": values["expect_error"]}
        if step.action == "send":
            wire = self._request(step, session, values["body"])
            sent = f"{step.op.name} {_fields(wire)}".rstrip()
            return _Received(sent, wire, await session.live.request(wire), expect)
        if step.action == "raw":
            raw = str(values["raw"])
            return _Received(f"raw {clip(raw, 80)}", raw, await session.send_raw(raw), expect)
        if step.action == "hello":
            hello = self._hello(self.script.sessions[step.session])
            return _Received("hello", hello, await session.live.request(hello), expect)
        pattern = {"t": step.target, **(expect if isinstance(expect, dict) else {})}
        if step.action == "expect_push":
            msg = await session.live.next_push(lambda _: True)
            return _Received(f"expect_push {step.target}", None, msg, pattern)

        def accept(msg: Message) -> bool:
            if msg.get("t") != step.target:
                return False
            got = normalize(msg)
            if match(pattern, got):
                self._near[:] = [pattern, got]  # the newest one of the tag that did not match
                return False
            return True

        msg = await session.live.next_push(accept)
        return _Received(f"wait_push {step.target}", None, msg, pattern)

    def _timed_out(self, step: Step, session: Session, timeout: float) -> StepFailedError:
        within = f"within {timeout:g} s"
        if step.action in ("send", "hello"):
            tag = ops.find(step.target).tag if step.action == "send" else "session.hello"
            return StepFailedError(f"no reply to {tag} {within}")
        if step.action == "raw":
            return StepFailedError(f"no reply to the raw message {within}")
        queued = ", ".join(str(m.get("t")) for m in session.live.pushes) or "none"
        details = [f"  pushes still queued on {session.name}: {queued}"]
        if step.action == "expect_push":
            return StepFailedError(f"no push at all {within} (expected {step.target})", details)
        if not self._near:
            return StepFailedError(f"no {step.target} push {within}", details)
        pattern, got = self._near
        details.append(f"  the last {step.target} push, which did not match:")
        details += explain(pattern, got, match(pattern, got))
        return StepFailedError(f"no {step.target} push matching the expectation {within}", details)

    def _request(self, step: Step, session: Session, body: object) -> JSONish:
        """The wire request of a ``send`` step: ``@refs`` resolved, validated by its Struct.

        Raises:
            AbortError: the request is not valid (nothing is sent).
            StepFailedError: an ``@ref`` names nothing the player holds.
        """
        assert isinstance(body, dict)
        text = {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in body.items()
        }
        refs = {key: value for key, value in text.items() if value.startswith("@")}
        if refs:
            state, player_id = session.refs_state()
            try:
                text.update(ops.resolve_refs(refs, state, player_id))
            except ops.OperationError as exc:
                raise StepFailedError(str(exc)) from None
        try:
            return ops.build_request(step.op, text)
        except ops.OperationError as exc:
            raise AbortError(f"invalid request: {exc}") from None

    def _check(self, pattern: object, got: JSONish) -> None:
        if pattern is None:
            if got.get("t") == "error":
                raise StepFailedError(
                    f"got {summarize(got)}",
                    [
                        f'  (if that is expected, say expect_error = "{got.get("code")}")',
                        f"  received: {short(got, 2000)}",
                    ],
                )
            return
        mismatches = match(pattern, got)
        if mismatches:
            more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
            details = explain(pattern, got, mismatches if len(mismatches) > 1 else [])
            raise StepFailedError(
                f"{mismatches[0]}{more}", [*details, f"  received: {short(got, 2000)}"]
            )

    def _capture(self, step: Step, got: JSONish) -> dict[str, object]:
        captured: dict[str, object] = {}
        for name, expression in step.capture.items():
            try:
                value = jmespath.search(expression, got)
            except jmespath.exceptions.JMESPathError as exc:
                reason = " ".join(str(exc).split())
                raise StepFailedError(f"capture {name} = {expression!r}: {reason}") from None
            if value is None:
                raise StepFailedError(
                    f"capture {name} = {expression!r} found nothing",
                    [f"  received: {short(got, 2000)}"],
                )
            captured[name] = value
        return captured

"""What a client engine of ``wsprobe bench`` is given and must do, and what engines share.

An *engine* is the client code of one WebSocket library: ``bench_websockets.py`` (the
reference, on ``websockets``, as every other wsprobe mode) and ``bench_picows.py`` (on
picows, a Cython transport: a fraction of the CPU per exchange). A worker
(``bench_worker.py``) makes one :class:`Pool` of its clients on the engine the run names and
drives it through setup, the closed or the open loop, and the close; the engine owns the
sockets and the per-client loop, this module owns what must not differ between engines:

- how a client becomes a load client: its player (:func:`token`), the hello and the plan
  (:func:`greet`), and how a failure is counted (:class:`Setup`);
- what is recorded (:class:`Recorder`): an op, an error reply by its code, or a request the
  generator lost (``connection_closed``, ``client_down``, ``no_reply``);
- the window (:class:`Window`) and the open loop's schedule (:class:`Schedule`), so the
  number of scheduled ops is the same whichever engine sends them.

The closed-loop and open-loop rules each engine follows are those of ``bench_worker.py``'s
docstring.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
from websockets.exceptions import ConnectionClosed

from tools.wsprobe.bench_report import LoadConfig
from tools.wsprobe.client import ErrorReplyError, FrameCodec, Message, ProbeError
from tools.wsprobe.plans import MixPlan, make_plan
from tools.wsprobe.stats import LatencyHistogram

# --- recording ---------------------------------------------------------------------------------


class Head(msgspec.Struct):
    """The part of a server message the generator looks at; the rest is skipped unparsed."""

    t: str
    rid: int | None = None
    code: str | None = None


def head_decoder(text: bool) -> Callable[[bytes], Head]:
    return msgspec.json.Decoder(Head).decode if text else msgspec.msgpack.Decoder(Head).decode


@dataclass(slots=True)
class Window:
    """On ``time.monotonic()``: load from ``begin``, measured from ``start`` to ``end``."""

    begin: float
    start: float
    end: float


@dataclass(slots=True)
class Recorder:
    """What one worker measured since the last progress interval was cut."""

    kinds: int
    ops: int = 0
    ops_by_kind: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    service: LatencyHistogram = field(default_factory=LatencyHistogram)
    max_lag: float = 0.0

    def __post_init__(self) -> None:
        self.ops_by_kind = [0] * self.kinds

    def error(self, code: str, n: int = 1) -> None:
        self.errors[code] = self.errors.get(code, 0) + n

    def reply(self, head: Head, kind: int, latency: float, service: float | None) -> None:
        if head.t == "error":
            self.error(head.code or "unknown")
            return
        self.ops += 1
        self.ops_by_kind[kind] += 1
        self.latency.record(latency)
        if service is not None:
            self.service.record(service)

    def cut(self) -> Recorder:
        """Hand over what was recorded so far and start afresh (``max_lag`` carries on)."""
        out = Recorder(self.kinds)
        out.ops, out.ops_by_kind, out.errors = self.ops, self.ops_by_kind, self.errors
        out.latency, out.service = self.latency, self.service
        self.ops, self.ops_by_kind, self.errors = 0, [0] * self.kinds, {}
        self.latency, self.service = LatencyHistogram(), LatencyHistogram()
        return out

    def absorb(self, part: Recorder) -> None:
        self.ops += part.ops
        for index, n in enumerate(part.ops_by_kind):
            self.ops_by_kind[index] += n
        for code, n in part.errors.items():
            self.error(code, n)
        self.latency.merge(part.latency)
        self.service.merge(part.service)


# --- the open loop's schedule ------------------------------------------------------------------


def schedule_bounds(rate: float, phase: float, warmup_s: float, duration_s: float) -> range:
    """The indices ``j`` of the ops measured by a worker sending op ``j`` at
    ``begin + (j + phase) / rate``: those intended inside ``[warmup, warmup + duration)``."""

    def first_at_or_after(seconds: float) -> int:
        return max(0, math.ceil(round(seconds * rate - phase, 9)))

    return range(first_at_or_after(warmup_s), first_at_or_after(warmup_s + duration_s))


@dataclass(frozen=True, slots=True)
class Schedule:
    """One worker's open loop: op ``j`` is intended at ``begin + (j + phase) / rate``, to
    client ``j % clients``; ops ``0 .. measured.stop - 1`` are sent, ``measured`` counted."""

    begin: float
    rate: float
    phase: float
    measured: range

    def at(self, j: int) -> float:
        return self.begin + (j + self.phase) / self.rate


class ScheduledClient(Protocol):
    """One client of an open loop, as either engine implements it."""

    dead: bool

    async def send_at(self, timed_from: float, now: float, measured: bool) -> None:
        """Send this client's next request now; its latency counts from ``timed_from``."""


async def run_schedule(
    clients: Sequence[ScheduledClient], schedule: Schedule, rec: Recorder
) -> None:
    """Send op ``j`` at ``schedule.at(j)`` to client ``j % len(clients)``, for every ``j``
    up to the end of ``schedule.measured``; the same loop for both engines."""
    clock = time.monotonic
    n = len(clients)
    measured = schedule.measured
    for j in range(measured.stop):
        intended = schedule.at(j)
        in_window = j >= measured.start
        now = clock()
        if intended > now:
            await asyncio.sleep(intended - now)
            now = clock()
        elif in_window and now - intended > rec.max_lag:
            rec.max_lag = now - intended
        client = clients[j % n]
        if client.dead:
            if in_window:
                rec.error("client_down")
            continue
        # uvloop's timers have millisecond resolution and may wake a little early: an op
        # sent before its time is timed from when it was actually sent.
        await client.send_at(min(intended, now), now, in_window)


# --- connecting --------------------------------------------------------------------------------


@dataclass(slots=True)
class Setup:
    """How the worker's clients fared getting ready: failures by code, the first one's why."""

    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    def fail(self, code: str, why: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        if self.first_error is None:
            self.first_error = why


def token(config: LoadConfig, index: int) -> str:
    """Client ``index``'s player: a new run id means new players with the starter kit."""
    return f"dev:bench-{config.run_id}-{index}"


async def greet(
    config: LoadConfig,
    index: int,
    codec: FrameCodec,
    hello: Callable[[str], Awaitable[Message]],
    setup: Setup,
) -> MixPlan | None:
    """Say hello as client ``index``'s player and build its plan from the welcome; None
    (counted in ``setup``) if the hello fails or the player cannot run the mix.

    ``hello(token)`` returns the welcome, raises :class:`ErrorReplyError` when the server
    refuses it, and :class:`ProbeError` or ``ConnectionClosed`` when the connection fails.
    """
    who = token(config, index)
    try:
        async with asyncio.timeout(config.connect.open_timeout):
            welcome = await hello(who)
    except ErrorReplyError as exc:
        setup.fail(f"hello_{exc.reply.get('code', 'failed')}", f"{who}: hello refused: {exc}")
        return None
    except (ProbeError, ConnectionClosed, TimeoutError) as exc:
        setup.fail("hello_failed", f"{who}: hello failed: {type(exc).__name__}: {exc}")
        return None
    try:
        return make_plan(config.mix, codec, welcome, index)
    except ProbeError as exc:  # not the state the mix needs
        setup.fail("player_unfit", f"{who} cannot run the mix: {exc}")
        return None


# --- what an engine provides -------------------------------------------------------------------


class Pool(Protocol):
    """One worker's clients on one engine.

    The worker calls :meth:`connect` once, then :meth:`run_closed` or :meth:`run_open` once
    (at ``window.begin``), then :meth:`close`. A run returns after the drain: every request
    it counts is by then an op or an error in the recorder, and one still unanswered after
    ``config.drain_timeout_s`` is ``no_reply``.
    """

    connected: int
    """Clients that connected and are ready to run the mix."""

    async def connect(self, indices: range, setup: Setup) -> None:
        """Connect clients ``indices``, at most ``config.connect_concurrency`` at a time;
        each failure is counted in ``setup``."""

    async def run_closed(self, window: Window, rec: Recorder) -> None:
        """One request outstanding per client until ``window.end``, then drain."""

    async def run_open(self, schedule: Schedule, rec: Recorder) -> None:
        """Send ``schedule`` (never waiting for replies), then drain."""

    async def close(self) -> None:
        """Close every connection."""

"""The worker process of ``wsprobe bench``: connect a slice of the clients, run the closed or
open loop, record, and report to the parent over a pipe (see ``load.py`` for the shape of a
run and the parent's side).

The worker says :class:`ReadyMsg` once its clients are connected, waits for one
:class:`StartMsg`, sends an :class:`IntervalMsg` at every progress boundary of the measured
window (the last one after the drain, so it holds the late replies) and ends with
:class:`DoneMsg` (or :class:`FailedMsg`). Messages are msgpack, each a tagged Struct.

What is recorded, and when an op counts:

- Closed loop: an op belongs to the window if it was *sent* inside it; latency is send to
  reply. A request still unanswered when the drain times out is ``no_reply``.
- Open loop: op ``j`` of a worker is measured when its index lies in
  :func:`schedule_bounds`; latency is from its intended send time (or its actual one, if the
  timer woke early). Every measured op ends as an op or an error: ``client_down`` (its
  connection had died), ``connection_closed`` (it died with the op outstanding) or
  ``no_reply``.
- Replies count in the progress interval they *arrive* in.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import msgspec
import uvloop
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tools.wsprobe.bench_report import Interval, LoadConfig, WorkerResult
from tools.wsprobe.client import ErrorReplyError, ProbeClient, ProbeError
from tools.wsprobe.plans import MixPlan, make_plan
from tools.wsprobe.stats import LatencyHistogram

# --- parent <-> worker messages --------------------------------------------------------------


class ReadyMsg(msgspec.Struct, tag="ready"):
    connected: int
    setup_s: float
    first_error: str | None
    """Why the first client that failed to connect failed, in the user's terms."""


class StartMsg(msgspec.Struct, tag="start"):
    start_at: float
    """On ``time.monotonic()``, the same clock in every process on one host."""


class IntervalMsg(msgspec.Struct, tag="interval"):
    interval: Interval


class DoneMsg(msgspec.Struct, tag="done"):
    result: WorkerResult


class FailedMsg(msgspec.Struct, tag="failed"):
    reason: str


ToParent = ReadyMsg | IntervalMsg | DoneMsg | FailedMsg
to_parent = msgspec.msgpack.Decoder(ToParent)
to_worker = msgspec.msgpack.Decoder(StartMsg)
encode = msgspec.msgpack.Encoder().encode


# --- recording ---------------------------------------------------------------------------------


class _Head(msgspec.Struct):
    """The part of a server message the generator looks at; the rest is skipped unparsed."""

    t: str
    rid: int | None = None
    code: str | None = None


@dataclass(slots=True)
class _Window:
    begin: float
    start: float
    end: float


@dataclass(slots=True)
class _Recorder:
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

    def reply(self, head: _Head, kind: int, latency: float, service: float | None) -> None:
        if head.t == "error":
            self.error(head.code or "unknown")
            return
        self.ops += 1
        self.ops_by_kind[kind] += 1
        self.latency.record(latency)
        if service is not None:
            self.service.record(service)

    def cut(self) -> _Recorder:
        """Hand over what was recorded so far and start afresh (``max_lag`` carries on)."""
        out = _Recorder(self.kinds)
        out.ops, out.ops_by_kind, out.errors = self.ops, self.ops_by_kind, self.errors
        out.latency, out.service = self.latency, self.service
        self.ops, self.ops_by_kind, self.errors = 0, [0] * self.kinds, {}
        self.latency, self.service = LatencyHistogram(), LatencyHistogram()
        return out

    def absorb(self, part: _Recorder) -> None:
        self.ops += part.ops
        for index, n in enumerate(part.ops_by_kind):
            self.ops_by_kind[index] += n
        for code, n in part.errors.items():
            self.error(code, n)
        self.latency.merge(part.latency)
        self.service.merge(part.service)


@dataclass(slots=True, eq=False)
class _LoadClient:
    ws: ClientConnection
    text: bool
    plan: MixPlan
    rids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # open loop: rid -> (time the op is timed from, actual send time, kind, measured)
    pending: dict[int, tuple[float, float, int, bool]] = field(default_factory=dict)
    in_flight_measured: bool = False
    """Closed loop: the request awaiting its reply was sent inside the window."""
    sending: bool = True
    dead: bool = False


def _head_decoder(text: bool) -> Callable[[bytes], _Head]:
    return msgspec.json.Decoder(_Head).decode if text else msgspec.msgpack.Decoder(_Head).decode


# --- closed loop -------------------------------------------------------------------------------


async def _closed_client(client: _LoadClient, window: _Window, rec: _Recorder) -> None:
    ws, text, plan, rids = client.ws, client.text, client.plan, client.rids
    observes = plan.observes
    decode = _head_decoder(text)
    clock = time.monotonic
    start, end = window.start, window.end
    try:
        while True:
            sent = clock()
            if sent >= end:
                return
            rid = next(rids)
            kind, request = plan.next(rid)
            measured = client.in_flight_measured = sent >= start
            await ws.send(request, text=text)
            while True:  # pushes (no rid) are skipped
                frame = await ws.recv(decode=False)
                head = decode(frame)
                if head.rid == rid:
                    break
            client.in_flight_measured = False
            if observes:
                plan.observe(rid, frame)
            if measured:
                rec.reply(head, kind, clock() - sent, None)
    except ConnectionClosed:
        client.dead = True
        if client.in_flight_measured:
            client.in_flight_measured = False
            rec.error("connection_closed")


# --- open loop ---------------------------------------------------------------------------------


async def _open_receiver(client: _LoadClient, rec: _Recorder) -> None:
    ws, pending, plan = client.ws, client.pending, client.plan
    decode = _head_decoder(client.text)
    clock = time.monotonic
    try:
        # After the schedule ends (``sending`` False) read until nothing is outstanding.
        while client.sending or pending:
            frame = await ws.recv(decode=False)
            head = decode(frame)
            if head.rid is None:
                continue
            times = pending.pop(head.rid, None)
            if times is None:
                continue
            if plan.observes:
                plan.observe(head.rid, frame)
            intended, sent, kind, measured = times
            if measured:
                done = clock()
                rec.reply(head, kind, done - intended, done - sent)
    except ConnectionClosed:
        client.dead = True
        lost = sum(1 for *_, measured in pending.values() if measured)
        pending.clear()
        if lost:
            rec.error("connection_closed", lost)


def schedule_bounds(rate: float, phase: float, warmup_s: float, duration_s: float) -> range:
    """The indices ``j`` of the ops measured by a worker sending op ``j`` at
    ``begin + (j + phase) / rate``: those intended inside ``[warmup, warmup + duration)``."""

    def first_at_or_after(seconds: float) -> int:
        return max(0, math.ceil(round(seconds * rate - phase, 9)))

    return range(first_at_or_after(warmup_s), first_at_or_after(warmup_s + duration_s))


async def _open_scheduler(
    clients: list[_LoadClient],
    *,
    rate: float,
    phase: float,
    measured: range,
    window: _Window,
    rec: _Recorder,
) -> None:
    """Send op ``j`` at ``begin + (j + phase) / rate`` to client ``j % len(clients)``, for
    every ``j`` up to the end of ``measured``."""
    clock = time.monotonic
    n = len(clients)
    begin = window.begin
    for j in range(measured.stop):
        intended = begin + (j + phase) / rate
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
        rid = next(client.rids)
        kind, request = client.plan.next(rid)
        # uvloop's timers have millisecond resolution and may wake a little early: an op
        # sent before its time is timed from when it was actually sent.
        client.pending[rid] = (min(intended, now), now, kind, in_window)
        try:
            await client.ws.send(request, text=client.text)
        except ConnectionClosed:
            client.dead = True
            if client.pending.pop(rid, None) is not None and in_window:
                rec.error("connection_closed")


# --- the worker --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Setup:
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    def fail(self, code: str, why: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        if self.first_error is None:
            self.first_error = why


async def _open_client(
    config: LoadConfig, index: int, gate: asyncio.Semaphore, setup: _Setup
) -> _LoadClient | None:
    token = f"dev:bench-{config.run_id}-{index}"
    async with gate:
        try:
            probe = await config.connect.open()
        except ProbeError as exc:  # HandshakeRefusedError: the message says why
            setup.fail("connect_failed", str(exc))
            return None
        plan = await _hello(config, probe, token, index, setup)
        if plan is None:
            await probe.close()
            return None
        return _LoadClient(ws=probe.ws, text=probe.codec.text, plan=plan)


async def _hello(
    config: LoadConfig, probe: ProbeClient, token: str, index: int, setup: _Setup
) -> MixPlan | None:
    try:
        async with asyncio.timeout(config.connect.open_timeout):
            welcome = await probe.hello(token)
    except ErrorReplyError as exc:
        setup.fail(f"hello_{exc.reply.get('code', 'failed')}", f"{token}: hello refused: {exc}")
        return None
    except (ProbeError, ConnectionClosed, TimeoutError) as exc:
        setup.fail("hello_failed", f"{token}: hello failed: {type(exc).__name__}: {exc}")
        return None
    try:
        return make_plan(config.mix, probe.codec, welcome, index)
    except ProbeError as exc:  # not the state the mix needs
        setup.fail("player_unfit", f"{token} cannot run the mix: {exc}")
        return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Reporter:
    """Cuts the worker's recorder at every interval boundary and sends it to the parent;
    keeps the running totals and the CPU marks at the window's edges."""

    def __init__(self, config: LoadConfig, conn: Connection, rec: _Recorder) -> None:
        self.config = config
        self.conn = conn
        self.rec = rec
        self.totals = _Recorder(rec.kinds)
        self.sent = 0
        self.cpu_start = self.cpu_end = self._cpu_mark = 0.0

    async def run(self, window: _Window) -> None:
        """Wait out the window, sending every interval but the last (see :meth:`last`)."""
        await asyncio.sleep(max(0.0, window.start - time.monotonic()))
        self.cpu_start = self._cpu_mark = _cpu_seconds()
        for index in range(self.config.intervals() - 1):
            at = window.start + self.config.interval_end(index)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            self._send()
        await asyncio.sleep(max(0.0, window.end - time.monotonic()))
        self.cpu_end = _cpu_seconds()

    def last(self) -> None:
        """The last interval, once the drain is over: it holds the late replies too."""
        self._send()

    def _send(self) -> None:
        part = self.rec.cut()
        self.totals.absorb(part)
        cpu = _cpu_seconds()
        interval = Interval(
            index=self.sent,
            ops=part.ops,
            errors=part.errors,
            latency=part.latency,
            cpu_s=round(cpu - self._cpu_mark, 4),
        )
        self._cpu_mark = cpu
        self.sent += 1
        self.conn.send_bytes(encode(IntervalMsg(interval)))


async def _drain(tasks: list[asyncio.Task[None]], within_s: float) -> set[asyncio.Task[None]]:
    """Wait for ``tasks`` up to ``within_s``; cancel and return the ones still running."""
    if not tasks:
        return set()
    _, stuck = await asyncio.wait(tasks, timeout=within_s)
    for task in stuck:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stuck


async def _run_closed(
    config: LoadConfig, clients: list[_LoadClient], window: _Window, rec: _Recorder
) -> None:
    tasks = [asyncio.create_task(_closed_client(c, window, rec)) for c in clients]
    await asyncio.sleep(max(0.0, window.end - time.monotonic()))
    await _drain(tasks, config.drain_timeout_s)
    lost = sum(1 for c in clients if c.in_flight_measured)
    if lost:
        rec.error("no_reply", lost)


async def _run_open(
    config: LoadConfig,
    *,
    worker: int,
    n_clients: int,
    clients: list[_LoadClient],
    window: _Window,
    rec: _Recorder,
) -> int:
    """Run this worker's share of the schedule; return how many ops fell in the window."""
    assert config.rate is not None
    # The schedule depends on the clients assigned, not on how many connected: ops for a
    # client that is down are counted as ``client_down``, never silently not sent.
    rate = config.rate * n_clients / config.clients
    phase = worker / config.procs
    measured = schedule_bounds(rate, phase, config.warmup_s, config.duration_s)
    if not clients:
        if measured:
            rec.error("client_down", len(measured))
        return len(measured)
    receivers = [asyncio.create_task(_open_receiver(c, rec)) for c in clients]
    await _open_scheduler(
        clients, rate=rate, phase=phase, measured=measured, window=window, rec=rec
    )
    for client, task in zip(clients, receivers, strict=True):
        client.sending = False
        if not client.pending:
            task.cancel()  # blocked in recv with nothing to wait for
    await _drain(receivers, config.drain_timeout_s)
    lost = sum(1 for c in clients for *_, m in c.pending.values() if m)
    if lost:
        rec.error("no_reply", lost)
    return len(measured)


async def _run_worker(
    config: LoadConfig, worker: int, first_client: int, n_clients: int, conn: Connection
) -> WorkerResult:
    open_loop = config.rate is not None
    rec = _Recorder(len(config.mix))
    setup = _Setup()
    setup_started = time.monotonic()
    gate = asyncio.Semaphore(config.connect_concurrency)
    opened = await asyncio.gather(
        *(
            _open_client(config, i, gate, setup)
            for i in range(first_client, first_client + n_clients)
        )
    )
    clients = [c for c in opened if c is not None]
    setup_s = time.monotonic() - setup_started
    conn.send_bytes(encode(ReadyMsg(len(clients), setup_s, setup.first_error)))
    start_msg = to_worker.decode(await asyncio.to_thread(conn.recv_bytes))
    begin = start_msg.start_at
    window = _Window(begin, begin + config.warmup_s, begin + config.warmup_s + config.duration_s)
    reporter = _Reporter(config, conn, rec)
    clock_task = asyncio.create_task(reporter.run(window))
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    scheduled: int | None = None
    if open_loop:
        scheduled = await _run_open(
            config, worker=worker, n_clients=n_clients, clients=clients, window=window, rec=rec
        )
    else:
        await _run_closed(config, clients, window, rec)
    await clock_task
    reporter.last()
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    totals = reporter.totals
    for code, n in setup.errors.items():
        totals.error(code, n)
    return WorkerResult(
        worker=worker,
        clients=n_clients,
        connected=len(clients),
        setup_s=round(setup_s, 3),
        ops=totals.ops,
        ops_by_kind=totals.ops_by_kind,
        errors=totals.errors,
        latency=totals.latency,
        service=totals.service if open_loop else None,
        scheduled=scheduled,
        cpu_s=round(reporter.cpu_end - reporter.cpu_start, 3),
        max_send_lag_ms=round(rec.max_lag * 1000.0, 3),
    )


def worker_main(
    config_bytes: bytes, worker: int, first_client: int, n_clients: int, conn: Connection
) -> None:
    """Entry point of a worker process."""
    config = msgspec.msgpack.decode(config_bytes, type=LoadConfig)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_run_worker(config, worker, first_client, n_clients, conn))
        conn.send_bytes(encode(DoneMsg(result)))
    except Exception as exc:
        conn.send_bytes(encode(FailedMsg(f"{type(exc).__name__}: {exc}")))
        raise
    finally:
        conn.close()

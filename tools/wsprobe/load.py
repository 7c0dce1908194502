"""The load generator: P worker processes, N clients, closed or open loop, merged latencies.

Shape of a run:

1. The parent spawns ``procs`` workers (``multiprocessing`` with *spawn*: no state inherited
   from the parent's event loop). Worker ``w`` owns a contiguous slice of the clients.
2. Each worker connects its clients and says hello, each as its own player
   (``dev:bench-<run>-<i>``), then reports ready. When every worker is ready the parent
   sends one start time on the shared monotonic clock, so all workers begin together.
3. ``warmup_s`` of load that is not measured, then ``duration_s`` that is.
4. Each worker returns a latency histogram, error counts by code and its CPU time over the
   measured window (``resource.getrusage``), so a report shows whether the generator itself
   was the bottleneck. The parent merges the histograms (counts add up, so percentiles are
   over every sample).

Closed loop (no ``rate``): every client keeps exactly one request outstanding; latency is
send to reply. An op belongs to the window if it was *sent* inside it.

Open loop (``rate`` ops/s in total): each worker sends its share on a fixed schedule,
round-robin over its clients, whether or not earlier replies have arrived. Latency is
measured from the *intended* send time, so a server (or generator) stall shows up in the
figures instead of silently delaying the next sends (coordinated omission). ``service``
latency, from the actual send, is reported beside it: the gap between the two is time the
generator spent behind its own schedule.

Workloads (``tools/wsprobe/plans.py``): ``ping``; ``equip`` (equip, unequip, move);
``stack`` (split, sort, merge); ``mixed`` (both, plus a stats read). Each is valid in a
closed loop for a player with the untouched starter kit, so a healthy run has no errors;
error replies are counted by code.

Workers run uvloop: the generator shares the machine with the server it measures, so every
CPU cycle it saves is one the server can use.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Literal

import msgspec
import uvloop
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tools.wsprobe.client import Encoding, ProbeClient, ProbeError
from tools.wsprobe.plans import WORKLOADS, Plan, Workload, make_plan
from tools.wsprobe.stats import LatencyHistogram, LatencySummary

__all__ = ["WORKLOADS", "LoadConfig", "LoadError", "LoadReport", "Workload", "run_load"]

_READY_TIMEOUT_S = 300.0
_START_DELAY_S = 0.3


class LoadError(Exception):
    """The run could not be carried out (no client connected, a worker died)."""


class LoadConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    clients: int
    duration_s: float
    workload: Workload = "ping"
    warmup_s: float = 2.0
    procs: int = 1
    encoding: Encoding = "json"
    rate: float | None = None
    """Total ops/s across all clients (open loop); None for closed loop."""
    run_id: str = "run"
    connect_concurrency: int = 50
    """Connections opening at once, per worker."""
    drain_timeout_s: float = 10.0
    """After the window, how long outstanding requests may take before they count as lost."""


class WorkerResult(msgspec.Struct, kw_only=True):
    worker: int
    clients: int
    connected: int
    setup_s: float
    ops: int
    errors: dict[str, int]
    latency: LatencyHistogram
    service: LatencyHistogram | None
    cpu_s: float
    """User + system CPU seconds of the worker during the measured window."""
    window_s: float
    max_send_lag_ms: float
    """Open loop: the furthest the worker fell behind its send schedule."""


class WorkerSummary(msgspec.Struct, frozen=True, kw_only=True):
    worker: int
    clients: int
    connected: int
    setup_s: float
    ops: int
    cpu_s: float
    cpu_pct_of_core: float
    max_send_lag_ms: float


class LoadReport(msgspec.Struct, frozen=True, kw_only=True):
    config: LoadConfig
    mode: Literal["closed", "open"]
    window_s: float
    ops: int
    ops_per_s: float
    errors: dict[str, int]
    latency: LatencySummary
    """Closed loop: send to reply. Open loop: intended send time to reply."""
    service_latency: LatencySummary | None
    """Open loop only: actual send to reply."""
    generator_cpu_s: float
    generator_cpu_pct_of_core: float
    """Sum over workers: 100 = one core busy for the whole window."""
    workers: list[WorkerSummary]


# --- parent <-> worker messages --------------------------------------------------------------


class _Ready(msgspec.Struct, tag="ready"):
    connected: int
    setup_s: float


class _Start(msgspec.Struct, tag="start"):
    start_at: float
    """On ``time.monotonic()``, the same clock in every process on one host."""


class _Done(msgspec.Struct, tag="done"):
    result: WorkerResult


class _Failed(msgspec.Struct, tag="failed"):
    reason: str


_ToParent = _Ready | _Done | _Failed
_to_parent = msgspec.msgpack.Decoder(_ToParent)
_to_worker = msgspec.msgpack.Decoder(_Start)
_encode = msgspec.msgpack.Encoder().encode


# --- the workload ------------------------------------------------------------------------------


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
    open_loop: bool
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    service: LatencyHistogram = field(default_factory=LatencyHistogram)
    max_lag: float = 0.0

    def error(self, code: str, n: int = 1) -> None:
        self.errors[code] = self.errors.get(code, 0) + n

    def reply(self, head: _Head, latency: float, service: float) -> None:
        if head.t == "error":
            self.error(head.code or "unknown")
            return
        self.ops += 1
        self.latency.record(latency)
        if self.open_loop:
            self.service.record(service)


@dataclass(slots=True, eq=False)
class _LoadClient:
    ws: ClientConnection
    text: bool
    plan: Plan
    rids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # open loop: rid -> (intended send time, actual send time)
    pending: dict[int, tuple[float, float]] = field(default_factory=dict)
    sending: bool = True
    dead: bool = False


async def _closed_client(client: _LoadClient, window: _Window, rec: _Recorder) -> None:
    ws, text, plan, rids = client.ws, client.text, client.plan, client.rids
    observes = plan.observes
    decode = msgspec.json.Decoder(_Head).decode if text else msgspec.msgpack.Decoder(_Head).decode
    clock = time.monotonic
    start, end = window.start, window.end
    try:
        while True:
            sent = clock()
            if sent >= end:
                return
            rid = next(rids)
            await ws.send(plan.frame(rid), text=text)
            while True:  # pushes (no rid) are skipped
                frame = await ws.recv(decode=False)
                head = decode(frame)
                if head.rid == rid:
                    break
            if observes:
                plan.observe(rid, frame)
            if sent >= start:
                done = clock()
                rec.reply(head, done - sent, 0.0)
    except ConnectionClosed:
        client.dead = True
        rec.error("connection_closed")


async def _open_receiver(client: _LoadClient, window: _Window, rec: _Recorder) -> None:
    ws, pending, plan = client.ws, client.pending, client.plan
    decode = (
        msgspec.json.Decoder(_Head).decode if client.text else msgspec.msgpack.Decoder(_Head).decode
    )
    clock = time.monotonic
    start = window.start
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
            intended, sent = times
            if intended >= start:
                done = clock()
                rec.reply(head, done - intended, done - sent)
    except ConnectionClosed:
        client.dead = True
        rec.error("connection_closed")


async def _open_scheduler(
    clients: list[_LoadClient], rate: float, phase: float, window: _Window, rec: _Recorder
) -> None:
    """Send op ``j`` at ``begin + (j + phase) / rate`` to client ``j % len(clients)``."""
    interval = 1.0 / rate
    clock = time.monotonic
    n = len(clients)
    first = window.begin + phase * interval
    start, end = window.start, window.end
    for j in itertools.count():
        intended = first + j * interval
        if intended >= end:
            return
        now = clock()
        if intended > now:
            await asyncio.sleep(intended - now)
            now = clock()
        elif intended >= start and now - intended > rec.max_lag:
            rec.max_lag = now - intended
        client = clients[j % n]
        if client.dead:
            if intended >= start:
                rec.error("client_down")
            continue
        rid = next(client.rids)
        client.pending[rid] = (intended, now)
        try:
            await client.ws.send(client.plan.frame(rid), text=client.text)
        except ConnectionClosed:
            client.dead = True
            client.pending.pop(rid, None)
            rec.error("connection_closed")


# --- the worker --------------------------------------------------------------------------------


async def _open_client(
    config: LoadConfig, index: int, gate: asyncio.Semaphore, rec: _Recorder
) -> _LoadClient | None:
    async with gate:
        try:
            probe = await ProbeClient.connect(config.url, config.encoding, open_timeout=60.0)
        except (OSError, InvalidHandshake, TimeoutError, ProbeError):
            rec.error("connect_failed")
            return None
        try:
            async with asyncio.timeout(60.0):
                welcome = await probe.hello(f"dev:bench-{config.run_id}-{index}")
            plan = make_plan(config.workload, probe.codec, welcome)
        except (ProbeError, ConnectionClosed, TimeoutError) as exc:
            reply = getattr(exc, "reply", {})
            rec.error(f"hello_{reply.get('code', 'failed')}")
            await probe.close()
            return None
        return _LoadClient(ws=probe.ws, text=probe.codec.text, plan=plan)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run_worker(
    config: LoadConfig, worker: int, first_client: int, n_clients: int, conn: Connection
) -> WorkerResult:
    open_loop = config.rate is not None
    rec = _Recorder(open_loop=open_loop)
    setup_started = time.monotonic()
    gate = asyncio.Semaphore(config.connect_concurrency)
    opened = await asyncio.gather(
        *(_open_client(config, i, gate, rec) for i in range(first_client, first_client + n_clients))
    )
    clients = [c for c in opened if c is not None]
    setup_s = time.monotonic() - setup_started
    conn.send_bytes(_encode(_Ready(connected=len(clients), setup_s=setup_s)))
    start_msg = _to_worker.decode(await asyncio.to_thread(conn.recv_bytes))
    begin = start_msg.start_at
    window = _Window(begin, begin + config.warmup_s, begin + config.warmup_s + config.duration_s)
    cpu_marks: list[float] = []

    async def mark_cpu() -> None:
        for at in (window.start, window.end):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            cpu_marks.append(_cpu_seconds())

    marker = asyncio.create_task(mark_cpu())
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    if open_loop and clients:
        assert config.rate is not None
        rate = config.rate * len(clients) / max(1, config.clients)
        receivers = [asyncio.create_task(_open_receiver(c, window, rec)) for c in clients]
        await _open_scheduler(clients, rate, worker / config.procs, window, rec)
        for client, task in zip(clients, receivers, strict=True):
            client.sending = False
            if not client.pending:
                task.cancel()  # blocked in recv with nothing to wait for
        _, stuck = await asyncio.wait(receivers, timeout=config.drain_timeout_s)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
        lost = sum(
            1 for c in clients for intended, _ in c.pending.values() if intended >= window.start
        )
        if lost:
            rec.error("no_reply", lost)
    elif clients:
        tasks = [asyncio.create_task(_closed_client(c, window, rec)) for c in clients]
        await asyncio.sleep(max(0.0, window.end - time.monotonic()))
        _, stuck = await asyncio.wait(tasks, timeout=config.drain_timeout_s)
        for task in stuck:
            task.cancel()
        if stuck:
            rec.error("no_reply", len(stuck))
        await asyncio.gather(*tasks, return_exceptions=True)
    await marker
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    return WorkerResult(
        worker=worker,
        clients=n_clients,
        connected=len(clients),
        setup_s=round(setup_s, 3),
        ops=rec.ops,
        errors=rec.errors,
        latency=rec.latency,
        service=rec.service if open_loop else None,
        cpu_s=round(cpu_marks[1] - cpu_marks[0], 3),
        window_s=config.duration_s,
        max_send_lag_ms=round(rec.max_lag * 1000.0, 3),
    )


def _worker_main(
    config_bytes: bytes, worker: int, first_client: int, n_clients: int, conn: Connection
) -> None:
    """Entry point of a worker process."""
    config = msgspec.msgpack.decode(config_bytes, type=LoadConfig)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_run_worker(config, worker, first_client, n_clients, conn))
        conn.send_bytes(_encode(_Done(result)))
    except Exception as exc:
        conn.send_bytes(_encode(_Failed(f"{type(exc).__name__}: {exc}")))
        raise
    finally:
        conn.close()


# --- the parent --------------------------------------------------------------------------------


def _slices(clients: int, procs: int) -> list[tuple[int, int]]:
    """(first client, count) for each worker, as even as possible."""
    base, extra = divmod(clients, procs)
    out, first = [], 0
    for w in range(procs):
        n = base + (1 if w < extra else 0)
        out.append((first, n))
        first += n
    return out


def _receive(conn: Connection, timeout: float) -> _Ready | _Done | _Failed:
    if not conn.poll(timeout):
        raise LoadError(f"a worker did not answer within {timeout:.0f}s")
    try:
        msg: _Ready | _Done | _Failed = _to_parent.decode(conn.recv_bytes())
    except EOFError:
        raise LoadError("a worker exited without a result") from None
    return msg


def run_load(
    config: LoadConfig, on_window: Callable[[float, float], None] | None = None
) -> LoadReport:
    """Run one load test and return its merged report.

    ``on_window(start, end)`` is called in the parent once the measured window is fixed
    (``time.monotonic()`` values), so a caller can sample the server over the same window.

    Raises:
        LoadError: a worker failed or no client could connect.
        ValueError: the configuration is inconsistent.
    """
    if config.clients < 1 or config.duration_s <= 0 or config.warmup_s < 0:
        raise ValueError("clients must be >= 1, duration > 0 and warmup >= 0")
    if config.rate is not None and config.rate <= 0:
        raise ValueError("rate must be positive")
    procs = max(1, min(config.procs, config.clients))
    config = msgspec.structs.replace(config, procs=procs)
    ctx = multiprocessing.get_context("spawn")
    payload = msgspec.msgpack.encode(config)
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        for w, (first, n) in enumerate(_slices(config.clients, procs)):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(payload, w, first, n, child_end),
                name=f"wsprobe-load-{w}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            workers.append((proc, parent_end))
        ready = [_receive(conn, _READY_TIMEOUT_S) for _, conn in workers]
        for msg in ready:
            if isinstance(msg, _Failed):
                raise LoadError(f"worker failed during setup: {msg.reason}")
        if not sum(msg.connected for msg in ready if isinstance(msg, _Ready)):
            raise LoadError(f"no client could connect to {config.url}")
        start_at = time.monotonic() + _START_DELAY_S
        for _, conn in workers:
            conn.send_bytes(_encode(_Start(start_at=start_at)))
        window_start = start_at + config.warmup_s
        if on_window is not None:
            on_window(window_start, window_start + config.duration_s)
        timeout = config.warmup_s + config.duration_s + config.drain_timeout_s + 60.0
        results: list[WorkerResult] = []
        for _, conn in workers:
            msg = _receive(conn, timeout)
            if not isinstance(msg, _Done):
                raise LoadError(f"worker failed: {getattr(msg, 'reason', msg)}")
            results.append(msg.result)
        for process, _ in workers:
            process.join(10.0)
    finally:
        for process, conn in workers:
            conn.close()
            if process.is_alive():
                process.terminate()
                process.join(5.0)
    return _merge(config, results)


def _merge(config: LoadConfig, results: list[WorkerResult]) -> LoadReport:
    latency, service = LatencyHistogram(), LatencyHistogram()
    errors: dict[str, int] = {}
    for r in results:
        latency.merge(r.latency)
        if r.service is not None:
            service.merge(r.service)
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    ops = sum(r.ops for r in results)
    window = config.duration_s
    cpu = sum(r.cpu_s for r in results)
    return LoadReport(
        config=config,
        mode="closed" if config.rate is None else "open",
        window_s=window,
        ops=ops,
        ops_per_s=round(ops / window, 1),
        errors=dict(sorted(errors.items())),
        latency=latency.summary(),
        service_latency=service.summary() if config.rate is not None else None,
        generator_cpu_s=round(cpu, 3),
        generator_cpu_pct_of_core=round(100.0 * cpu / window, 1),
        workers=[
            WorkerSummary(
                worker=r.worker,
                clients=r.clients,
                connected=r.connected,
                setup_s=r.setup_s,
                ops=r.ops,
                cpu_s=r.cpu_s,
                cpu_pct_of_core=round(100.0 * r.cpu_s / window, 1),
                max_send_lag_ms=r.max_send_lag_ms,
            )
            for r in results
        ],
    )


def render_summary(report: LoadReport) -> str:
    """A few human-readable lines for a report."""
    c = report.config
    lat = report.latency
    mode = "closed loop" if c.rate is None else f"open loop at {c.rate:g} ops/s"
    lines = [
        f"{c.workload} x {c.clients} clients ({mode}, {c.encoding}, {c.procs} procs, "
        f"{report.window_s:g}s measured after {c.warmup_s:g}s warm-up)",
        f"  {report.ops_per_s:,.0f} ops/s  p50 {lat.p50_ms:.2f} ms  p99 {lat.p99_ms:.2f} ms  "
        f"p99.9 {lat.p999_ms:.2f} ms  max {lat.max_ms:.2f} ms",
    ]
    if report.service_latency is not None:
        s = report.service_latency
        lag = max((w.max_send_lag_ms for w in report.workers), default=0.0)
        lines.append(
            f"  service (from actual send): p50 {s.p50_ms:.2f} ms  p99 {s.p99_ms:.2f} ms  "
            f"p99.9 {s.p999_ms:.2f} ms  (generator max lag {lag:.2f} ms)"
        )
    errors = ", ".join(f"{k}={v}" for k, v in report.errors.items()) or "none"
    per_worker = " ".join(f"{w.cpu_pct_of_core:.0f}%" for w in report.workers)
    lines.append(f"  errors: {errors}")
    lines.append(
        f"  generator CPU: {report.generator_cpu_pct_of_core:.0f}% of a core "
        f"(per worker: {per_worker})"
    )
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand (to be written)."""

"""The worker process of ``wsprobe bench``: connect a slice of the clients, run the closed or
open loop, record, and report to the parent over a pipe (see ``load.py`` for the shape of a
run and the parent's side). The clients themselves are an engine's (:func:`make_pool`, the
one place that picks it: ``bench_websockets.py`` or ``bench_picows.py``; what an engine must
do is in ``bench_engine.py``).

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
import resource
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import msgspec
import uvloop

from tools.wsprobe.bench_engine import Pool, Recorder, Schedule, Setup, Window, schedule_bounds
from tools.wsprobe.bench_picows import PicowsPool
from tools.wsprobe.bench_report import EngineName, Interval, LoadConfig, WorkerResult
from tools.wsprobe.bench_websockets import WebsocketsPool

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


# --- the worker --------------------------------------------------------------------------------


_POOLS: dict[EngineName, Callable[[LoadConfig], Pool]] = {
    "websockets": WebsocketsPool,
    "picows": PicowsPool,
}


def make_pool(config: LoadConfig) -> Pool:
    """The worker's clients, on the engine ``config`` names."""
    return _POOLS[config.engine](config)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Reporter:
    """Cuts the worker's recorder at every interval boundary and sends it to the parent;
    keeps the running totals and the CPU marks at the window's edges."""

    def __init__(self, config: LoadConfig, conn: Connection, rec: Recorder) -> None:
        self.config = config
        self.conn = conn
        self.rec = rec
        self.totals = Recorder(rec.kinds)
        self.sent = 0
        self.cpu_start = self.cpu_end = self._cpu_mark = 0.0

    async def run(self, window: Window) -> None:
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


async def _run_open(
    config: LoadConfig, pool: Pool, *, worker: int, n_clients: int, begin: float, rec: Recorder
) -> int:
    """Run this worker's share of the schedule; return how many ops fell in the window."""
    assert config.rate is not None
    # The schedule depends on the clients assigned, not on how many connected: ops for a
    # client that is down are counted as ``client_down``, never silently not sent.
    rate = config.rate * n_clients / config.clients
    phase = worker / config.procs
    measured = schedule_bounds(rate, phase, config.warmup_s, config.duration_s)
    if not pool.connected:
        if measured:
            rec.error("client_down", len(measured))
        return len(measured)
    await pool.run_open(Schedule(begin, rate, phase, measured), rec)
    return len(measured)


async def _run_worker(
    config: LoadConfig, worker: int, first_client: int, n_clients: int, conn: Connection
) -> WorkerResult:
    open_loop = config.rate is not None
    rec = Recorder(len(config.mix))
    setup = Setup()
    setup_started = time.monotonic()
    pool = make_pool(config)
    await pool.connect(range(first_client, first_client + n_clients), setup)
    setup_s = time.monotonic() - setup_started
    conn.send_bytes(encode(ReadyMsg(pool.connected, setup_s, setup.first_error)))
    start_msg = to_worker.decode(await asyncio.to_thread(conn.recv_bytes))
    begin = start_msg.start_at
    window = Window(begin, begin + config.warmup_s, begin + config.warmup_s + config.duration_s)
    reporter = _Reporter(config, conn, rec)
    clock_task = asyncio.create_task(reporter.run(window))
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    scheduled: int | None = None
    if open_loop:
        scheduled = await _run_open(
            config, pool, worker=worker, n_clients=n_clients, begin=begin, rec=rec
        )
    else:
        await pool.run_closed(window, rec)
    await clock_task
    reporter.last()
    await pool.close()
    totals = reporter.totals
    for code, n in setup.errors.items():
        totals.error(code, n)
    return WorkerResult(
        worker=worker,
        clients=n_clients,
        connected=pool.connected,
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

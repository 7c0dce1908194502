"""What a load run is given and what it gives back: the configuration, the messages workers
send the parent, the merged report, the per-second timeline and the human-readable lines.

Nothing here does I/O beyond writing text to a stream it is handed: the run itself lives in
``load.py`` (the parent) and ``bench_worker.py`` (the workers), the figure in ``plot.py``.

How the pieces add up. Each worker records into an *interval* (ops, ops by kind, errors by
code, a latency histogram) and sends it to the parent at every ``interval_s`` boundary of
the measured window; the last interval also holds the replies that arrived after the window
closed (requests sent inside it, answered during the drain). A worker's final result is the
merge of its intervals plus what happened outside any interval: connections that failed
during setup (``connect_failed``, ``hello_*``) and requests that never got a reply
(``no_reply``). The parent merges the workers' results for the totals, and each interval
across workers for one :class:`TimelinePoint`, as soon as every worker has sent it.
"""

from __future__ import annotations

import math
from typing import Literal, TextIO, get_args

import msgspec

from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.plans import DEFAULT_MIX, Mix, format_mix, parse_mix
from tools.wsprobe.stats import LatencyHistogram, LatencySummary, PercentilePoint

GENERATOR_BOUND_PCT = 90.0
"""A worker busier than this (% of one core) over the window may have been the bottleneck."""


class LoadError(Exception):
    """The run could not be carried out (no client connected, a worker died)."""


EngineName = Literal["websockets", "picows"]
"""The WebSocket library the load clients run on (``bench_engine.py``)."""
ENGINES: tuple[EngineName, ...] = get_args(EngineName)


class LoadConfig(msgspec.Struct, frozen=True, kw_only=True):
    connect: ConnectOptions
    clients: int
    duration_s: float
    mix: Mix = msgspec.field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    warmup_s: float = 2.0
    procs: int = 1
    rate: float | None = None
    """Total ops/s across all clients (open loop); None for closed loop."""
    run_id: str = "run"
    """Players are ``dev:bench-<run_id>-<client>``: a new id means new players."""
    interval_s: float = 1.0
    """How often workers report progress (and the timeline's resolution)."""
    connect_concurrency: int = 50
    """Connections opening at once, per worker (``connect.open_timeout`` bounds each one's
    handshake, and then its hello)."""
    drain_timeout_s: float = 10.0
    """After the window, how long outstanding requests may take before they count as lost."""
    engine: EngineName = "picows"
    """The clients' WebSocket library: ``picows`` costs about half the CPU per exchange of
    ``websockets`` (``benchmarks/generator_bench.py``), which is kept as the reference."""

    def intervals(self) -> int:
        """How many progress intervals the measured window has (the last may be shorter)."""
        return max(1, math.ceil(round(self.duration_s / self.interval_s, 9)))

    def interval_end(self, index: int) -> float:
        """Seconds into the window at which interval ``index`` ends."""
        return min((index + 1) * self.interval_s, self.duration_s)


# --- worker -> parent ------------------------------------------------------------------------


class Interval(msgspec.Struct, kw_only=True):
    """One worker's replies over one progress interval (by arrival time)."""

    index: int
    ops: int
    errors: dict[str, int]
    latency: LatencyHistogram
    cpu_s: float


class WorkerResult(msgspec.Struct, kw_only=True):
    worker: int
    clients: int
    connected: int
    setup_s: float
    ops: int
    ops_by_kind: list[int]
    """Indexed like the mix."""
    errors: dict[str, int]
    latency: LatencyHistogram
    service: LatencyHistogram | None
    scheduled: int | None
    """Open loop: requests the schedule put inside the window."""
    cpu_s: float
    """User + system CPU seconds of the worker during the measured window."""
    max_send_lag_ms: float
    """Open loop: the furthest the worker fell behind its send schedule."""


# --- the report --------------------------------------------------------------------------------


class WorkerSummary(msgspec.Struct, frozen=True, kw_only=True):
    worker: int
    clients: int
    connected: int
    setup_s: float
    ops: int
    cpu_s: float
    cpu_pct_of_core: float
    max_send_lag_ms: float


class TimelinePoint(msgspec.Struct, frozen=True, kw_only=True):
    t_s: float
    """End of the interval, in seconds into the measured window."""
    ops: int
    ops_per_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    generator_cpu_pct_of_core: float


class LoadReport(msgspec.Struct, frozen=True, kw_only=True):
    config: LoadConfig
    mode: Literal["closed", "open"]
    mix: str
    connected: int
    """Clients that connected and said hello (of ``config.clients``)."""
    connect_error: str | None
    """Why the first client that could not connect failed, if any did not."""
    window_s: float
    ops: int
    """Requests sent inside the window that got a success reply."""
    ops_per_s: float
    ops_by_kind: dict[str, int]
    errors: dict[str, int]
    """Error replies by code, plus what the generator saw go wrong: clients that could not
    start (``connect_failed``, ``hello_<code>``, ``hello_failed``, ``player_unfit`` — a player
    without the fresh starter kit the mix needs), and requests lost (``connection_closed``,
    ``client_down``, ``no_reply``)."""
    error_count: int
    scheduled: int | None
    """Open loop: requests the schedule put inside the window; every one of them ends up in
    ``ops`` or in ``errors``, so ``ops + error_count == scheduled`` when every client
    connected."""
    latency: LatencySummary
    """Closed loop: send to reply. Open loop: intended send time to reply."""
    latency_distribution: list[PercentilePoint]
    service_latency: LatencySummary | None
    """Open loop only: actual send to reply."""
    service_latency_distribution: list[PercentilePoint] | None
    timeline: list[TimelinePoint]
    generator_cpu_s: float
    generator_cpu_pct_of_core: float
    """Sum over workers: 100 = one core busy for the whole window."""
    generator_bound: bool
    """Some worker was busier than ``GENERATOR_BOUND_PCT`` % of a core: the figures may show
    the generator's limit rather than the server's."""
    workers: list[WorkerSummary]


class Timeline:
    """Merges the workers' intervals into one :class:`TimelinePoint` per interval, in order,
    each as soon as every worker has sent it."""

    def __init__(self, config: LoadConfig, workers: int) -> None:
        self._config = config
        self._workers = workers
        self._pending: dict[int, list[Interval]] = {}
        self.points: list[TimelinePoint] = []

    def add(self, interval: Interval) -> list[TimelinePoint]:
        """Take one worker's interval; return the points it completed (usually 0 or 1)."""
        self._pending.setdefault(interval.index, []).append(interval)
        done: list[TimelinePoint] = []
        while len(self._pending.get(len(self.points), ())) == self._workers:
            point = self._point(len(self.points), self._pending.pop(len(self.points)))
            self.points.append(point)
            done.append(point)
        return done

    def _point(self, index: int, parts: list[Interval]) -> TimelinePoint:
        latency = LatencyHistogram()
        errors = 0
        cpu = 0.0
        for part in parts:
            latency.merge(part.latency)
            errors += sum(part.errors.values())
            cpu += part.cpu_s
        ops = sum(part.ops for part in parts)
        end = self._config.interval_end(index)
        length = end - index * self._config.interval_s
        summary = latency.summary()
        return TimelinePoint(
            t_s=round(end, 3),
            ops=ops,
            ops_per_s=round(ops / length, 1),
            errors=errors,
            p50_ms=summary.p50_ms,
            p99_ms=summary.p99_ms,
            generator_cpu_pct_of_core=round(100.0 * cpu / length, 1),
        )


def merge_results(
    config: LoadConfig,
    results: list[WorkerResult],
    timeline: list[TimelinePoint],
    connect_error: str | None = None,
) -> LoadReport:
    latency, service = LatencyHistogram(), LatencyHistogram()
    errors: dict[str, int] = {}
    by_kind = [0] * len(config.mix)
    for r in results:
        latency.merge(r.latency)
        if r.service is not None:
            service.merge(r.service)
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
        for index, n in enumerate(r.ops_by_kind):
            by_kind[index] += n
    ops = sum(r.ops for r in results)
    window = config.duration_s
    cpu = sum(r.cpu_s for r in results)
    open_loop = config.rate is not None
    workers = [
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
    ]
    return LoadReport(
        config=config,
        mode="open" if open_loop else "closed",
        mix=format_mix(config.mix),
        connected=sum(r.connected for r in results),
        connect_error=connect_error,
        window_s=window,
        ops=ops,
        ops_per_s=round(ops / window, 1),
        ops_by_kind=dict(zip(config.mix, by_kind, strict=True)),
        errors=dict(sorted(errors.items())),
        error_count=sum(errors.values()),
        scheduled=sum(r.scheduled or 0 for r in results) if open_loop else None,
        latency=latency.summary(),
        latency_distribution=latency.distribution(),
        service_latency=service.summary() if open_loop else None,
        service_latency_distribution=service.distribution() if open_loop else None,
        timeline=timeline,
        generator_cpu_s=round(cpu, 3),
        generator_cpu_pct_of_core=round(100.0 * cpu / window, 1),
        generator_bound=any(w.cpu_pct_of_core >= GENERATOR_BOUND_PCT for w in workers),
        workers=workers,
    )


# --- for people --------------------------------------------------------------------------------


def progress_line(point: TimelinePoint) -> str:
    return (
        f"{point.t_s:>4g}s  {point.ops_per_s:>8,.0f} ops/s  errors {point.errors:,}  "
        f"p99 {point.p99_ms:.2f} ms"
    )


class Progress:
    """Live progress on a stream: one line per interval, or one line rewritten in place
    (``\\r``) when the stream is a terminal."""

    def __init__(self, stream: TextIO, *, in_place: bool | None = None) -> None:
        self._stream = stream
        self._in_place = stream.isatty() if in_place is None else in_place
        self._width = 0

    def warming_up(self, seconds: float) -> None:
        if seconds > 0:
            self._show(f"  warm-up {seconds:g}s ...")

    def point(self, point: TimelinePoint) -> None:
        self._show(progress_line(point))

    def done(self) -> None:
        if self._in_place and self._width:
            self._stream.write("\n")
            self._stream.flush()
        self._width = 0

    def _show(self, line: str) -> None:
        if self._in_place:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = max(self._width, len(line))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def render_summary(report: LoadReport) -> str:
    """A few human-readable lines for a report."""
    c = report.config
    lat = report.latency
    mode = "closed loop" if c.rate is None else f"open loop at {c.rate:,g} ops/s"
    lines = [
        f"{report.mix} x {c.clients} clients ({mode}, {c.connect.encoding} on {c.engine}, "
        f"{c.procs} procs, "
        f"{report.window_s:g}s measured after {c.warmup_s:g}s warm-up)",
        f"  {report.ops_per_s:,.0f} ops/s ({report.ops:,} ops: "
        + ", ".join(f"{kind} {n:,}" for kind, n in report.ops_by_kind.items())
        + ")",
        f"  latency p50 {lat.p50_ms:.2f}  p90 {lat.p90_ms:.2f}  p99 {lat.p99_ms:.2f}  "
        f"p99.9 {lat.p999_ms:.2f}  max {lat.max_ms:.2f} ms",
    ]
    if report.service_latency is not None:
        s = report.service_latency
        lag = max((w.max_send_lag_ms for w in report.workers), default=0.0)
        lines.append(
            f"  service (from actual send): p50 {s.p50_ms:.2f}  p99 {s.p99_ms:.2f}  "
            f"p99.9 {s.p999_ms:.2f} ms  (generator max lag {lag:.2f} ms)"
        )
    errors = ", ".join(f"{k} {v:,}" for k, v in report.errors.items()) or "none"
    lines.append(f"  errors: {errors}")
    if report.connect_error is not None:
        lines.append(
            f"  only {report.connected} of {c.clients} clients connected; the first failure: "
            f"{report.connect_error}"
        )
    if report.scheduled is not None:
        lines.append(f"  scheduled in the window: {report.scheduled:,}")
    per_worker = " ".join(f"{w.cpu_pct_of_core:.0f}%" for w in report.workers)
    lines.append(
        f"  generator CPU: {report.generator_cpu_pct_of_core:.0f}% of a core "
        f"(per worker: {per_worker})"
    )
    if report.generator_bound:
        lines.append(
            f"  WARNING: a load worker used over {GENERATOR_BOUND_PCT:.0f}% of a core: the "
            "generator may be the bottleneck (raise --processes, or run it on another machine)"
        )
    return "\n".join(lines)

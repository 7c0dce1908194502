"""``wsprobe bench``: P worker processes, N clients, a mix of requests, closed or open loop,
live progress and merged latencies.

Shape of a run:

1. The parent spawns ``procs`` workers (``multiprocessing`` with *spawn*: no state inherited
   from the parent's event loop). Worker ``w`` owns a contiguous slice of the clients.
2. Each worker connects its clients and says hello, each as its own player
   (``dev:bench-<run>-<i>``), then reports ready. When every worker is ready the parent
   sends one start time on the shared monotonic clock, so all workers begin together.
3. ``warmup_s`` of load that is not measured, then ``duration_s`` that is. About once a
   second each worker sends the parent what it measured in that second; the parent keeps
   reading every worker's pipe (``multiprocessing.connection.wait``), merges the seconds
   across workers and shows them as they complete (``bench_report.Progress``).
4. Each worker returns a latency histogram, ops by kind, error counts by code and its CPU
   time over the measured window (``resource.getrusage``), so a report shows whether the
   generator itself was the bottleneck. The parent merges the histograms (counts add up, so
   percentiles are over every sample).

Closed loop (no ``rate``): every client keeps exactly one request outstanding; latency is
send to reply. An op belongs to the window if it was *sent* inside it.

Open loop (``rate`` ops/s in total): worker ``w`` with ``n_w`` of the ``N`` clients sends
``r_w = rate * n_w / N`` ops/s on a fixed schedule — op ``j`` at ``begin + (j + w / P) / r_w``,
to its clients round-robin — whether or not earlier replies have arrived. Op ``j`` is
measured when ``ceil(warmup * r_w - w / P) <= j < ceil((warmup + duration) * r_w - w / P)``:
decided on the op's index, not on a clock reading, so how many ops a window holds is exact
and known in advance (``scheduled``), and every one of them ends up as an op or an error
(``client_down`` for a dead connection, ``no_reply`` when the drain times out). Latency is
measured from the *intended* send time, so a server (or generator) stall shows up in the
figures instead of silently delaying the next sends (coordinated omission). ``service``
latency, from the actual send, is reported beside it: the gap between the two is time the
generator spent behind its own schedule.

Where things are: this module is the parent and the ``bench`` command; ``bench_worker.py``
the worker process; ``bench_engine.py`` what the client engines share and must do,
``bench_picows.py`` and ``bench_websockets.py`` the engines (``--engine``); ``bench_report.py``
the configuration, report, timeline and summary; ``plans.py`` the mixes and their kinds;
``stats.py`` the histogram; ``plot.py`` the figure. Workers run uvloop, and by default the
picows engine: the generator shares the machine with the server it measures, so every CPU
cycle it saves is one the server can use.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path

import msgspec

from tools.wsprobe import common
from tools.wsprobe.bench_report import (
    ENGINES,
    LoadConfig,
    LoadError,
    LoadReport,
    Progress,
    Timeline,
    WorkerResult,
    merge_results,
    render_summary,
)
from tools.wsprobe.bench_worker import (
    DoneMsg,
    FailedMsg,
    IntervalMsg,
    ReadyMsg,
    StartMsg,
    encode,
    to_parent,
    worker_main,
)
from tools.wsprobe.plans import DEFAULT_MIX, KINDS, MixError, parse_mix

__all__ = [
    "LoadConfig",
    "LoadError",
    "LoadReport",
    "Progress",
    "register",
    "render_summary",
    "run_load",
]

_READY_TIMEOUT_S = 300.0
_START_DELAY_S = 0.3


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


class _Parent:
    """The parent's side of a run: spawn, wait for ready, start, listen, collect."""

    def __init__(self, config: LoadConfig, progress: Progress | None) -> None:
        self.config = config
        self.progress = progress
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self.ready: dict[int, ReadyMsg] = {}
        self.results: dict[int, WorkerResult] = {}
        self.timeline = Timeline(config, config.procs)

    def spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        payload = msgspec.msgpack.encode(self.config)
        for w, (first, n) in enumerate(_slices(self.config.clients, self.config.procs)):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(payload, w, first, n, child_end),
                name=f"wsprobe-bench-{w}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.procs.append(proc)
            self.conns.append(parent_end)

    def listen(self, until: Callable[[], bool], timeout: float, what: str) -> None:
        """Handle every worker's messages as they arrive until ``until()`` holds."""
        deadline = time.monotonic() + timeout
        worker_of = {id(conn): w for w, conn in enumerate(self.conns)}
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadError(f"the workers did not {what} within {timeout:.0f}s")
            # A worker that has sent its result closes its pipe: an EOF there is no news.
            live = [c for w, c in enumerate(self.conns) if w not in self.results]
            for conn in wait(live, timeout=left):
                assert isinstance(conn, Connection)
                w = worker_of[id(conn)]
                try:
                    msg = to_parent.decode(conn.recv_bytes())
                except EOFError:
                    raise LoadError(f"worker {w} exited without a result") from None
                self._handle(w, msg)

    def _handle(self, w: int, msg: ReadyMsg | IntervalMsg | DoneMsg | FailedMsg) -> None:
        if isinstance(msg, FailedMsg):
            raise LoadError(f"worker {w} failed: {msg.reason}")
        if isinstance(msg, ReadyMsg):
            self.ready[w] = msg
        elif isinstance(msg, IntervalMsg):
            for point in self.timeline.add(msg.interval):
                if self.progress is not None:
                    self.progress.point(point)
        else:
            self.results[w] = msg.result

    def start(self) -> float:
        """Send the start time; return when the measured window starts."""
        start_at = time.monotonic() + _START_DELAY_S
        for conn in self.conns:
            conn.send_bytes(encode(StartMsg(start_at=start_at)))
        return start_at + self.config.warmup_s

    def close(self) -> None:
        finished = len(self.results) == len(self.procs)
        for process, conn in zip(self.procs, self.conns, strict=True):
            conn.close()
            if finished:  # it is exiting: let it close its sockets and go
                process.join(10.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)


def run_load(
    config: LoadConfig,
    on_window: Callable[[float, float], None] | None = None,
    progress: Progress | None = None,
) -> LoadReport:
    """Run one load test and return its merged report.

    ``on_window(start, end)`` is called in the parent once the measured window is fixed
    (``time.monotonic()`` values), so a caller can sample the server over the same window.
    ``progress`` is shown each interval's merged figures as they complete.

    Raises:
        LoadError: a worker failed or no client could connect (the message says why).
        ValueError: the configuration is inconsistent.
    """
    if config.clients < 1 or config.duration_s <= 0 or config.warmup_s < 0:
        raise ValueError("clients must be >= 1, duration > 0 and warmup >= 0")
    if config.rate is not None and config.rate <= 0:
        raise ValueError("rate must be positive")
    if not config.mix or config.interval_s <= 0:
        raise ValueError("the mix must name a kind and the interval be positive")
    procs = max(1, min(config.procs, config.clients))
    config = msgspec.structs.replace(config, procs=procs)
    parent = _Parent(config, progress)
    try:
        parent.spawn()
        parent.listen(lambda: len(parent.ready) == procs, _READY_TIMEOUT_S, "connect")
        if not sum(r.connected for r in parent.ready.values()):
            why = next((r.first_error for r in parent.ready.values() if r.first_error), None)
            raise LoadError(f"no client could connect: {why or config.connect.url}")
        window_start = parent.start()
        if on_window is not None:
            on_window(window_start, window_start + config.duration_s)
        if progress is not None:
            progress.warming_up(config.warmup_s)
        timeout = _START_DELAY_S + config.warmup_s + config.duration_s
        parent.listen(
            lambda: len(parent.results) == procs,
            timeout + 2 * config.drain_timeout_s + 60.0,
            "finish",
        )
    finally:
        if progress is not None:
            progress.done()
        parent.close()
    results = [parent.results[w] for w in range(procs)]
    why = next((r.first_error for r in parent.ready.values() if r.first_error), None)
    return merge_results(config, results, parent.timeline.points, why)


# --- the command -------------------------------------------------------------------------------


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _mix(text: str) -> str:
    try:
        parse_mix(text)
    except MixError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.plot is not None:
        from tools.wsprobe import plot

        if not plot.available():
            print(f"wsprobe bench: --plot needs matplotlib: {plot.INSTALL_HINT}", file=sys.stderr)
            return common.EXIT_FAILURE
    config = LoadConfig(
        # Hundreds of handshakes at once can queue behind each other: more than a probe's 10 s.
        connect=msgspec.structs.replace(common.options_from_args(args), open_timeout=30.0),
        clients=args.clients,
        duration_s=args.duration,
        warmup_s=args.warmup,
        mix=parse_mix(args.mix),
        procs=args.processes if args.processes is not None else min(2, args.clients),
        rate=args.rate,
        run_id=args.run_id or f"{os.getpid():x}{time.time_ns() // 1_000_000 % 0xFFFFFF:x}",
        engine=args.engine,
    )
    progress = None if args.quiet else Progress(sys.stderr)
    try:
        report = run_load(config, progress=progress)
    except (LoadError, ValueError) as exc:
        print(f"wsprobe bench: {exc}", file=sys.stderr)
        return common.EXIT_FAILURE
    except KeyboardInterrupt:
        print("wsprobe bench: interrupted", file=sys.stderr)
        return common.EXIT_FAILURE
    text = msgspec.json.encode(report).decode()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    print(render_summary(report), file=sys.stderr)
    try:
        if args.json is not None:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
        if args.plot is not None:
            from tools.wsprobe import plot

            plot.write_plot(report, args.plot)
            print(f"  plot: {args.plot}", file=sys.stderr)
    except OSError as exc:  # the run is on stdout; the file asked for is missing
        print(f"wsprobe bench: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return common.EXIT_FAILURE
    return common.EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand."""
    bench = sub.add_parser(
        "bench",
        help="put a server under load: a mix of requests from many clients",
        description=(
            "Put a server under load from N clients spread over P processes, closed loop (one "
            "request outstanding per client) or open loop (--rate ops/s in total, on a fixed "
            "schedule). Progress goes to stderr each second; the report is printed as JSON on "
            "stdout, then summarised on stderr. Exit 0 when the run completed (error replies "
            "are in the report), 2 when it could not be carried out.\n\n"
            f"Mix kinds: {', '.join(KINDS)} (see tools/wsprobe/plans.py)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_connection_arguments(bench)
    bench.add_argument("--clients", type=common.positive_int, default=10, help="default: 10")
    bench.add_argument(
        "--duration",
        type=common.positive_float,
        default=10.0,
        help="measured seconds (default: 10)",
    )
    bench.add_argument(
        "--warmup", type=_non_negative_float, default=2.0,
        help="unmeasured seconds of load first (default: 2)",
    )  # fmt: skip
    bench.add_argument(
        "--rate", type=common.positive_float, metavar="R",
        help="open loop: R ops/s in total on a fixed schedule (default: closed loop)",
    )  # fmt: skip
    bench.add_argument(
        "--mix", type=_mix, default=DEFAULT_MIX, metavar="KIND:WEIGHT,...",
        help=f"what the clients send, by weight (default: {DEFAULT_MIX})",
    )  # fmt: skip
    bench.add_argument(
        "--processes", type=common.positive_int, metavar="P",
        help="worker processes (default: 2, or 1 for one client)",
    )  # fmt: skip
    bench.add_argument(
        "--engine", choices=ENGINES, default="picows",
        help="the clients' WebSocket library: picows (about half the CPU per request) or "
        "websockets, the reference (default: picows)",
    )  # fmt: skip
    bench.add_argument(
        "--run-id", help="players are dev:bench-<run-id>-<i> (default: new players each run)"
    )
    bench.add_argument("--json", metavar="FILE", help="also write the JSON report here")
    bench.add_argument(
        "--plot", metavar="FILE", help="draw latency percentiles and throughput (PNG)"
    )
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.set_defaults(func=_cmd_bench)

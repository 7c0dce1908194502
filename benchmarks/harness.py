"""A Gearhall server under test: started as a subprocess with its own embedded Postgres,
waited for on ``/readyz``, sampled for CPU (server and Postgres processes) over a window,
and stopped with SIGTERM (which also stops its Postgres).

Every scenario gets a fresh ``--data-dir`` under one temporary directory, so each starts
from an empty database and a cold Postgres: no scenario inherits another's journal, bloat
or cache. The cost is an ``initdb`` per scenario, a few seconds outside every measurement.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
GEARHALL = Path(sys.executable).parent / "gearhall"

# Closed-loop clients send as fast as the server answers; the per-connection default
# (200 msg/s, burst 400) would turn a fast server into rate_limited errors. The bucket is
# still consulted on every message, so its cost stays in the figures.
BENCH_ENV = {
    "GEARHALL_RATE_LIMIT_PER_S": "1000000",
    "GEARHALL_RATE_LIMIT_BURST": "1000000",
    # Every benchmark client comes from 127.0.0.1: the per-address limits that protect a
    # production server from one abusive address would refuse the load generator.
    "GEARHALL_MAX_SOCKETS_PER_IP": "1000000",
    "GEARHALL_HANDSHAKES_PER_IP_PER_S": "1000000",
    "GEARHALL_HANDSHAKE_BURST_PER_IP": "1000000",
    "GEARHALL_SIGNUPS_PER_IP_PER_HOUR": "1000000",
    # idle_bench holds connections that never say hello
    "GEARHALL_HELLO_TIMEOUT_S": "86400",
}


# The request mixes of the socket scenarios (``wsprobe bench --mix``; kinds in
# ``tools/wsprobe/plans.py``). ``equip`` is equip, unequip and move in equal parts; ``stack``
# split, merge and sort; ``mixed`` both plus a stats read, one request in seven each.
PING_MIX = "ping:1"
EQUIP_MIX = "equip:2,move:1"
STACK_MIX = "stack:2,sort:1"
MIXED_MIX = "equip:2,move:1,stack:2,sort:1,stats:1"


_SAMPLE = re.compile(r"^(?P<key>[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (?P<value>\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerError(RuntimeError):
    """The server did not start or become ready; the message ends with its log tail."""


@dataclass
class ServerProcess:
    data_dir: Path
    durability: str
    tick_hz: int = 20
    transport: str = "websockets"
    """``gearhall serve --transport``: websockets or picows."""
    port: int = field(default_factory=free_port)
    command: list[str] = field(default_factory=lambda: [str(GEARHALL)])
    """How to run ``gearhall`` (an experiment may wrap it, e.g. to tune the interpreter)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra ``GEARHALL_*`` settings for this server (an experiment's variable)."""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEARHALL_")}
        env.update(BENCH_ENV)
        env.update(self.env)
        cmd = [
            *self.command,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--durability",
            self.durability,
            "--tick-hz",
            str(self.tick_hz),
            "--transport",
            self.transport,
            "--dev-auth",
            "--log-level",
            "warning",
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode}\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise ServerError(f"server not ready after {timeout:.0f}s\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.http + "/readyz", timeout=2.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, keyed ``name`` or ``name{labels}``."""
        try:
            with urllib.request.urlopen(self.http + "/metrics", timeout=5.0) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m:
                samples[m["key"]] = float(m["value"])
        return samples

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def pgdata(self) -> Path:
        return self.data_dir / "pg"

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.pgdata() / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (graceful: flush, snapshot, stop Postgres); SIGKILL if it hangs, and then
        stop the orphaned Postgres ourselves."""
        if self.proc is None or self.proc.poll() is not None:
            return
        postmaster = self.postmaster_pid()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if postmaster is not None:
            with contextlib.suppress(psutil.Error):
                pg = psutil.Process(postmaster)
                if "postgres" in pg.name():
                    pg.send_signal(signal.SIGINT)  # fast shutdown
                    pg.wait(30)


def _cpu(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return None


@dataclass
class CpuSample:
    at: float
    server: float | None
    postgres: dict[int, float]
    machine_busy: float
    """Machine-wide non-idle CPU seconds (all cores)."""
    machine_steal: float
    """Machine-wide seconds the hypervisor ran something else on our vCPUs."""
    metrics: dict[str, float]


class WindowSampler:
    """Samples CPU and server metrics at the start and end of a measured window, from a
    thread, so the load generator in the main thread is not disturbed."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        assert server.proc is not None
        self._server_proc = psutil.Process(server.proc.pid)
        self.samples: list[CpuSample] = []
        self._thread: threading.Thread | None = None

    def _postgres(self) -> dict[int, float]:
        pid = self.server.postmaster_pid()
        if pid is None:
            return {}
        try:
            postmaster = psutil.Process(pid)
            procs = [postmaster, *postmaster.children(recursive=True)]
        except psutil.Error:
            return {}
        out: dict[int, float] = {}
        for p in procs:
            cpu = _cpu(p)
            if cpu is not None:
                out[p.pid] = cpu
        return out

    def _sample(self) -> CpuSample:
        t = psutil.cpu_times()
        busy = float(sum(t)) - float(t.idle) - float(getattr(t, "iowait", 0.0))
        return CpuSample(
            at=time.monotonic(),
            server=_cpu(self._server_proc),
            postgres=self._postgres(),
            machine_busy=busy,
            machine_steal=float(getattr(t, "steal", 0.0)),
            metrics=self.server.metrics(),
        )

    def schedule(self, start: float, end: float) -> None:
        def run() -> None:
            for at in (start, end):
                time.sleep(max(0.0, at - time.monotonic()))
                self.samples.append(self._sample())

        self._thread = threading.Thread(target=run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def result(self) -> dict[str, object]:
        if self._thread is not None:
            self._thread.join(30.0)
        if len(self.samples) != 2:
            return {"error": "window was not sampled"}
        a, b = self.samples
        window = b.at - a.at
        server = (b.server - a.server) if a.server is not None and b.server is not None else None
        # Backends that started inside the window count whole; ones that ended are lost.
        pg = sum(cpu - a.postgres.get(pid, 0.0) for pid, cpu in b.postgres.items())
        cores = psutil.cpu_count() or 1
        out: dict[str, object] = {
            "window_s": round(window, 3),
            "server_cpu_pct_of_core": round(100.0 * server / window, 1) if server else None,
            "postgres_cpu_pct_of_core": round(100.0 * pg / window, 1),
            "postgres_processes": len(b.postgres),
            "machine_busy_pct_of_core": round(
                100.0 * (b.machine_busy - a.machine_busy) / window, 1
            ),
            "machine_cores": cores,
            # Time our vCPUs were taken by the hypervisor: on a shared host the same code
            # runs slower (more CPU per op) when neighbours are busy.
            "machine_steal_pct_of_core": round(
                100.0 * (b.machine_steal - a.machine_steal) / window, 1
            ),
        }
        out.update(_metric_deltas(a.metrics, b.metrics, window))
        return out

    @staticmethod
    def other_load(server: dict[str, object], generator_pct: float) -> float | None:
        """Machine CPU not used by the server, its Postgres or the load generator: other
        tenants of a shared machine (and this harness), in % of one core."""
        busy, srv, pg = (
            server.get("machine_busy_pct_of_core"),
            server.get("server_cpu_pct_of_core"),
            server.get("postgres_cpu_pct_of_core"),
        )
        if not isinstance(busy, float) or not isinstance(srv, float) or not isinstance(pg, float):
            return None
        return round(max(0.0, busy - srv - pg - generator_pct), 1)


def _metric_deltas(a: dict[str, float], b: dict[str, float], window: float) -> dict[str, object]:
    def delta(name: str) -> float:
        return b.get(name, 0.0) - a.get(name, 0.0)

    out: dict[str, object] = {}
    commits = delta("gearhall_journal_batch_rows_count")
    if commits:
        out["journal_commits_per_s"] = round(commits / window, 1)
        out["journal_rows_per_commit"] = round(
            delta("gearhall_journal_batch_rows_sum") / commits, 1
        )
        out["journal_commit_mean_ms"] = round(
            1000.0 * delta("gearhall_journal_commit_duration_seconds_sum") / commits, 3
        )
        # Prometheus buckets are cumulative: commits slower than a bound = count - bucket.
        commit = "gearhall_journal_commit_duration_seconds"
        for label, le in (("5ms", "0.005"), ("25ms", "0.025"), ("100ms", "0.1")):
            slower = commits - delta(f'{commit}_bucket{{le="{le}"}}')
            out[f"journal_commits_over_{label}"] = int(slower)
    requests = sum(delta(k) for k in b if k.startswith("gearhall_request_duration_seconds_count{"))
    if requests:
        spent = sum(delta(k) for k in b if k.startswith("gearhall_request_duration_seconds_sum{"))
        # Decode to reply queued, inside the server (includes waiting for the commit).
        out["server_request_mean_ms"] = round(1000.0 * spent / requests, 3)
        # How many took longer than 5 / 25 ms inside the server: set against the client's
        # p99, this says whether a tail arose in the server or outside it (scheduling of
        # the generator, the network stack).
        buckets = "gearhall_request_duration_seconds_bucket{"
        for label, le in (("5ms", "0.005"), ("25ms", "0.025")):
            within = sum(delta(k) for k in b if k.startswith(buckets) and f'le="{le}"' in k)
            out[f"server_requests_over_{label}_pct"] = round(
                100.0 * (requests - within) / requests, 3
            )
    ticks = delta("gearhall_tick_duration_seconds_count")
    if ticks:
        out["ticks"] = int(ticks)
        out["tick_mean_ms"] = round(1000.0 * delta("gearhall_tick_duration_seconds_sum") / ticks, 3)
    out["tick_overruns"] = int(delta("gearhall_tick_overruns_total"))
    # Collector pauses (the whole process stops): how many, their total, how many > 5 ms.
    for gen in "012":
        pause = "gearhall_gc_pause_seconds"
        n = delta(f'{pause}_count{{generation="{gen}"}}')
        if n:
            out[f"gc{gen}_collections"] = int(n)
            out[f"gc{gen}_pause_total_ms"] = round(
                1000.0 * delta(f'{pause}_sum{{generation="{gen}"}}'), 1
            )
            short = delta(f'{pause}_bucket{{generation="{gen}",le="0.005"}}')
            out[f"gc{gen}_pauses_over_5ms"] = int(n - short)
    # Ticks that started more than 5 ms late: the event loop was busy (a long callback, a
    # collector pause) or the process was not scheduled.
    late = delta("gearhall_tick_lateness_seconds_count")
    if late:
        on_time = delta('gearhall_tick_lateness_seconds_bucket{le="0.005"}')
        out["ticks_late_over_5ms"] = int(late - on_time)
    return out

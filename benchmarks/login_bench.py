"""Accounts under load: password logins and authenticated handshakes against a real server.

    python -m benchmarks.login_bench                   # 2 rounds, ~7 min
    python -m benchmarks.login_bench --quick           # 1 round, 3 s windows: a smoke run
    python -m benchmarks.login_bench --rates 10,20 --concurrency 8 --hs-concurrency 32
    python -m benchmarks.login_bench --hash-workers 1  # a server setting, for a side-by-side

One ``gearhall serve`` (durable, its own embedded Postgres; ``benchmarks/harness.py``) with
the per-IP abuse limits raised through ``GEARHALL_*`` variables (sign-ups per hour,
handshakes per second and burst, sockets per IP: every client here is 127.0.0.1), and
otherwise the defaults: argon2id as ``server/config.py`` sets it (override with
``--argon2 M_KIB,T,P``), ``hash_workers`` threads, ``hash_queue_max``.

First ``--accounts`` accounts are registered over the socket (``auth.register``, 4 at a
time; timed, reported, not part of a target). Then, in each round, these phases, each with
``--warmup`` seconds discarded and ``--duration`` seconds measured:

- ``idle``: no load; the tick and the probe (below) of a server with nothing to do.
- ``login-connect``: new connection, ``auth.login``, ``session.hello`` with the access token,
  close: a player starting the game. ``login-kept``: ``auth.login`` alone, on connections
  kept open (64 per generator; one request outstanding on each). Both first as an open loop
  at each rate of ``--rates`` (logins start on a fixed schedule whatever the answers do;
  latency counted from the *intended* start, so a stall is not hidden by the generator
  waiting: no coordinated omission), then closed loops at each ``--concurrency``
  (concurrently outstanding logins; the throughput they reach is the server's capacity).
  The two kinds alternate (connect, kept, connect, kept...), as ``transport_bench`` does.
- ``hello-access`` / ``hello-dev``: new connection, ``session.hello``, close — with an access
  token of one of the accounts (one Postgres lookup of the token's hash, no argon2) or with a
  development token ``dev:<name>`` (the server runs with ``--dev-auth``): closed loops at each
  ``--hs-concurrency``, alternating. Every identity said hello before (untimed), so both
  find their player loaded. The ratio sets token verification (one ``SELECT``) against the
  dev path, which is no free baseline: it upserts the player row (a committed write). Access
  tokens are fetched afresh (one untimed login per account) before these phases each round.

Per phase: logins or handshakes per second (completed inside the window), latency p50, p99,
p99.9 and max (ms), errors by code; from ``/metrics`` before and after the window the
tick's duration histogram (``gearhall_tick_duration_seconds``: p99 interpolated inside its
bucket, and the bucket's bound), tick overruns (``gearhall_tick_overruns_total``: ticks
skipped because the loop was late), the server's own time per login and hello; CPU of the
server, its Postgres, the generator and the machine (``harness.WindowSampler``). A **probe**
connection (``dev:`` token, in the parent process) pings the server every 25-75 ms during
the whole run: its round trip is the event loop's responsiveness seen from outside, which
the tick histogram does not show (it times the tick's own work, not how late it started).

Latency columns: ``login`` = ``auth.login`` sent -> ``auth.tokens`` received, counted from the
intended start in open loops (the connect of ``login-connect`` included: what a player waits
for); ``total`` = start -> ``session.welcome`` (``login-connect``, ``hello-*``).

The generator (``--procs`` spawned processes, ``websockets`` asyncio client), the server
and Postgres share this machine's cores: read the CPU columns, compare rows of one run, and
prefer ratios. Prints one JSON document on stdout (saved under benchmarks/results/) and a
summary on stderr. Nothing is asserted; the targets are printed as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from benchmarks import profile_server
from benchmarks.harness import GEARHALL, ServerProcess, WindowSampler
from benchmarks.run_all import RESULTS, _meta, save_result

SUBPROTOCOL = Subprotocol("gearhall.v1.json")
LOGIN_P99_TARGET_MS = 150.0
KEPT_PER_WORKER = 64
ABUSE_ENV = {
    # every client of the bench is 127.0.0.1: the per-IP limits would refuse it
    "GEARHALL_SIGNUPS_PER_IP_PER_HOUR": "100000000",
    "GEARHALL_HANDSHAKES_PER_IP_PER_S": "1000000",
    "GEARHALL_HANDSHAKE_BURST_PER_IP": "1000000",
    "GEARHALL_MAX_SOCKETS_PER_IP": "1000000",
}
_decode = msgspec.json.decode
_encode = msgspec.json.encode


# --- the phases --------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    kind: str
    """idle, register, login-connect, login-kept, hello-access, hello-dev"""
    mode: str
    """open (``rate``), closed (``concurrency``), each (every identity once, ``concurrency``
    at a time, untimed preparation)"""
    rate: float = 0.0
    concurrency: int = 0
    round: int = 0
    # filled in by the parent for the workers
    url: str = ""
    start_at: float = 0.0
    warmup: float = 0.0
    duration: float = 0.0
    identities: list[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.mode == "open":
            return f"{self.kind} @{self.rate:g}/s"
        if self.mode == "closed":
            return f"{self.kind} x{self.concurrency}"
        return self.kind


def _email(run: str, i: int) -> str:
    return f"bench-{run}-{i}@bench.example"


def _password(run: str, i: int) -> str:
    return f"gearhall bench {run} #{i} keyphrase"


# --- the generator (worker processes) ----------------------------------------------------------


class OpError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def _request(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    """Send ``msg`` and return the reply with its ``rid`` (pushes in between are skipped).

    Raises: OpError: an error reply (its code)."""
    await ws.send(_encode(msg).decode())
    while True:
        reply: dict[str, Any] = _decode(await ws.recv())
        if reply.get("rid") != msg["rid"]:
            continue
        if reply.get("t") == "error":
            raise OpError(str(reply.get("code")))
        return reply


async def _connect(url: str) -> ClientConnection:
    return await connect(
        url,
        subprotocols=[SUBPROTOCOL],
        compression=None,
        open_timeout=30,
        ping_interval=None,
        close_timeout=5,
        max_size=2**22,
    )


@dataclass
class Sample:
    start: float
    """Intended start (open loop) or actual start (closed loop), monotonic seconds."""
    done: float
    lag: float = 0.0
    """Actual start - intended start (open loop; waiting for a kept connection included)."""
    connect: float = 0.0
    login: float = 0.0
    hello: float = 0.0
    error: str | None = None
    token: str | None = None


class Generator:
    """One worker's part of a phase."""

    def __init__(self, phase: Phase) -> None:
        self.p = phase
        self.samples: list[Sample] = []
        self._ids = itertools.cycle(phase.identities) if phase.identities else None
        self._rid = itertools.count(1)
        self.kept: asyncio.Queue[ClientConnection] = asyncio.Queue()

    def next_identity(self) -> Any:
        assert self._ids is not None
        return next(self._ids)

    async def op(self, ident: Any, start: float, ws: ClientConnection | None = None) -> Sample:
        """One operation of the phase's kind, timed."""
        kind, url = self.p.kind, self.p.url
        s = Sample(start=start, done=0.0)
        t0 = time.monotonic()
        s.lag = max(0.0, t0 - start)
        own = ws is None
        try:
            if ws is None:
                ws = await _connect(url)
            t1 = time.monotonic()
            s.connect = t1 - t0
            if kind == "register":
                email, password = ident
                r = await _request(
                    ws,
                    {"t": "auth.register", "rid": next(self._rid), "email": email,
                     "password": password},
                )  # fmt: skip
                s.login = time.monotonic() - t1
                s.token = str(r["access_token"])
            elif kind in ("login-connect", "login-kept"):
                email, password = ident
                r = await _request(
                    ws,
                    {"t": "auth.login", "rid": next(self._rid), "email": email,
                     "password": password},
                )  # fmt: skip
                t2 = time.monotonic()
                s.login = t2 - t1
                s.token = str(r["access_token"])
                if kind == "login-connect":
                    await _request(
                        ws, {"t": "session.hello", "rid": next(self._rid), "token": s.token}
                    )
                    s.hello = time.monotonic() - t2
            else:  # hello-access, hello-dev
                await _request(ws, {"t": "session.hello", "rid": next(self._rid), "token": ident})
                s.hello = time.monotonic() - t1
        except OpError as exc:
            s.error = exc.code
        except (OSError, TimeoutError, ConnectionError) as exc:
            s.error = type(exc).__name__
        except Exception as exc:  # websockets' own exceptions, unexpected replies
            s.error = type(exc).__name__
        s.done = time.monotonic()
        if own and ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        return s

    async def _kept_op(self, ident: Any, start: float) -> Sample:
        ws = await self.kept.get()
        try:
            s = await self.op(ident, start, ws)
        finally:
            if ws.state.name != "OPEN":  # closed under us: replace it
                with contextlib.suppress(Exception):
                    ws = await _connect(self.p.url)
            self.kept.put_nowait(ws)
        return s

    async def run(self) -> None:
        p = self.p
        end = p.start_at + p.warmup + p.duration
        if p.kind == "login-kept" and p.mode in ("open", "closed"):
            n = KEPT_PER_WORKER if p.mode == "open" else p.concurrency
            for ws in await asyncio.gather(*(_connect(p.url) for _ in range(n))):
                self.kept.put_nowait(ws)
        await asyncio.sleep(max(0.0, p.start_at - time.monotonic()))
        if p.mode == "each":
            await self._each()
        elif p.mode == "closed":
            await asyncio.gather(*(self._closed_client(end) for _ in range(p.concurrency)))
        elif p.mode == "open":
            await self._open(end)
        else:  # idle
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        while not self.kept.empty():
            with contextlib.suppress(Exception):
                await self.kept.get_nowait().close()

    async def _each(self) -> None:
        todo = list(enumerate(self.p.identities))
        results: dict[int, Sample] = {}

        async def client() -> None:
            while todo:
                i, ident = todo.pop()
                results[i] = await self.op(ident, time.monotonic())

        await asyncio.gather(*(client() for _ in range(max(1, self.p.concurrency))))
        self.samples = [results[i] for i in range(len(results))]

    async def _closed_client(self, end: float) -> None:
        while time.monotonic() < end:
            ident = self.next_identity()
            if self.p.kind == "login-kept":
                s = await self._kept_op(ident, time.monotonic())
            else:
                s = await self.op(ident, time.monotonic())
            self.samples.append(s)
            if s.error is not None:
                await asyncio.sleep(0.01)  # do not spin on a refusing server

    async def _open(self, end: float) -> None:
        interval = 1.0 / self.p.rate
        tasks: set[asyncio.Task[None]] = set()

        async def one(ident: Any, at: float) -> None:
            if self.p.kind == "login-kept":
                s = await self._kept_op(ident, at)
            else:
                s = await self.op(ident, at)
            self.samples.append(s)

        for k in itertools.count():
            at = self.p.start_at + k * interval
            if at >= end:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            task = asyncio.create_task(one(self.next_identity(), at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60.0)


async def _run_phase(phase: Phase) -> dict[str, Any]:
    gen = Generator(phase)
    m0 = phase.start_at + phase.warmup
    m1 = m0 + phase.duration
    usage: list[float] = []

    async def cpu_at(at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        usage.append(ru.ru_utime + ru.ru_stime)

    meter = asyncio.gather(cpu_at(m0), cpu_at(m1)) if phase.mode in ("open", "closed") else None
    await gen.run()
    if meter is not None:
        await meter
    return {
        "samples": [asdict(s) for s in gen.samples],
        "cpu_s": usage[1] - usage[0] if len(usage) == 2 else None,
    }


def _worker(conn: Connection) -> None:
    """Run phases sent by the parent (a ``Phase`` as a dict) until ``None``."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    while True:
        spec = conn.recv()
        if spec is None:
            return
        try:
            conn.send(asyncio.run(_run_phase(Phase(**spec))))
        except Exception as exc:  # report, do not hang the parent
            conn.send({"error": f"{type(exc).__name__}: {exc}"})


# --- the probe (parent process) ----------------------------------------------------------------


class Probe:
    """One connection pinging every 25-75 ms (random, so it does not stay in step with
    the 50 ms tick); round trips with their send time."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.rtts: list[tuple[float, float]] = []
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._ws = await _connect(self.url)
        await _request(self._ws, {"t": "session.hello", "rid": 1, "token": f"dev:{self.name}"})
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        rng = random.Random(7)
        rid = itertools.count(2)
        while True:
            await asyncio.sleep(rng.uniform(0.025, 0.075))
            t0 = time.monotonic()
            try:
                await _request(self._ws, {"t": "ping", "rid": next(rid)})
            except OpError:
                self.errors += 1
                continue
            self.rtts.append((t0, time.monotonic() - t0))

    def window(self, m0: float, m1: float) -> list[float]:
        return [rtt for at, rtt in self.rtts if m0 <= at < m1]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._ws.close()


# --- statistics --------------------------------------------------------------------------------


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _dist_ms(values: list[float]) -> dict[str, Any]:
    s = sorted(values)

    def r(v: float | None) -> float | None:
        return None if v is None else round(1000.0 * v, 2)

    return {
        "n": len(s),
        "p50_ms": r(_pct(s, 0.50)),
        "p99_ms": r(_pct(s, 0.99)),
        "p999_ms": r(_pct(s, 0.999)),
        "max_ms": r(s[-1] if s else None),
    }


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _hist_quantile(
    a: dict[str, float],
    b: dict[str, float],
    name: str,
    q: float,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Quantile ``q`` of the observations a Prometheus histogram gained between the scrapes
    ``a`` and ``b`` (of the series with ``labels``): linear inside the bucket that holds it
    (exact only at bucket bounds), with that bucket's upper bound."""
    want = labels or {}
    bounds: list[tuple[float, float]] = []
    prefix = f"{name}_bucket{{"
    for key, value in b.items():
        if not key.startswith(prefix):
            continue
        found = dict(_LABEL.findall(key[len(prefix) - 1 :]))
        le = found.pop("le", None)
        if le is None or found != want:
            continue
        bound = math.inf if le == "+Inf" else float(le)
        bounds.append((bound, value - a.get(key, 0.0)))
    bounds.sort()
    total = bounds[-1][1] if bounds else 0.0
    if total <= 0:
        return {"count": 0, "q_ms": None, "bucket_le_ms": None}
    rank = q * total
    lo, below = 0.0, 0.0
    for bound, cum in bounds:
        if cum >= rank:
            if math.isinf(bound):
                return {"count": int(total), "q_ms": None, "bucket_le_ms": math.inf}
            inside = cum - below
            frac = (rank - below) / inside if inside > 0 else 1.0
            value = lo + (bound - lo) * frac
            return {
                "count": int(total),
                "q_ms": round(1000.0 * value, 3),
                "bucket_le_ms": round(1000.0 * bound, 3),
            }
        lo, below = bound, cum
    return {"count": int(total), "q_ms": None, "bucket_le_ms": None}


def _server_side(a: dict[str, float], b: dict[str, float], window: float) -> dict[str, Any]:
    def delta(key: str) -> float:
        return b.get(key, 0.0) - a.get(key, 0.0)

    tick = "gearhall_tick_duration_seconds"
    out: dict[str, Any] = {
        "tick_count": int(delta(f"{tick}_count")),
        "tick_mean_ms": None,
        "tick_p99": _hist_quantile(a, b, tick, 0.99),
        "tick_max_bucket_le_ms": None,
        "tick_overruns": int(delta("gearhall_tick_overruns_total")),
    }
    if out["tick_count"]:
        out["tick_mean_ms"] = round(1000.0 * delta(f"{tick}_sum") / out["tick_count"], 3)
        top = _hist_quantile(a, b, tick, 1.0)
        out["tick_max_bucket_le_ms"] = top["bucket_le_ms"]
    req = "gearhall_request_duration_seconds"
    for tag in ("auth.login", "auth.register", "session.hello"):
        n = delta(f'{req}_count{{tag="{tag}"}}')
        if n:
            out[f"server_{tag}"] = {
                "count": int(n),
                "mean_ms": round(1000.0 * delta(f'{req}_sum{{tag="{tag}"}}') / n, 2),
                "p99": _hist_quantile(a, b, req, 0.99, {"tag": tag}),
            }
    errors = {
        k.split('"')[1]: int(delta(k))
        for k in b
        if k.startswith("gearhall_errors_total{") and delta(k) > 0
    }
    out["server_error_replies"] = errors
    refused = {
        k.split('"')[1]: int(delta(k))
        for k in b
        if k.startswith("gearhall_handshakes_refused_total{") and delta(k) > 0
    }
    if refused:
        out["handshakes_refused"] = refused
    out["window_s"] = round(window, 3)
    return out


def _analyse(phase: Phase, results: list[dict[str, Any]], m0: float, m1: float) -> dict[str, Any]:
    samples = [Sample(**s) for r in results for s in r["samples"]]
    inside = [s for s in samples if m0 <= s.start < m1]
    ok = [s for s in inside if s.error is None]
    completed = sum(1 for s in samples if s.error is None and m0 <= s.done < m1)
    errors = Counter(s.error for s in inside if s.error is not None)
    window = m1 - m0
    out: dict[str, Any] = {
        "ops_per_s": round(completed / window, 2),
        "started_in_window": len(inside),
        "errors": dict(errors),
    }
    if phase.kind in ("login-connect", "login-kept"):
        # what a player waits for: from the intended start to the tokens
        out["login"] = _dist_ms([s.lag + s.connect + s.login for s in ok])
        out["login_exchange"] = _dist_ms([s.login for s in ok])
    if phase.kind in ("login-connect", "hello-access", "hello-dev"):
        out["total"] = _dist_ms([s.done - s.start for s in ok])
        out["connect"] = _dist_ms([s.connect for s in ok])
        out["hello"] = _dist_ms([s.hello for s in ok])
    if phase.mode == "open":
        out["schedule_lag"] = _dist_ms([s.lag for s in inside])
    cpu = [r["cpu_s"] for r in results if r.get("cpu_s") is not None]
    out["generator_cpu_pct_of_core"] = round(100.0 * sum(cpu) / window, 1) if cpu else None
    return out


# --- the parent --------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, server: ServerProcess, run: str) -> None:
        self.args = args
        self.server = server
        self.run = run
        ctx = multiprocessing.get_context("spawn")
        self.workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        for _ in range(args.procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            self.workers.append((proc, parent))
        self.accounts = [(_email(run, i), _password(run, i)) for i in range(args.accounts)]
        self.tokens: list[str] = []
        self.dev_tokens = [f"dev:hs-{run}-{i}" for i in range(args.accounts)]
        self.phases: list[dict[str, Any]] = []
        self.raw_dir = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-login-py-spy"

    def close(self) -> None:
        for _, pipe in self.workers:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc, _ in self.workers:
            proc.join(30)
            if proc.is_alive():
                proc.kill()

    async def _dispatch(self, phase: Phase, parts: list[list[Any]]) -> list[dict[str, Any]]:
        """Send ``phase`` to as many workers as there are ``parts`` (their identities) and
        wait for their results."""
        loop = asyncio.get_running_loop()
        used = self.workers[: len(parts)]
        for (_, pipe), ids in zip(used, parts, strict=True):
            spec = asdict(phase)
            spec["identities"] = ids
            pipe.send(spec)
        results = await asyncio.gather(*(loop.run_in_executor(None, p.recv) for _, p in used))
        for r in results:
            if "error" in r:
                raise RuntimeError(f"worker failed in {phase.label}: {r['error']}")
        return list(results)

    async def prepare(self, phase: Phase, identities: list[Any], concurrency: int) -> list[Sample]:
        """Every identity once, ``concurrency`` at a time, in one worker (untimed)."""
        phase.url, phase.concurrency = self.server.url, concurrency
        phase.start_at = time.monotonic()
        started = time.monotonic()
        (result,) = await self._dispatch(phase, [identities])
        samples = [Sample(**s) for s in result["samples"]]
        errors = Counter(s.error for s in samples if s.error)
        elapsed = time.monotonic() - started
        print(
            f"  {phase.label:24} {len(samples)} in {elapsed:.1f}s"
            + (f"  errors {dict(errors)}" if errors else ""),
            file=sys.stderr,
        )
        if errors:
            raise RuntimeError(f"{phase.label}: {dict(errors)}")
        return samples

    async def measure(self, phase: Phase, probe: Probe) -> dict[str, Any]:
        a = self.args
        phase.url, phase.warmup, phase.duration = self.server.url, a.warmup, a.duration
        if phase.kind in ("login-connect", "login-kept"):
            ids: list[Any] = self.accounts
        elif phase.kind == "hello-access":
            ids = self.tokens
        elif phase.kind == "hello-dev":
            ids = self.dev_tokens
        else:
            ids = []
        # Login rates are low: one generator process. Handshake loops: all of them.
        n = len(self.workers) if phase.kind.startswith("hello") else 1
        n = min(n, max(1, phase.concurrency)) if phase.mode == "closed" else n
        per = Phase(**{**asdict(phase), "identities": []})
        if phase.mode == "closed":
            per.concurrency = phase.concurrency // n
        if phase.mode == "open":
            per.rate = phase.rate / n
        per.start_at = time.monotonic() + 1.0  # time for the workers to connect
        m0 = per.start_at + a.warmup
        m1 = m0 + a.duration
        sampler = WindowSampler(self.server)
        sampler.schedule(m0, m1)
        spy = self._py_spy(phase, m0, m1) if a.py_spy and a.py_spy in phase.name else None
        parts = [ids[w::n] for w in range(n)] if ids else [[] for _ in range(n)]
        results = await self._dispatch(per, parts)
        machine = sampler.result()
        entry: dict[str, Any] = {
            "name": phase.name,
            "label": phase.label,
            "kind": phase.kind,
            "mode": phase.mode,
            "rate": phase.rate or None,
            "concurrency": phase.concurrency or None,
            "round": phase.round,
            "generator_processes": n,
            "client": _analyse(phase, results, m0, m1),
            "probe_ping": _dist_ms(probe.window(m0, m1)),
        }
        if len(sampler.samples) == 2:
            before, after = sampler.samples
            entry["server"] = _server_side(before.metrics, after.metrics, after.at - before.at)
        entry["cpu"] = {
            k: machine.get(k)
            for k in (
                "server_cpu_pct_of_core",
                "postgres_cpu_pct_of_core",
                "machine_busy_pct_of_core",
            )
        }
        gen = entry["client"]["generator_cpu_pct_of_core"]
        entry["cpu"]["generator_cpu_pct_of_core"] = gen
        entry["cpu"]["other_pct_of_core"] = WindowSampler.other_load(machine, gen or 0.0)
        if spy is not None:
            spy.join(a.duration + 60.0)
            raw = self.raw_dir / f"{phase.name}.txt"
            entry["py_spy"] = (
                profile_server.summarize(raw.read_text(), top=25)
                if raw.exists()
                else {"error": "py-spy wrote nothing"}
            )
            entry["py_spy"]["raw"] = str(raw)
        self.phases.append(entry)
        print("  " + _row(entry), file=sys.stderr)
        return entry

    def _py_spy(self, phase: Phase, m0: float, m1: float) -> threading.Thread:
        """``py-spy record`` on the server over the window, every thread, active samples
        only (the server's own threads: the event loop, argon2's pool, asyncpg's none)."""
        assert self.server.proc is not None
        pid = self.server.proc.pid
        raw = self.raw_dir / f"{phase.name}.txt"
        self.raw_dir.mkdir(parents=True, exist_ok=True)

        def run() -> None:
            time.sleep(max(0.0, m0 - time.monotonic()))
            cmd = [str(profile_server.PY_SPY), "record", "--pid", str(pid), "--duration",
                   str(max(1, int(m1 - m0))), "--rate", "100", "--format", "raw",
                   "--nolineno", "--threads", "--native", "--output", str(raw)]  # fmt: skip
            subprocess.run(cmd, capture_output=True, text=True, check=False)

        thread = threading.Thread(target=run, name="py-spy", daemon=True)
        thread.start()
        return thread

    async def main(self) -> dict[str, Any]:
        a = self.args
        t0 = time.monotonic()
        reg = await self.prepare(
            Phase("register", "register", "each"), list(self.accounts), a.register_concurrency
        )
        registration = {
            "accounts": len(reg),
            "concurrency": a.register_concurrency,
            "elapsed_s": round(max(s.done for s in reg) - min(s.start for s in reg), 2),
            "register": _dist_ms([s.login for s in reg]),
        }
        registration["per_s"] = round(len(reg) / registration["elapsed_s"], 1)
        probe = Probe(self.server.url, f"probe-{self.run}")
        await probe.start()
        try:
            for rnd in range(1, a.rounds + 1):
                print(f"round {rnd}/{a.rounds}", file=sys.stderr)
                await self.measure(Phase(f"idle-r{rnd}", "idle", "idle", round=rnd), probe)
                for rate in a.rates:
                    for kind in ("login-connect", "login-kept"):
                        await self.measure(
                            Phase(f"{kind}-rate{rate:g}-r{rnd}", kind, "open", rate=rate,
                                  round=rnd),
                            probe,
                        )  # fmt: skip
                for c in a.concurrency:
                    for kind in ("login-connect", "login-kept"):
                        await self.measure(
                            Phase(f"{kind}-c{c}-r{rnd}", kind, "closed", concurrency=c,
                                  round=rnd),
                            probe,
                        )  # fmt: skip
                fresh = await self.prepare(
                    Phase("fresh access tokens", "login-kept", "each"), list(self.accounts), 4
                )
                self.tokens = [str(s.token) for s in fresh]
                await self.prepare(Phase("hello (access, untimed)", "hello-access", "each"),
                                   list(self.tokens), 8)  # fmt: skip
                await self.prepare(Phase("hello (dev, untimed)", "hello-dev", "each"),
                                   list(self.dev_tokens), 8)  # fmt: skip
                for c in a.hs_concurrency:
                    for kind in ("hello-access", "hello-dev"):
                        await self.measure(
                            Phase(f"{kind}-c{c}-r{rnd}", kind, "closed", concurrency=c,
                                  round=rnd),
                            probe,
                        )  # fmt: skip
        finally:
            await probe.stop()
        return {
            "registration": registration,
            "probe_errors": probe.errors,
            "elapsed_s": round(time.monotonic() - t0, 1),
        }


# --- report ------------------------------------------------------------------------------------


def _f(v: Any, fmt: str = "7.1f") -> str:
    if v is None:
        return f"{'-':>{fmt.split('.', maxsplit=1)[0]}}"
    if isinstance(v, float) and math.isinf(v):
        return f"{'inf':>{fmt.split('.', maxsplit=1)[0]}}"
    return format(v, fmt)


HEADER = (
    f"{'phase':24} {'ops/s':>7} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7} {'err':>4} | "
    f"{'tick p99':>8} {'(<=)':>6} {'overrun':>7} {'ping p99':>8} {'max':>6} | "
    f"{'srv%':>4} {'pg%':>4} {'gen%':>4} {'oth%':>4}"
)


def _row(e: dict[str, Any]) -> str:
    c = e["client"]
    lat = c.get("login") or c.get("total") or {}
    srv = e.get("server", {})
    tick = srv.get("tick_p99", {})
    ping = e["probe_ping"]
    cpu = e["cpu"]
    errors = sum(c["errors"].values())
    return (
        f"{e['label'] + ' r' + str(e['round']):24} {_f(c['ops_per_s'], '7.1f')} "
        f"{_f(lat.get('p50_ms'))} {_f(lat.get('p99_ms'))} {_f(lat.get('p999_ms'))} "
        f"{_f(lat.get('max_ms'))} {errors:>4} | {_f(tick.get('q_ms'), '8.2f')} "
        f"{_f(tick.get('bucket_le_ms'), '6.1f')} {_f(srv.get('tick_overruns'), '7d')} "
        f"{_f(ping.get('p99_ms'), '8.2f')} {_f(ping.get('max_ms'), '6.1f')} | "
        f"{_f(cpu.get('server_cpu_pct_of_core'), '4.0f')} "
        f"{_f(cpu.get('postgres_cpu_pct_of_core'), '4.0f')} "
        f"{_f(c.get('generator_cpu_pct_of_core'), '4.0f')} "
        f"{_f(cpu.get('other_pct_of_core'), '4.0f')}"
    )


def _hello_mean(e: dict[str, Any]) -> float | None:
    hello = e.get("server", {}).get("server_session.hello")
    return None if hello is None else float(hello["mean_ms"])


def summarize(phases: list[dict[str, Any]], budget_ms: float) -> dict[str, Any]:
    by_name = {e["name"]: e for e in phases}
    ratios = []
    for e in phases:
        if e["kind"] != "hello-access":
            continue
        dev = by_name.get(e["name"].replace("hello-access", "hello-dev"))
        if dev is None:
            continue
        acc_c, dev_c = e["client"], dev["client"]
        ratios.append(
            {
                "concurrency": e["concurrency"],
                "round": e["round"],
                "access_per_s": acc_c["ops_per_s"],
                "dev_per_s": dev_c["ops_per_s"],
                "access_over_dev_per_s": round(acc_c["ops_per_s"] / dev_c["ops_per_s"], 3)
                if dev_c["ops_per_s"]
                else None,
                "access_p50_ms": acc_c["total"]["p50_ms"],
                "dev_p50_ms": dev_c["total"]["p50_ms"],
                "access_p99_ms": acc_c["total"]["p99_ms"],
                "dev_p99_ms": dev_c["total"]["p99_ms"],
                "access_server_hello_mean_ms": _hello_mean(e),
                "dev_server_hello_mean_ms": _hello_mean(dev),
            }
        )
    verdicts = []
    for e in phases:
        if e["kind"] not in ("login-connect", "login-kept"):
            continue
        p99 = e["client"]["login"]["p99_ms"]
        srv = e.get("server", {})
        tick = srv.get("tick_p99", {}).get("q_ms")
        login_ok = p99 is not None and p99 <= LOGIN_P99_TARGET_MS and not e["client"]["errors"]
        tick_ok = tick is not None and tick <= budget_ms
        verdicts.append(
            {
                "phase": e["name"],
                "logins_per_s": e["client"]["ops_per_s"],
                "login_p99_ms": p99,
                "tick_p99_ms": tick,
                "tick_overruns": srv.get("tick_overruns"),
                "probe_ping_p99_ms": e["probe_ping"]["p99_ms"],
                "met": login_ok and tick_ok,
            }
        )
    return {"handshake_ratios": ratios, "login_target": verdicts}


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    reg = result["registration"]
    lines = [
        f"registration: {reg['accounts']} accounts, {reg['concurrency']} at a time: "
        f"{reg['per_s']}/s, p50 {reg['register']['p50_ms']} ms, p99 {reg['register']['p99_ms']} ms",
        "",
        HEADER,
    ]
    lines += [_row(e) for e in result["phases"]]
    lines.append(
        "(ms. login rows: intended start -> auth.tokens; hello rows: start -> session.welcome. "
        "tick p99 interpolated in its histogram bucket, (<=) the bucket bound; overrun = "
        "ticks skipped; ping = probe round trip; CPU in % of one core)"
    )
    lines.append("")
    lines.append(
        "authenticated handshakes: access token (token lookup) vs dev token (player upsert); "
        "srv = server-side mean of session.hello"
    )
    for r in s["handshake_ratios"]:
        lines.append(
            f"  x{r['concurrency']:<3} r{r['round']}: access {r['access_per_s']:7.1f}/s "
            f"p50 {r['access_p50_ms']} p99 {r['access_p99_ms']} srv "
            f"{r['access_server_hello_mean_ms']} | dev {r['dev_per_s']:7.1f}/s "
            f"p50 {r['dev_p50_ms']} p99 {r['dev_p99_ms']} srv {r['dev_server_hello_mean_ms']} "
            f"| access/dev {r['access_over_dev_per_s']}x"
        )
    lines.append("")
    budget = result["meta"]["tick_budget_ms"]
    lines.append(
        f"target: login p99 <= {LOGIN_P99_TARGET_MS:.0f} ms while tick p99 <= {budget:.0f} ms"
    )
    for v in s["login_target"]:
        verdict = "MET" if v["met"] else "NOT MET"
        lines.append(
            f"  {verdict:8} {v['phase']:28} {v['logins_per_s']:6.1f} logins/s  "
            f"login p99 {v['login_p99_ms']} ms  tick p99 {v['tick_p99_ms']} ms  "
            f"overruns {v['tick_overruns']}  ping p99 {v['probe_ping_p99_ms']} ms"
        )
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rates", type=_floats, default=[10.0, 20.0, 30.0],
                        help="open-loop login rates, logins/s")  # fmt: skip
    parser.add_argument("--concurrency", type=_ints, default=[1, 8],
                        help="closed-loop logins outstanding")  # fmt: skip
    parser.add_argument("--hs-concurrency", type=_ints, default=[1, 32],
                        help="closed-loop handshakes outstanding")  # fmt: skip
    parser.add_argument("--register-concurrency", type=int, default=4)
    parser.add_argument("--procs", type=int, default=2, help="generator processes")
    parser.add_argument("--transport", default="websockets", choices=["websockets", "picows"])
    parser.add_argument("--hash-workers", type=int, help="server setting hash_workers")
    parser.add_argument("--argon2", metavar="M_KIB,T,P", help="server argon2 parameters")
    parser.add_argument("--tick-hz", type=int, default=20)
    parser.add_argument("--server-cmd", default=str(GEARHALL),
                        help="how to run gearhall (e.g. another checkout's: "
                             "'env -C /path python -m server.cli')")  # fmt: skip
    parser.add_argument(
        "--py-spy",
        metavar="TEXT",
        help="py-spy the server in phases whose name contains TEXT (login-kept-c8-r1)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s windows, 50 accounts")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
        args.accounts = 50 if args.accounts == 200 else args.accounts
    env = dict(ABUSE_ENV)
    if args.hash_workers is not None:
        env["GEARHALL_HASH_WORKERS"] = str(args.hash_workers)
    if args.argon2:
        m, t, p = args.argon2.split(",")
        env.update(
            GEARHALL_ARGON2_MEMORY_KIB=m, GEARHALL_ARGON2_TIME_COST=t, GEARHALL_ARGON2_PARALLELISM=p
        )
    data_root = Path(tempfile.mkdtemp(prefix="ghL-", dir="/tmp"))
    run = f"{time.strftime('%H%M%S')}{os.getpid() % 1000}"
    server = ServerProcess(
        data_root / "server", "durable", tick_hz=args.tick_hz, transport=args.transport,
        command=shlex.split(args.server_cmd), env=env,
    )  # fmt: skip
    started = time.monotonic()
    # run_all's _meta reads these of its own options
    args.msgpack, args.gc_threshold = False, None
    meta = {
        **_meta(args),
        "server_env": env,
        "transport": args.transport,
        "accounts": args.accounts,
        "rounds": args.rounds,
        "rates": args.rates,
        "concurrency": args.concurrency,
        "hs_concurrency": args.hs_concurrency,
        "tick_budget_ms": 1000.0 / args.tick_hz,
    }
    bench: Bench | None = None
    try:
        server.start()
        bench = Bench(args, server, run)
        extra = asyncio.run(bench.main())
        phases = bench.phases
    finally:
        if bench is not None:
            bench.close()
        server.stop()
        shutil.rmtree(data_root, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    result = {
        "meta": meta,
        "registration": extra["registration"],
        "probe_errors": extra["probe_errors"],
        "summary": summarize(phases, meta["tick_budget_ms"]),
        "phases": phases,
    }
    print(render(result), file=sys.stderr)
    print(json.dumps(result, indent=2))
    if not args.no_save:
        save_result(result, f"{time.strftime('%Y%m%d-%H%M%S')}-login")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The C engine of ``wsprobe bench`` (``--engine c``): each worker's clients live in one
child process written in C (``cgen/loadgen.c``), built on first use with the system's C
compiler; this module is the worker's side of it.

Why. On one machine the generator competes with the server it measures: the picows engine
still spends 16 to 30 µs of Python per exchange, half the server's own cost
(``benchmarks/generator_bench.py``). The issue that set the transport targets measured them
with a C generator on a core of its own; this engine is that generator, and it makes the
generator's share of a shared machine small enough to read the server's figures for what
they are. The reference engines stay: ``websockets`` for behaviour, ``picows`` for cheap
Python.

Division of work. Python keeps everything that needs judgement, so that the three engines
cannot disagree on it: the tokens and hello frames, reading the welcome and building each
client's plan (:func:`tools.wsprobe.bench_engine.greet`), how failures are counted
(:class:`Setup`, :class:`Recorder`). The child does what happens per message: connecting
(RFC 6455 handshake, ``Sec-WebSocket-Accept`` checked, one subprotocol offered), the
closed or open loop with the same rules as ``bench_worker.py``'s docstring, matching
replies to requests by rid, the latency histograms (the same buckets as
:mod:`tools.wsprobe.stats`), pings, fragments, the closing handshake.

A plan becomes a fixed cycle of frames: each client's requests are generated once with a
sentinel rid and split around it; the child writes each request's rid between the two
halves. That needs a plan that does not read replies (every kind but ``stack``) and a cycle
that repeats, which :func:`_frames` checks.

The protocol on the child's stdin and stdout is described in ``cgen/loadgen.c``. Stats
stream from the child about every 10 ms, so a reply counts in the progress interval it
arrived in to within that; the totals are exact. The child's CPU time is added to the
worker's (``/proc/<pid>/stat``), so reports show the whole generator.

Limits: Linux only (epoll), ``ws://`` only (no TLS), no ``stack`` kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from tools.wsprobe.bench_engine import Recorder, Schedule, Setup, Window, greet, token
from tools.wsprobe.bench_report import LoadConfig
from tools.wsprobe.client import (
    SUBPROTOCOL_BY_ENCODING,
    ErrorReplyError,
    FrameCodec,
    Message,
    ProbeError,
)
from tools.wsprobe.plans import Mix, MixPlan, wrr_cycle
from tools.wsprobe.stats import LatencyHistogram

log = logging.getLogger("wsprobe.bench")

SOURCE = Path(__file__).resolve().with_name("cgen") / "loadgen.c"
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE")
UNSUPPORTED_KINDS = frozenset({"stack"})
"""Kinds whose next request depends on a reply (``KindPlan.observes``)."""
CLOSE_TIMEOUT_S = 10.0
_SENTINEL_TEXT = 987_654_321_987_654_321
_SENTINEL_BINARY = (1 << 63) | 0x0123_4567_89AB
_MAX_CYCLE_FRAMES = 1_000
_READ_LIMIT = 64 * 1024 * 1024


class CEngineError(ProbeError):
    """The C engine cannot run this configuration here; the message says why."""


# --- building ----------------------------------------------------------------------------------


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gearhall"


def build() -> Path:
    """The child's executable, compiled from :data:`SOURCE` unless already built (keyed by
    a hash of the source and flags, so an edited source is rebuilt).

    Raises:
        CEngineError: no C compiler, or the source does not compile.
    """
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"wsprobe-cgen-{digest}"
    if out.exists():
        return out
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise CEngineError(
            "--engine c needs a C compiler (cc); install one (Debian: apt install gcc) "
            "or use --engine picows"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, "-o", str(partial), str(SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise CEngineError(
            f"--engine c needs a C compiler: cannot run {compiler}: {exc.strerror}"
        ) from None
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise CEngineError(f"cannot build {SOURCE.name} with {compiler}:\n{done.stderr.strip()}")
    os.replace(partial, out)  # atomic: two workers building at once both end up with one file
    return out


def check(config: LoadConfig) -> None:
    """What the parent checks before spawning workers on the C engine; builds it too.

    Raises:
        CEngineError: the configuration needs something the engine does not do.
    """
    url = urlsplit(config.connect.url)
    if url.scheme != "ws":
        raise CEngineError(f"--engine c speaks ws:// only, not {url.scheme}://; use picows")
    unsupported = sorted(UNSUPPORTED_KINDS & set(config.mix))
    if unsupported:
        raise CEngineError(
            f"--engine c cannot run {', '.join(unsupported)} (its requests depend on "
            "replies); use picows"
        )
    build()


# --- the child's messages ----------------------------------------------------------------------


class _HelloReply(msgspec.Struct, tag="hello_reply", tag_field="type"):
    client: int
    bytes: int


class _Failed(msgspec.Struct, tag="failed", tag_field="type"):
    client: int
    code: str
    reason: str


class _Connected(msgspec.Struct, tag="connected", tag_field="type"):
    clients: int


class _Warning(msgspec.Struct, tag="warning", tag_field="type"):
    client: int
    reason: str


class _Stats(msgspec.Struct, tag="stats", tag_field="type"):
    ops: int
    by_kind: list[int]
    errors: dict[str, int]
    lat: list[tuple[int, int]]
    lat_sum_us: int
    lat_max_us: int
    svc: list[tuple[int, int]]
    svc_sum_us: int
    svc_max_us: int


class _RunDone(msgspec.Struct, tag="run_done", tag_field="type"):
    max_lag_s: float


class _Closed(msgspec.Struct, tag="closed", tag_field="type"):
    pass


class _Fatal(msgspec.Struct, tag="fatal", tag_field="type"):
    reason: str


_Record = _HelloReply | _Failed | _Connected | _Warning | _Stats | _RunDone | _Closed | _Fatal
_decode_record = msgspec.json.Decoder(_Record).decode


def _histogram(buckets: list[tuple[int, int]], sum_us: int, max_us: int) -> LatencyHistogram:
    counts = [0] * (buckets[-1][0] + 1) if buckets else []
    for index, n in buckets:
        counts[index] = n
    return LatencyHistogram(
        counts=counts, total=sum(n for _, n in buckets), sum_us=sum_us, max_us=max_us
    )


def absorb(rec: Recorder, stats: _Stats) -> None:
    """Add what the child recorded since its last stats line."""
    rec.ops += stats.ops
    for kind, n in enumerate(stats.by_kind):
        rec.ops_by_kind[kind] += n
    for code, n in stats.errors.items():
        rec.error(code, n)
    rec.latency.merge(_histogram(stats.lat, stats.lat_sum_us, stats.lat_max_us))
    rec.service.merge(_histogram(stats.svc, stats.svc_sum_us, stats.svc_max_us))


# --- plans as frame cycles ---------------------------------------------------------------------


def _frames(plan: MixPlan, mix: Mix, text: bool) -> list[tuple[int, bytes, bytes]]:
    """The client's requests as a cycle of ``(kind, before rid, after rid)``.

    Every kind plan the engine runs alternates between at most two requests, so a client's
    requests repeat after two passes of the mix's cycle; that is checked, not assumed.

    Raises:
        CEngineError: the cycle is too long to hold, or the plan does not repeat.
    """
    period = 2 * len(wrr_cycle(list(mix.values())))
    if period > _MAX_CYCLE_FRAMES:
        raise CEngineError("the mix's weights are too fine for the c engine: reduce them")
    sentinel = _SENTINEL_TEXT if text else _SENTINEL_BINARY
    marker = str(sentinel).encode() if text else b"\xcf" + sentinel.to_bytes(8, "big")
    cycle = [plan.next(sentinel) for _ in range(period)]
    if [plan.next(sentinel) for _ in range(period)] != cycle:
        raise CEngineError("the mix does not repeat: the c engine cannot replay it")
    frames = []
    for kind, frame in cycle:
        before, found, after = frame.partition(marker)
        if not found or marker in after:
            raise CEngineError(f"cannot find the rid in the request {frame!r}")
        frames.append((kind, before, after))
    return frames


def _plan_command(client: int, frames: list[tuple[int, bytes, bytes]]) -> bytes:
    parts = [f"plan {client} {len(frames)}\n".encode()]
    for kind, before, after in frames:
        parts.append(f"frame {kind} {len(before)} {len(after)}\n".encode())
        parts.append(before)
        parts.append(after)
    return b"".join(parts)


def _blob(name: str, data: bytes) -> bytes:
    return f"{name} {len(data)}\n".encode() + data


async def _welcome(message: Message, token: str) -> Message:
    """``greet``'s hello: the child already said it; this is the reply it got."""
    if message.get("t") != "session.welcome":
        raise ErrorReplyError(message)
    return message


# --- the pool ----------------------------------------------------------------------------------


class CPool:
    """:class:`tools.wsprobe.bench_engine.Pool` in a C child process."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.connected = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._cpu_s = 0.0

    # -- the child's pipes

    @property
    def _child(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError("the c engine is not running")
        return self._proc

    async def _write(self, data: bytes) -> None:
        stdin = self._child.stdin
        assert stdin is not None
        stdin.write(data)
        await stdin.drain()

    async def _read(self) -> _Record:
        stdout = self._child.stdout
        assert stdout is not None
        line = await stdout.readline()
        if not line:
            code = await self._child.wait()
            raise ProbeError(f"the c engine exited unexpectedly (status {code})")
        record: _Record = _decode_record(line)
        if isinstance(record, _Fatal):
            raise ProbeError(f"the c engine failed: {record.reason}")
        if isinstance(record, _Warning):
            log.warning("wsprobe bench: %s", record.reason)
        return record

    async def _read_bytes(self, n: int) -> bytes:
        stdout = self._child.stdout
        assert stdout is not None
        return await stdout.readexactly(n)

    def child_cpu_seconds(self) -> float:
        """The child's user + system CPU so far (the last reading once it has exited)."""
        if self._proc is not None:
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                self._cpu_s = (int(fields[11]) + int(fields[12])) / self._ticks
        return self._cpu_s

    # -- the phases

    async def connect(self, indices: range, setup: Setup) -> None:
        config = self.config
        options = config.connect
        url = urlsplit(options.url)
        if url.scheme != "ws" or url.hostname is None:
            raise CEngineError(f"{options.url}: the c engine needs a ws:// URL")
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        codec = FrameCodec(options.encoding)
        self._proc = await asyncio.create_subprocess_exec(
            str(build()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_READ_LIMIT,
        )
        mode = "text" if codec.text else "binary"
        head = [
            f"setup {url.hostname} {url.port or 80} {len(indices)} {config.connect_concurrency} "
            f"{options.open_timeout} {mode} {len(config.mix)}\n".encode(),
            _blob("path", path.encode()),
            _blob("subprotocol", SUBPROTOCOL_BY_ENCODING[options.encoding].encode()),
            _blob("origin", (options.origin or "").encode()),
        ]
        hellos = [
            _blob(
                "hello", codec.encode({"t": "session.hello", "token": token(config, i), "rid": 1})
            )
            for i in indices
        ]
        await self._write(b"".join(head + hellos))
        plans: dict[int, MixPlan] = {}
        while True:
            record = await self._read()
            if isinstance(record, _Connected):
                break
            if isinstance(record, _Failed):
                index = indices[record.client]
                who = token(config, index)
                if record.code == "connect_failed":
                    setup.fail("connect_failed", f"{options.url}: {record.reason}")
                else:
                    setup.fail("hello_failed", f"{who}: hello failed: {record.reason}")
            elif isinstance(record, _HelloReply):
                payload = await self._read_bytes(record.bytes)
                index = indices[record.client]
                try:
                    reply = codec.decode(payload)
                except ProbeError as exc:
                    setup.fail("hello_failed", f"{token(config, index)}: hello failed: {exc}")
                    await self._write(f"drop {record.client}\n".encode())
                    continue
                plan = await greet(config, index, codec, functools.partial(_welcome, reply), setup)
                if plan is None:
                    await self._write(f"drop {record.client}\n".encode())
                else:
                    plans[record.client] = plan
        commands = [
            _plan_command(c, _frames(plans[c], config.mix, codec.text)) for c in sorted(plans)
        ]
        await self._write(b"".join(commands) + b"go\n")
        self.connected = len(plans)

    async def _run(self, command: str, rec: Recorder) -> None:
        await self._write(command.encode())
        while True:
            record = await self._read()
            if isinstance(record, _Stats):
                absorb(rec, record)
            elif isinstance(record, _RunDone):
                rec.max_lag = max(rec.max_lag, record.max_lag_s)
                return

    async def run_closed(self, window: Window, rec: Recorder) -> None:
        drain = self.config.drain_timeout_s
        await self._run(f"closed {window.begin} {window.start} {window.end} {drain}\n", rec)

    async def run_open(self, schedule: Schedule, rec: Recorder) -> None:
        measured, drain = schedule.measured, self.config.drain_timeout_s
        await self._run(
            f"open {schedule.begin} {schedule.rate} {schedule.phase} {measured.start} "
            f"{measured.stop} {drain}\n",
            rec,
        )

    async def close(self) -> None:
        """Close every connection (the child sends the closes and waits for the answers)."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                await self._write(f"close {CLOSE_TIMEOUT_S}\n".encode())
                while not isinstance(await self._read(), _Closed):
                    pass
            async with asyncio.timeout(5.0):
                await proc.wait()
        except (ProbeError, OSError, TimeoutError) as exc:
            log.warning("wsprobe bench: the c engine did not close cleanly: %s", exc)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

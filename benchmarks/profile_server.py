"""Where the server's CPU goes under the durable equip mix: py-spy against the server.

    python -m benchmarks.profile_server [--clients 100] [--duration 10]

Starts a server (durable, embedded Postgres), puts it under the closed-loop equip mix
(``benchmarks/harness.py``: equip, unequip, move) and runs ``py-spy record`` on the server
process over the measured window. The raw collapsed stacks are saved next to the results;
the summary lists the functions with the most samples on top of the stack (self time) and on
the stack at all (inclusive time).

Only samples of a thread holding the GIL are kept (``--gil``): that is the server's Python
work plus the native calls it makes without releasing the GIL (socket writes, msgspec,
asyncpg's codecs, the garbage collector), and it leaves out waiting in ``epoll`` and idle
helper threads (py-spy's own idle detection counted the idle executor thread as busy).
``--native`` adds C frames, so time in ``write``, ``gc_collect_main`` or uvloop shows as
its own entry instead of being folded into the Python caller's self time.
``gil_busy_pct`` is kept samples over samples attempted: how busy the one Python thread was.

Read it with two caveats. py-spy samples wall-clock time: a thread that holds the GIL but
waits for a CPU (the box is oversubscribed in these runs) is sampled where the scheduler
preempted it, which is often a system call, so ``write`` and ``getpid`` are somewhat
inflated. And sampling pauses the server briefly each time: the throughput printed here is
not a benchmark figure.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import EQUIP_MIX, ServerProcess, WindowSampler
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.load import LoadConfig, run_load
from tools.wsprobe.plans import parse_mix

PY_SPY = Path(sys.executable).parent / "py-spy"
SAMPLE_HZ = 200
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*)\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(path: str) -> str:
    short = _short_file(path)
    head = short.split("/", 1)[0]
    if head in {"server", "protocol", "sim", "persistence"}:
        return short  # project code: keep the module
    return head.removesuffix(".py")


def summarize(raw: str, top: int = 40) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        names = []
        for frame in frames:
            m = _FRAME.match(frame)
            names.append(f"{m['func']} ({_short_file(m['file'])})" if m else frame)
        self_time[names[-1]] += count
        leaf = _FRAME.match(frames[-1])
        by_package[_package(leaf["file"]) if leaf else "?"] += count
        for name in set(names):
            inclusive[name] += count

    def pct(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "pct": round(100.0 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "self": pct(self_time),
        "inclusive": pct(inclusive),
        "self_by_module": pct(by_package),
    }


def profile(
    *,
    clients: int = 100,
    duration: float = 10.0,
    warmup: float = 3.0,
    procs: int = 2,
    encoding: str = "json",
    transport: str = "websockets",
    lines: bool = False,
    raw_path: Path,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Run the profile and return its summary (``error`` set if py-spy failed)."""
    root = data_root or Path(tempfile.mkdtemp(prefix="ghp-", dir="/tmp"))
    server = ServerProcess(root / "profile", "durable", transport=transport)
    result: dict[str, Any] = {
        "clients": clients,
        "transport": transport,
        "duration_s": duration,
        "raw": str(raw_path),
    }
    spy: dict[str, Any] = {}
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        sampler = WindowSampler(server)

        def start_spy(start: float, end: float) -> None:
            sampler.schedule(start, end)

            def run() -> None:
                time.sleep(max(0.0, start - time.monotonic()))
                cmd = [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, int(end - start))),
                    "--rate",
                    str(SAMPLE_HZ),
                    "--format",
                    "raw",
                    *(() if lines else ("--nolineno",)),
                    "--gil",
                    "--native",
                    "--output",
                    str(raw_path),
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                spy["returncode"] = done.returncode
                spy["stderr"] = done.stderr[-2000:]

            thread = threading.Thread(target=run, name="py-spy", daemon=True)
            thread.start()
            spy["thread"] = thread

        config = LoadConfig(
            connect=ConnectOptions(
                url=server.url,
                encoding="msgpack" if encoding == "msgpack" else "json",
                open_timeout=60.0,
            ),
            clients=clients,
            duration_s=duration,
            warmup_s=warmup,
            mix=parse_mix(EQUIP_MIX),
            procs=procs,
            run_id=f"prof{time.strftime('%H%M%S')}",
        )
        report = run_load(config, on_window=start_spy)
        result["rate_hz"] = SAMPLE_HZ
        thread = spy.pop("thread", None)
        if isinstance(thread, threading.Thread):
            thread.join(duration + 60.0)
        result["ops_per_s_under_profiler"] = report.ops_per_s
        result["server"] = sampler.result()
    finally:
        server.stop()
        if data_root is None:
            shutil.rmtree(root, ignore_errors=True)
    result["py_spy_returncode"] = spy.get("returncode")
    if spy.get("returncode") != 0 or not raw_path.exists():
        result["error"] = f"py-spy failed: {spy.get('stderr', '').strip() or 'no output'}"
        return result
    result.update(summarize(raw_path.read_text()))
    attempted = SAMPLE_HZ * max(1, int(duration))
    result["gil_busy_pct"] = round(100.0 * result["samples"] / attempted, 1)
    return result


def render_summary(result: dict[str, Any], top: int = 15) -> str:
    if "error" in result:
        return f"profile: {result['error']}"
    lines = [
        f"profile: durable equip, {result['transport']}, {result['clients']} clients, "
        f"{result['samples']} samples "
        f"holding the GIL ({result['gil_busy_pct']}% of attempts; "
        f"{result.get('ops_per_s_under_profiler', 0):,.0f} ops/s while sampled)",
        "  self time by module:",
    ]
    lines += [f"    {e['pct']:5.1f}%  {e['function']}" for e in result["self_by_module"][:top]]
    lines.append("  top functions, self time:")
    lines += [f"    {e['pct']:5.1f}%  {e['function']}" for e in result["self"][:top]]
    lines.append("  top Python functions, inclusive time (below the event loop):")
    below_loop = [
        e for e in result["inclusive"] if e["pct"] < 99.0 and e["function"].endswith(".py)")
    ]
    lines += [f"    {e['pct']:5.1f}%  {e['function']}" for e in below_loop[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--msgpack", action="store_true")
    parser.add_argument("--transport", choices=("websockets", "picows"), default="websockets")
    parser.add_argument("--lines", action="store_true", help="per line, not per function")
    parser.add_argument("--raw", type=Path, help="where to write py-spy's collapsed stacks")
    args = parser.parse_args(argv)
    raw = (
        args.raw or Path(tempfile.gettempdir()) / f"gearhall-profile-{time.strftime('%H%M%S')}.txt"
    )
    result = profile(
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        procs=args.procs,
        encoding="msgpack" if args.msgpack else "json",
        transport=args.transport,
        lines=args.lines,
        raw_path=raw,
    )
    print(json.dumps(result))
    print(render_summary(result), file=sys.stderr)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())

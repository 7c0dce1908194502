"""Memory per idle connection, for each transport, in one run.

    python -m benchmarks.idle_bench                       # up to 19,500 connections
    python -m benchmarks.idle_bench --steps 2000,5000 --procs 2

For each transport, one ``gearhall serve`` (write-behind, its own data directory) and, in
steps, more and more idle WebSocket connections opened by worker processes (``websockets``
clients offering ``gearhall.v1.json``; the upgrade completes, then nothing is sent). After
each step the server's RSS (psutil, the server process only; Postgres is another process)
is read once it is stable. Reported: RSS per step, the growth per connection against the
step before and against the empty server, and a least-squares slope over all steps — the
memory one more idle connection costs.

Two variants per transport: ``bare`` connections (upgraded, no ``session.hello``) and
``hello`` (every connection says hello as its own new player, so the player's state is
loaded too: that is what an idle *player* costs).

This machine's hard limit on open files is 20,000 per process (``ulimit -Hn``; it cannot be
raised in this container), and the server needs a few descriptors of its own, so the last
step is 19,500 connections, not 20,000; per-connection figures are what carry over.

Prints one JSON document on stdout and a table on stderr. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from benchmarks.harness import ServerProcess

DEFAULT_STEPS = (1000, 5000, 10000, 19500)
SETTLE_S = 1.0
"""RSS must not change by more than 1% over this long before a step is read."""


# --- the worker processes -----------------------------------------------------------------------


async def _open_many(
    url: str, count: int, first: int, hello: bool, run: str
) -> list[ClientConnection]:
    gate = asyncio.Semaphore(200)
    out: list[ClientConnection] = []

    async def one(i: int) -> None:
        async with gate:
            ws = await connect(
                url,
                subprotocols=[Subprotocol("gearhall.v1.json")],
                compression=None,
                open_timeout=120,
                ping_interval=None,
                max_queue=4,
            )
            if hello:
                await ws.send(
                    json.dumps({"t": "session.hello", "token": f"dev:{run}-{i}", "rid": 1})
                )
                reply = json.loads(await ws.recv())
                if reply.get("t") != "session.welcome":
                    raise RuntimeError(f"hello refused: {reply}")
            out.append(ws)

    await asyncio.gather(*(one(first + i) for i in range(count)))
    return out


def _worker(conn: Connection, url: str, hello: bool, run: str) -> None:
    """Open connections on request (``(count, first)``), hold them all, answer with the
    total held; ``None`` closes them and exits."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        held: list[ClientConnection] = []
        loop = asyncio.get_running_loop()
        while True:
            request = await loop.run_in_executor(None, conn.recv)
            if request is None:
                await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
                return
            count, first = request
            try:
                held += await _open_many(url, count, first, hello, run)
                conn.send(len(held))
            except Exception as exc:  # report, do not hang the parent
                conn.send(f"{type(exc).__name__}: {exc}")

    asyncio.run(main())


# --- the parent -------------------------------------------------------------------------------


def _stable_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    last = proc.memory_info().rss
    while True:
        time.sleep(SETTLE_S)
        now = proc.memory_info().rss
        if abs(now - last) <= 0.01 * last:
            return int(now)
        last = now


def _slope(points: list[tuple[int, int]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def measure(
    transport: str, hello: bool, steps: list[int], procs: int, root: Path
) -> dict[str, Any]:
    server = ServerProcess(root / f"{transport}-{'hello' if hello else 'bare'}", "write-behind")
    server.transport = transport
    server.start()
    assert server.proc is not None
    ctx = multiprocessing.get_context("spawn")
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    rows: list[dict[str, Any]] = []
    try:
        run = f"idle{time.strftime('%H%M%S')}{'h' if hello else 'b'}{transport[0]}"
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, server.url, hello, run), daemon=True)
            proc.start()
            workers.append((proc, parent))
        base = _stable_rss(server.proc.pid)
        rows.append({"connections": 0, "rss_bytes": base})
        opened = 0
        for target in steps:
            add = target - opened
            share, extra = divmod(add, procs)
            for w, (_, pipe) in enumerate(workers):
                n = share + (1 if w < extra else 0)
                pipe.send((n, opened + w * share + min(w, extra)))
            started = time.monotonic()
            for _, pipe in workers:
                answer = pipe.recv()
                if isinstance(answer, str):
                    raise RuntimeError(f"a worker failed at {target} connections: {answer}")
            opened = target
            rss = _stable_rss(server.proc.pid)
            rows.append(
                {
                    "connections": target,
                    "rss_bytes": rss,
                    "open_s": round(time.monotonic() - started, 2),
                    "bytes_per_connection_vs_empty": round((rss - base) / target),
                }
            )
            print(
                f"  {transport:10} {'hello' if hello else 'bare':5} {target:>6} connections: "
                f"RSS {rss / 2**20:7.1f} MiB  (+{(rss - base) / target / 1024:.1f} KiB each)",
                file=sys.stderr,
            )
    finally:
        for _, pipe in workers:
            pipe.send(None)
        for proc, _ in workers:
            proc.join(60)
        server.stop()
    slope = _slope([(r["connections"], r["rss_bytes"]) for r in rows])
    return {
        "transport": transport,
        "variant": "hello" if hello else "bare",
        "steps": rows,
        "bytes_per_connection_fit": round(slope),
        "rss_at_last_step_mib": round(rows[-1]["rss_bytes"] / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)))
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--transports", default="websockets,picows")
    parser.add_argument("--variants", default="bare,hello")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="gearhall-idle-") as tmp:
        for variant in args.variants.split(","):
            for transport in args.transports.split(","):
                results.append(measure(transport, variant == "hello", steps, args.procs, Path(tmp)))
    for r in results:
        print(
            f"{r['transport']:10} {r['variant']:5}  {r['bytes_per_connection_fit'] / 1024:6.1f} "
            f"KiB per connection (fit)  RSS at {r['steps'][-1]['connections']:,}: "
            f"{r['rss_at_last_step_mib']:.0f} MiB",
            file=sys.stderr,
        )
    print(json.dumps({"steps": steps, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

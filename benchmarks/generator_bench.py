"""What the load generator (``wsprobe bench``) costs, beside what the server costs, per op.

    python -m benchmarks.generator_bench             # 4 configurations x 6 s, ~1.5 min
    python -m benchmarks.generator_bench --duration 3 --clients 50

A generator that needs as much CPU per request as the server measures itself, not the
server: on a 2-core machine shared by both, every cycle it spends is one the server lacks.
This runs one server (write-behind, so Postgres stays out of the comparison; these figures
are about CPU per message, not durability) and, one after another against it, closed-loop
``wsprobe bench`` runs in a few configurations: 1 or 2 worker processes, JSON or
MessagePack, ping or the equip mix. For each it samples the server's CPU over the same
window as the workers measure their own, and reports both per op (µs of CPU per reply) and
their ratio. The ratio is the figure that matters: well under 1 means the generator is the
cheaper side of each exchange.

Prints one JSON document on stdout and a table on stderr. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.harness import EQUIP_MIX, PING_MIX, ServerProcess, WindowSampler
from tools.wsprobe.client import Encoding
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.load import LoadConfig, run_load
from tools.wsprobe.plans import parse_mix


@dataclass(frozen=True)
class Config:
    name: str
    mix: str
    procs: int
    encoding: Encoding


CONFIGS = (
    Config("ping-json-1proc", PING_MIX, 1, "json"),
    Config("ping-json-2proc", PING_MIX, 2, "json"),
    Config("ping-msgpack-2proc", PING_MIX, 2, "msgpack"),
    Config("equip-json-2proc", EQUIP_MIX, 2, "json"),
)


def _per_op_us(cpu_pct_of_core: float | None, ops_per_s: float) -> float | None:
    if cpu_pct_of_core is None or not ops_per_s:
        return None
    return round(cpu_pct_of_core / 100.0 / ops_per_s * 1e6, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gearhall-genbench-") as tmp:
        server = ServerProcess(Path(tmp) / "server", "write-behind")
        server.start()
        try:
            for index, config in enumerate(CONFIGS):
                sampler = WindowSampler(server)
                load = LoadConfig(
                    connect=ConnectOptions(url=server.url, encoding=config.encoding),
                    clients=args.clients,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    mix=parse_mix(config.mix),
                    procs=config.procs,
                    run_id=f"gen{time.strftime('%H%M%S')}{index}",
                )
                report = run_load(load, on_window=sampler.schedule)
                srv = sampler.result()
                server_pct = srv.get("server_cpu_pct_of_core")
                server_pct = server_pct if isinstance(server_pct, float) else None
                gen_us = _per_op_us(report.generator_cpu_pct_of_core, report.ops_per_s)
                srv_us = _per_op_us(server_pct, report.ops_per_s)
                results.append(
                    {
                        "name": config.name,
                        "mix": config.mix,
                        "procs": config.procs,
                        "encoding": config.encoding,
                        "ops_per_s": report.ops_per_s,
                        "errors": report.error_count,
                        "p99_ms": report.latency.p99_ms,
                        "generator_cpu_pct_of_core": report.generator_cpu_pct_of_core,
                        "server_cpu_pct_of_core": server_pct,
                        "generator_cpu_us_per_op": gen_us,
                        "server_cpu_us_per_op": srv_us,
                        "generator_to_server": (
                            round(gen_us / srv_us, 2) if gen_us and srv_us else None
                        ),
                        "machine_busy_pct_of_core": srv.get("machine_busy_pct_of_core"),
                    }
                )
                print(_row(results[-1]), file=sys.stderr)
        finally:
            server.stop()
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "server": "write-behind",
        "results": results,
    }


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['name']:20} {r['ops_per_s']:>9,.0f} ops/s  p99 {r['p99_ms']:>6.2f} ms  "
        f"generator {r['generator_cpu_us_per_op']} µs/op ({r['generator_cpu_pct_of_core']:.0f}%)"
        f"  server {r['server_cpu_us_per_op']} µs/op ({r['server_cpu_pct_of_core']}%)"
        f"  ratio {r['generator_to_server']}  errors {r['errors']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(msgspec.to_builtins(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the load generator (``wsprobe bench``) costs, beside what the server costs, per op,
on each of its client engines.

    python -m benchmarks.generator_bench     # 4 configurations x 2 engines x 6 s, ~2.5 min
    python -m benchmarks.generator_bench --duration 3 --clients 50 --engines picows
    python -m benchmarks.generator_bench --server-transport picows

A generator that needs as much CPU per request as the server measures itself, not the
server: on a 2-core machine shared by both, every cycle it spends is one the server lacks.
This runs one server (write-behind, so Postgres stays out of the comparison; these figures
are about CPU per message, not durability) and, one after another against it, closed-loop
``wsprobe bench`` runs in a few configurations: 1 or 2 worker processes, JSON or
MessagePack, ping or the equip mix. Each configuration runs once per engine (``websockets``
then ``picows``, back to back, so both see the same machine). For each run it samples the
server's CPU over the same window as the workers measure their own, and reports both per op
(µs of CPU per reply) and their ratio; per configuration, the ratio of the two engines'
generator CPU per op. ``generator_to_server`` well under 1 means the generator is the
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

from benchmarks.harness import EQUIP_MIX, GEARHALL, PING_MIX, ServerProcess, WindowSampler
from tools.wsprobe.bench_report import ENGINES, EngineName
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


def _measure(
    server: ServerProcess, config: Config, engine: EngineName, run_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    sampler = WindowSampler(server)
    load = LoadConfig(
        connect=ConnectOptions(url=server.url, encoding=config.encoding),
        clients=args.clients,
        duration_s=args.duration,
        warmup_s=args.warmup,
        mix=parse_mix(config.mix),
        procs=config.procs,
        run_id=run_id,
        engine=engine,
    )
    report = run_load(load, on_window=sampler.schedule)
    srv = sampler.result()
    server_pct = srv.get("server_cpu_pct_of_core")
    server_pct = server_pct if isinstance(server_pct, float) else None
    gen_us = _per_op_us(report.generator_cpu_pct_of_core, report.ops_per_s)
    srv_us = _per_op_us(server_pct, report.ops_per_s)
    return {
        "engine": engine,
        "ops_per_s": report.ops_per_s,
        "errors": report.error_count,
        "p99_ms": report.latency.p99_ms,
        "generator_cpu_pct_of_core": report.generator_cpu_pct_of_core,
        "server_cpu_pct_of_core": server_pct,
        "generator_cpu_us_per_op": gen_us,
        "server_cpu_us_per_op": srv_us,
        "generator_to_server": round(gen_us / srv_us, 2) if gen_us and srv_us else None,
        "machine_busy_pct_of_core": srv.get("machine_busy_pct_of_core"),
    }


def _engine_ratio(runs: dict[str, dict[str, Any]]) -> float | None:
    """The picows engine's generator CPU per op over the websockets engine's."""
    if "picows" not in runs or "websockets" not in runs:
        return None
    cheap = runs["picows"]["generator_cpu_us_per_op"]
    reference = runs["websockets"]["generator_cpu_us_per_op"]
    return round(cheap / reference, 2) if cheap and reference else None


def _engines(text: str) -> list[EngineName]:
    chosen = [e for name in text.split(",") for e in ENGINES if e == name.strip()]
    if len(chosen) != len(text.split(",")):
        raise argparse.ArgumentTypeError(f"engines are {', '.join(ENGINES)}")
    return chosen


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    engines: list[EngineName] = args.engines
    # ServerProcess keeps GEARHALL_* out of the server's environment: set the transport in
    # the command instead (its documented way to wrap the server).
    command = ["env", f"GEARHALL_TRANSPORT={args.server_transport}", str(GEARHALL)]
    with tempfile.TemporaryDirectory(prefix="gearhall-genbench-") as tmp:
        server = ServerProcess(Path(tmp) / "server", "write-behind", command=command)
        server.start()
        try:
            for index, config in enumerate(CONFIGS):
                runs: dict[str, dict[str, Any]] = {}
                for engine in engines:
                    run_id = f"gen{time.strftime('%H%M%S')}{index}{engine[0]}"
                    runs[engine] = _measure(server, config, engine, run_id, args)
                    print(_row(config.name, runs[engine]), file=sys.stderr)
                ratio = _engine_ratio(runs)
                if ratio is not None:
                    print(f"{'':20} generator CPU/op picows ÷ websockets: {ratio}", file=sys.stderr)
                results.append(
                    {
                        "name": config.name,
                        "mix": config.mix,
                        "procs": config.procs,
                        "encoding": config.encoding,
                        "engines": runs,
                        "picows_to_websockets": ratio,
                    }
                )
        finally:
            server.stop()
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "server": "write-behind",
        "server_transport": args.server_transport,
        "results": results,
    }


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name:20} {r['engine']:10} {r['ops_per_s']:>9,.0f} ops/s  p99 {r['p99_ms']:>6.2f} ms  "
        f"generator {r['generator_cpu_us_per_op']} µs/op ({r['generator_cpu_pct_of_core']:.0f}%)"
        f"  server {r['server_cpu_us_per_op']} µs/op ({r['server_cpu_pct_of_core']}%)"
        f"  ratio {r['generator_to_server']}  errors {r['errors']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--engines", type=_engines, default=list(ENGINES),
        help=f"client engines to compare, comma-separated (default: {','.join(ENGINES)})",
    )  # fmt: skip
    parser.add_argument(
        "--server-transport", choices=["websockets", "picows"], default="websockets",
        help="the server's WebSocket library (default: websockets)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(msgspec.to_builtins(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

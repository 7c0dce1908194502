"""The two transports side by side, in one run: websockets (the reference) and picows.

    python -m benchmarks.transport_bench                    # 8 scenarios, ~4 min
    python -m benchmarks.transport_bench --duration 5 --only ping-100 --only equip-100-durable

For each transport, the same scenarios as ``run_all`` (``run_all.run_scenario``: a fresh
``gearhall serve`` and embedded Postgres per scenario, the ``wsprobe bench`` generator, CPU
sampled over the measured window): the ping ceiling, the durable equip/move mix
(``equip:2,move:1``) at 100 and 1,000 closed-loop clients, and an open loop at a fixed
10,000 ops/s with 1,000 clients. Scenarios alternate between the transports (A, B, A, B…),
so slow drift of a shared machine hits both alike. Reported per scenario: ops/s, latency
p50/p99/p99.9, errors, server CPU per op (server CPU seconds over replies), and the
picows/websockets ratios; then the issue's targets, met or not.

The load generator shares the 2 cores with the server and Postgres; its CPU is in the
table. Prints JSON on stdout (and saves it under benchmarks/results/), a table on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.harness import EQUIP_MIX, PING_MIX
from benchmarks.run_all import Scenario, add_generator_arguments, run_plan

TRANSPORTS = ("websockets", "picows")


def scenarios(transport: str) -> list[Scenario]:
    t = transport
    return [
        Scenario(f"ping-100-{t}", "ping ceiling", PING_MIX, 100, "durable", transport=t),
        Scenario(f"equip-100-durable-{t}", "equip/move, closed loop", EQUIP_MIX, 100,
                 "durable", transport=t),
        Scenario(f"equip-1000-durable-{t}", "equip/move, closed loop", EQUIP_MIX, 1000,
                 "durable", transport=t),
        Scenario(f"equip-10k-open-1000-durable-{t}", "equip/move, open loop 10,000 ops/s",
                 EQUIP_MIX, 1000, "durable", rate=10_000.0, transport=t),
    ]  # fmt: skip


BASE_NAMES = [s.name.removesuffix("-websockets") for s in scenarios("websockets")]


def _cpu_us_per_op(entry: dict[str, Any]) -> float | None:
    if "error" in entry:
        return None
    pct = entry["server"].get("server_cpu_pct_of_core")
    ops = entry["load"]["ops_per_s"]
    return round(pct / 100.0 / ops * 1e6, 1) if pct and ops else None


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    by_name = {e["name"]: e for e in entries}
    rows = []
    for base in BASE_NAMES:
        row: dict[str, Any] = {"scenario": base}
        for t in TRANSPORTS:
            e = by_name.get(f"{base}-{t}")
            if e is None or "error" in e:
                row[t] = {"error": e.get("error") if e else "not run"}
                continue
            lat = e["load"]["latency"]
            row[t] = {
                "ops_per_s": e["load"]["ops_per_s"],
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "p999_ms": lat["p999_ms"],
                "errors": sum(e["load"]["errors"].values()),
                "server_cpu_pct_of_core": e["server"].get("server_cpu_pct_of_core"),
                "server_cpu_us_per_op": _cpu_us_per_op(e),
                "generator_cpu_pct_of_core": e["load"]["generator_cpu_pct_of_core"],
                "postgres_cpu_pct_of_core": e["server"].get("postgres_cpu_pct_of_core"),
            }
        a, b = row["websockets"], row["picows"]
        if "error" not in a and "error" not in b:
            row["picows_over_websockets_ops"] = round(b["ops_per_s"] / a["ops_per_s"], 2)
            if a["server_cpu_us_per_op"] and b["server_cpu_us_per_op"]:
                row["picows_over_websockets_cpu_per_op"] = round(
                    b["server_cpu_us_per_op"] / a["server_cpu_us_per_op"], 2
                )
        rows.append(row)
    return {"rows": rows, "targets": _targets(rows)}


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def get(scenario: str, key: str) -> float | None:
        row = next((r for r in rows if r["scenario"] == scenario), None)
        value = row["picows"].get(key) if row else None
        return value if isinstance(value, int | float) else None

    checks = [
        ("picows durable equip >= 30,000 ops/s, 100 clients",
         get("equip-100-durable", "ops_per_s"), 30_000, True),
        ("picows durable equip >= 30,000 ops/s, 1,000 clients",
         get("equip-1000-durable", "ops_per_s"), 30_000, True),
        ("picows p99 <= 5 ms at 10,000 ops/s, 1,000 clients",
         get("equip-10k-open-1000-durable", "p99_ms"), 5.0, False),
    ]  # fmt: skip
    out = []
    for target, value, threshold, higher in checks:
        met = None if value is None else (value >= threshold if higher else value <= threshold)
        out.append({"target": target, "measured": value, "met": met})
    return out


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':30} {'transport':10} {'ops/s':>9} {'p50':>7} {'p99':>8} {'p99.9':>8} "
        f"{'err':>5} {'srv%':>5} {'µs/op':>6} {'gen%':>5} {'pg%':>5}"
    ]
    for row in summary["rows"]:
        for t in TRANSPORTS:
            r = row[t]
            if "error" in r:
                lines.append(f"{row['scenario']:30} {t:10} FAILED: {str(r['error'])[:60]}")
                continue
            lines.append(
                f"{row['scenario']:30} {t:10} {r['ops_per_s']:>9,.0f} {r['p50_ms']:>7.2f} "
                f"{r['p99_ms']:>8.2f} {r['p999_ms']:>8.2f} {r['errors']:>5} "
                f"{r['server_cpu_pct_of_core'] or 0:>5.0f} {r['server_cpu_us_per_op'] or 0:>6.1f} "
                f"{r['generator_cpu_pct_of_core']:>5.0f} {r['postgres_cpu_pct_of_core'] or 0:>5.0f}"
            )
        if "picows_over_websockets_ops" in row:
            lines.append(
                f"{'':30} {'ratio':10} {row['picows_over_websockets_ops']:>8}x ops/s, "
                f"{row.get('picows_over_websockets_cpu_per_op')}x server CPU per op"
            )
    lines.append("(ms; CPU in % of one core: server, µs of server CPU per reply, generator, "
                 "Postgres)")  # fmt: skip
    for t in summary["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "no verdict"}[t["met"]]
        lines.append(f"{verdict:10} {t['target']}  (measured: {t['measured']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    add_generator_arguments(parser)
    parser.add_argument("--only", action="append", choices=BASE_NAMES, metavar="NAME")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    # run_scenario reads these run_all options.
    args.quick, args.msgpack, args.gc_threshold = False, False, None
    chosen = set(args.only or BASE_NAMES)
    plan = [
        s
        for pair in zip(*(scenarios(t) for t in TRANSPORTS), strict=True)
        for s in pair
        if s.name.rsplit("-", 1)[0] in chosen
    ]
    return run_plan(plan, args, tag="transports", summarize=summarize, render=render)


if __name__ == "__main__":
    sys.exit(main())

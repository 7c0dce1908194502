"""The collector's young-generation threshold, side by side, at a fixed rate.

    python -m benchmarks.gc_bench                                   # ~6 min
    python -m benchmarks.gc_bench --threshold 50000 --threshold 5000 --rounds 3

The issue-6 latency scenario (picows, durable equip/move mix, an open loop at 10,000 ops/s
from 1,000 clients, ``transport_bench``'s ``equip-10k-open-1000-durable``) with the server's
``gc_gen0_threshold`` varied, in rounds that alternate the thresholds (A B C, A B C…) so a
shared machine's drift hits all alike. Also a closed-loop run per threshold, for what a
smaller threshold costs in throughput. Reported per threshold: the median over rounds of
p50/p99/p99.9 and of server CPU per op, and every round's figures.

Prints JSON on stdout (saved under benchmarks/results/), a table on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from benchmarks.harness import EQUIP_MIX
from benchmarks.run_all import Scenario, add_generator_arguments, figures, run_plan

DEFAULT_THRESHOLDS = (50_000, 10_000, 2_000)


def plan(thresholds: list[int], rounds: int, closed: bool) -> list[Scenario]:
    out = []
    for r in range(rounds):
        for t in thresholds:
            env = {"GEARHALL_GC_GEN0_THRESHOLD": str(t)}
            out.append(
                Scenario(
                    f"open-10k-gc{t}-r{r}",
                    "equip/move, open loop 10,000 ops/s",
                    EQUIP_MIX,
                    1000,
                    "durable",
                    rate=10_000.0,
                    transport="picows",
                    env=env,
                )
            )
    if closed:
        for t in thresholds:
            env = {"GEARHALL_GC_GEN0_THRESHOLD": str(t)}
            out.append(
                Scenario(
                    f"closed-1000-gc{t}",
                    "equip/move, closed loop",
                    EQUIP_MIX,
                    1000,
                    "durable",
                    transport="picows",
                    env=env,
                )
            )
    return out


def summarize(entries: list[dict[str, Any]], thresholds: list[int]) -> dict[str, Any]:
    rows = []
    for t in thresholds:
        runs = [figures(e) for e in entries if e["name"].startswith(f"open-10k-gc{t}-")]
        ok = [r for r in runs if "error" not in r]
        closed = [figures(e) for e in entries if e["name"] == f"closed-1000-gc{t}"]
        row: dict[str, Any] = {"threshold": t, "rounds": runs}
        if ok:
            for key in ("p50_ms", "p99_ms", "p999_ms", "ops_per_s"):
                row[f"median_{key}"] = round(statistics.median(r[key] for r in ok), 2)
            cpu = [r["server_cpu_us_per_op"] for r in ok if r["server_cpu_us_per_op"]]
            row["median_server_cpu_us_per_op"] = round(statistics.median(cpu), 1) if cpu else None
        if closed:
            row["closed_loop"] = closed[0]
        rows.append(row)
    return {"rows": rows}


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"{'gen0 threshold':>14} {'p50':>7} {'p99':>8} {'p99.9':>8} {'µs/op':>6}   "
        f"{'closed-loop ops/s':>17} {'µs/op':>6}   p99 per round"
    ]
    for row in summary["rows"]:
        closed = row.get("closed_loop", {})
        rounds = ", ".join(
            f"{r['p99_ms']:.1f}" if "error" not in r else "FAILED" for r in row["rounds"]
        )
        lines.append(
            f"{row['threshold']:>14,} {row.get('median_p50_ms', 0):>7.2f} "
            f"{row.get('median_p99_ms', 0):>8.2f} {row.get('median_p999_ms', 0):>8.2f} "
            f"{row.get('median_server_cpu_us_per_op') or 0:>6.1f}   "
            f"{closed.get('ops_per_s', 0):>17,.0f} {closed.get('server_cpu_us_per_op') or 0:>6.1f}"
            f"   {rounds}"
        )
    lines.append("(open loop: medians over rounds, ms; picows, durable, 1,000 clients)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--threshold", type=int, action="append", metavar="N")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    add_generator_arguments(parser)
    parser.add_argument("--no-closed", action="store_true", help="skip the closed-loop runs")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    args.quick, args.msgpack, args.gc_threshold = False, False, None  # read by run_scenario
    thresholds = args.threshold or list(DEFAULT_THRESHOLDS)
    return run_plan(
        plan(thresholds, args.rounds, not args.no_closed),
        args,
        tag="gc",
        summarize=lambda entries: summarize(entries, thresholds),
        render=render,
    )


if __name__ == "__main__":
    sys.exit(main())

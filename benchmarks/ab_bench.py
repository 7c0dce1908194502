"""Two commits of the server side by side: is a change faster, and by how much?

    python -m benchmarks.ab_bench --base HEAD~3                  # ~8 min
    python -m benchmarks.ab_bench --base 62d4600 --rounds 3 --only closed-1000

The base commit is checked out into a temporary git worktree and its server runs from
there (``run_all.server_from``: this interpreter and libraries, that tree's code); the
other side is the working tree. Each scenario runs on a fresh server and embedded Postgres,
in rounds that alternate base and current (A B, A B…) so the shared machine's drift hits
both alike, with the same load generator (``wsprobe bench``, picows engine). Scenarios
(picows transport unless ``--transport``, durable, the equip/move mix):

- ``closed-100``, ``closed-1000``: closed loop, 100 / 1,000 clients: throughput and
  server CPU per op;
- ``open-10k``: open loop at 10,000 ops/s, 1,000 clients: latency and CPU per op;
- ``ping-100``: the ping ceiling, 100 clients: the transport and dispatch alone.

Reported per scenario and side: the median over rounds of ops/s, server CPU µs per op and
p50/p99/p99.9, and current ÷ base for each. CPU per op is the figure to compare: it is the
server's own time (user + system) over the ops it served, so it moves least with the
neighbours. Prints JSON on stdout (saved under benchmarks/results/), a table on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import EQUIP_MIX, PING_MIX, ROOT
from benchmarks.run_all import Scenario, add_generator_arguments, figures, run_plan

BASE_SCENARIOS: dict[str, tuple[str, str, int, float | None]] = {
    # name: (title, mix, clients, rate)
    "closed-100": ("equip/move, closed loop", EQUIP_MIX, 100, None),
    "closed-1000": ("equip/move, closed loop", EQUIP_MIX, 1000, None),
    "open-10k": ("equip/move, open loop 10,000 ops/s", EQUIP_MIX, 1000, 10_000.0),
    "ping-100": ("ping, closed loop", PING_MIX, 100, None),
}
SIDES = ("base", "current")


def plan(names: list[str], rounds: int, transport: str, base: Path) -> list[Scenario]:
    out = []
    for r in range(rounds):
        for name in names:
            title, mix, clients, rate = BASE_SCENARIOS[name]
            for side in SIDES:
                out.append(
                    Scenario(
                        f"{name}-{side}-r{r}",
                        title,
                        mix,
                        clients,
                        "durable",
                        rate=rate,
                        transport=transport,
                        source=base if side == "base" else None,
                    )
                )
    return out


KEYS = ("ops_per_s", "server_cpu_us_per_op", "p50_ms", "p99_ms", "p999_ms", "server_over_5ms_pct")


def summarize(entries: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    rows = []
    for name in names:
        row: dict[str, Any] = {"scenario": name}
        for side in SIDES:
            runs = [figures(e) for e in entries if e["name"].startswith(f"{name}-{side}-")]
            ok = [r for r in runs if "error" not in r]
            medians = {
                k: round(statistics.median(r[k] for r in ok), 2)
                for k in KEYS
                if ok and all(r[k] is not None for r in ok)
            }
            row[side] = {"rounds": runs, "median": medians}
        base, cur = row["base"]["median"], row["current"]["median"]
        row["ratio"] = {
            k: round(cur[k] / base[k], 3)
            for k in KEYS[:-1]  # not of a percentage near zero
            if base.get(k) and k in cur
        }
        rows.append(row)
    return {"rows": rows}


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':<12} {'side':<8} {'ops/s':>8} {'µs/op':>6} {'p50':>7} {'p99':>8} "
        f"{'p99.9':>8} {'srv>5ms':>8}   µs/op per round"
    ]
    for row in summary["rows"]:
        for side in (*SIDES, "ratio"):
            m = row[side] if side == "ratio" else row[side]["median"]
            rounds = (
                ""
                if side == "ratio"
                else ", ".join(
                    f"{r['server_cpu_us_per_op']}" if "error" not in r else "FAILED"
                    for r in row[side]["rounds"]
                )
            )
            fmt = "{:>8.3f}" if side == "ratio" else "{:>8,.0f}"
            lines.append(
                f"{row['scenario'] if side == 'base' else '':<12} {side:<8} "
                + fmt.format(m.get("ops_per_s", 0))
                + f" {m.get('server_cpu_us_per_op', 0):>6.2f} {m.get('p50_ms', 0):>7.2f}"
                f" {m.get('p99_ms', 0):>8.2f} {m.get('p999_ms', 0):>8.2f}"
                f" {m.get('server_over_5ms_pct', 0):>7.2f}%   {rounds}"
            )
    lines.append(
        "(medians over rounds; latencies in ms; srv>5ms: requests over 5 ms inside the "
        "server; ratio = current / base)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--only", action="append", choices=list(BASE_SCENARIOS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--transport", choices=("websockets", "picows"), default="picows")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    add_generator_arguments(parser)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    args.quick, args.msgpack, args.gc_threshold = False, False, None  # read by run_scenario
    names = args.only or list(BASE_SCENARIOS)
    worktree = Path(tempfile.mkdtemp(prefix="gh-ab-base-", dir="/tmp")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(worktree), args.base],
        cwd=ROOT,
        check=True,
    )
    try:
        return run_plan(
            plan(names, args.rounds, args.transport, worktree),
            args,
            tag="ab",
            summarize=lambda entries: {"base": args.base, **summarize(entries, names)},
            render=render,
        )
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False
        )


if __name__ == "__main__":
    sys.exit(main())

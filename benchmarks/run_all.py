"""Run the Gearhall benchmark suite and print (and save) what was measured.

    python -m benchmarks.run_all              # everything, ~12 s measured per scenario
    python -m benchmarks.run_all --quick      # 3 s per scenario, 250 instead of 1,000 clients
    python -m benchmarks.run_all --only equip-100-durable --only ping-100
    python -m benchmarks.run_all --profile    # also py-spy the server (benchmarks/profile_server)
    python -m benchmarks.run_all --only model # game model: tick, rules, memory, snapshots

Scenarios: the ping ceiling; the ``equip``, ``stack`` and ``mixed`` request mixes
(``benchmarks/harness.py``; the kinds are in ``tools/wsprobe/plans.py``) durable and (equip)
write-behind; ``tick-10k`` (starter-kit players, ``benchmarks/tick_bench.py``) and ``model``
(~60-item players, ``benchmarks/model_bench.py``).

Each server scenario starts its own ``gearhall serve`` (fresh data directory, so a fresh
embedded Postgres), waits for ``/readyz``, runs the load generator of ``wsprobe bench``
(``tools/wsprobe/load.py``; live progress on stderr when that is a terminal) and samples CPU
over the measured window: the server process, every Postgres process, the load workers
(they report their own) and the whole machine. Everything runs on this one machine, so
server, Postgres and load generator share its cores: read the CPU columns before reading the
throughput.

Write-behind scenarios acknowledge before the journal commit: their replies are NOT durable.
They exist to show what durability costs and are labelled so wherever they appear.

Benchmarks are not tests: nothing here asserts a time. The targets are printed as met or not
met, beside the figures. Raw JSON goes to ``benchmarks/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import psutil

from benchmarks import model_bench, profile_server, tick_bench
from benchmarks.harness import (
    EQUIP_MIX,
    MIXED_MIX,
    PING_MIX,
    ROOT,
    STACK_MIX,
    ServerProcess,
    WindowSampler,
)
from tools.wsprobe.bench_report import ENGINES
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.load import LoadConfig, LoadError, Progress, run_load
from tools.wsprobe.plans import parse_mix

RESULTS = Path(__file__).resolve().parent / "results"
WRITE_BEHIND_LABEL = "write-behind (NOT durable)"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    mix: str
    """``wsprobe bench --mix``."""
    clients: int
    durability: Literal["durable", "write-behind"]
    rate: float | None = None
    transport: str = "websockets"
    """``gearhall serve --transport``."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra ``GEARHALL_*`` settings (an experiment's variable; shown in the report)."""
    source: Path | None = None
    """Run the server from this source tree (another checkout) instead of this one."""

    @property
    def durability_label(self) -> str:
        if self.mix == PING_MIX:
            return "n/a (ping: no journal)"
        return WRITE_BEHIND_LABEL if self.durability == "write-behind" else "durable"


SCENARIOS = [
    Scenario("ping-100", "ping ceiling, closed loop", PING_MIX, 100, "durable"),
    Scenario("equip-100-durable", "equip, closed loop", EQUIP_MIX, 100, "durable"),
    Scenario("equip-1000-durable", "equip, closed loop", EQUIP_MIX, 1000, "durable"),
    Scenario("equip-100-write-behind", "equip, closed loop", EQUIP_MIX, 100, "write-behind"),
    Scenario("equip-1000-write-behind", "equip, closed loop", EQUIP_MIX, 1000,
             "write-behind"),
    Scenario("equip-4k-open-1000-durable", "equip, open loop 4,000 ops/s", EQUIP_MIX, 1000,
             "durable", rate=4000.0),
    Scenario("stack-100-durable", "split/sort/merge, closed loop", STACK_MIX, 100, "durable"),
    Scenario("mixed-100-durable", "equip + stack + stats, closed loop", MIXED_MIX, 100,
             "durable"),
]  # fmt: skip
TICK = "tick-10k"
MODEL = "model"
ALL_NAMES = [s.name for s in SCENARIOS] + [TICK, MODEL]
QUICK_CLIENTS = 250


def server_from(source: Path) -> list[str]:
    """The command running ``gearhall`` from the source tree ``source`` (a git worktree of
    another commit): this interpreter and its libraries, that tree's packages first."""
    boot = f"import sys; sys.path.insert(0, {str(source)!r}); from server.cli import main; "
    return [sys.executable, "-c", boot + "sys.exit(main())"]


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """``--procs`` and ``--engine``: how ``wsprobe bench`` generates the load."""
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--engine", choices=ENGINES, default="picows",
        help="the generator's client engine (default picows)",
    )  # fmt: skip


def save_result(result: dict[str, Any], name: str) -> Path:
    """Write ``result`` (indented JSON) to ``results/<name>.json``; return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_files": len(_git("status", "--porcelain").splitlines()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": psutil.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "procs": args.procs,
        "generator_engine": getattr(args, "engine", None),  # login_bench has no wsprobe
        "encoding": "msgpack" if args.msgpack else "json",
        "server_gc_threshold": args.gc_threshold,
    }


def run_scenario(
    scenario: Scenario, args: argparse.Namespace, data_root: Path, index: int
) -> dict[str, Any]:
    clients = min(scenario.clients, QUICK_CLIENTS) if args.quick else scenario.clients
    entry: dict[str, Any] = {
        "name": scenario.name,
        "title": scenario.title,
        "durability": scenario.durability_label,
        "mix": scenario.mix,
        "clients": clients,
        "rate": scenario.rate,
    }
    server = ServerProcess(data_root / scenario.name, scenario.durability)
    server.transport = scenario.transport
    server.env = dict(scenario.env)
    if scenario.source is not None:
        server.command = server_from(scenario.source)
        entry["source"] = str(scenario.source)
    entry["transport"] = scenario.transport
    if scenario.env:
        entry["env"] = dict(scenario.env)
    if args.gc_threshold:  # the server's own setting (App sets it after start-up)
        server.env["GEARHALL_GC_GEN0_THRESHOLD"] = str(args.gc_threshold)
    print(f"== {scenario.name}: {scenario.title}, {clients} clients, "
          f"{scenario.durability_label}", file=sys.stderr)  # fmt: skip
    try:
        server.start()
        sampler = WindowSampler(server)
        config = LoadConfig(
            connect=ConnectOptions(
                url=server.url,
                encoding="msgpack" if args.msgpack else "json",
                open_timeout=60.0,  # 1,000 handshakes at once on a loaded machine
            ),
            clients=clients,
            duration_s=args.duration,
            warmup_s=args.warmup,
            mix=parse_mix(scenario.mix),
            procs=args.procs,
            rate=scenario.rate,
            run_id=f"{time.strftime('%H%M%S')}{index}",
            engine=args.engine,
        )
        # Live progress only on a terminal: in a log, the summary below says it all.
        progress = Progress(sys.stderr) if sys.stderr.isatty() else None
        report = run_load(config, on_window=sampler.schedule, progress=progress)
        entry["load"] = msgspec.to_builtins(report)
        entry["server"] = sampler.result()
        entry["server"]["other_cpu_pct_of_core"] = WindowSampler.other_load(
            entry["server"], report.generator_cpu_pct_of_core
        )
    except (LoadError, RuntimeError, OSError) as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["server_log_tail"] = server.log_tail()
    finally:
        server.stop()
    _print_entry(entry)
    return entry


def figures(entry: dict[str, Any]) -> dict[str, Any]:
    """One scenario's headline figures, for the side-by-side scripts (gc_bench, ab_bench)."""
    if "error" in entry:
        return {"error": entry["error"]}
    lat = entry["load"]["latency"]
    pct = entry["server"].get("server_cpu_pct_of_core")
    ops = entry["load"]["ops_per_s"]
    return {
        "ops_per_s": ops,
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "p999_ms": lat["p999_ms"],
        "errors": sum(entry["load"]["errors"].values()),
        "server_cpu_us_per_op": round(pct / 100 / ops * 1e6, 1) if pct and ops else None,
        # requests over 5 ms inside the server: is a client-side tail the server's?
        "server_over_5ms_pct": entry["server"].get("server_requests_over_5ms_pct"),
    }


def run_plan(
    plan: list[Scenario],
    args: argparse.Namespace,
    *,
    tag: str,
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """Run ``plan`` in order (each scenario on a fresh server under one temporary root),
    print ``render(summary)`` on stderr and the JSON on stdout, and save the JSON as
    ``results/<time>-<tag>.json`` unless ``args.no_save``. For the side-by-side scripts
    (transport_bench, gc_bench)."""
    data_root = Path(tempfile.mkdtemp(prefix=f"gh-{tag}-", dir="/tmp"))
    meta = _meta(args)  # before the run: its "started" is the start
    started = time.monotonic()
    try:
        entries = [run_scenario(s, args, data_root, i) for i, s in enumerate(plan)]
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
    summary = summarize(entries)
    result = {
        "meta": {**meta, "elapsed_s": round(time.monotonic() - started, 1)},
        "summary": summary,
        "scenarios": entries,
    }
    print(render(summary), file=sys.stderr)
    print(json.dumps(result, indent=2))
    if not args.no_save:
        save_result(result, f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}")
    return 0


def _print_entry(entry: dict[str, Any]) -> None:
    if "error" in entry:
        print(f"   FAILED: {entry['error']}", file=sys.stderr)
        return
    load, server = entry["load"], entry["server"]
    lat = load["latency"]
    print(
        f"   {load['ops_per_s']:>9,.0f} ops/s  p50 {lat['p50_ms']:.2f}  p99 {lat['p99_ms']:.2f}  "
        f"p99.9 {lat['p999_ms']:.2f}  max {lat['max_ms']:.2f} ms  errors {load['errors'] or 0}\n"
        f"   CPU (% of one core): server {server.get('server_cpu_pct_of_core')}  "
        f"postgres {server.get('postgres_cpu_pct_of_core')}  "
        f"load generator {load['generator_cpu_pct_of_core']}  "
        f"other {server.get('other_cpu_pct_of_core')}  (machine "
        f"{server.get('machine_busy_pct_of_core')} of {100 * server.get('machine_cores', 1)})",
        file=sys.stderr,
    )


def run_tick(args: argparse.Namespace) -> dict[str, Any]:
    ticks = 300 if args.quick else 2000
    print(f"== {TICK}: tick duration, 10,000 players, {ticks} ticks (in-process)", file=sys.stderr)
    cmd = [sys.executable, "-m", "benchmarks.tick_bench", "--ticks", str(ticks), "--json-only"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"name": TICK, "error": done.stderr[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print("   " + tick_bench.render_summary(result).replace("\n", "\n   "), file=sys.stderr)
    return {"name": TICK, **result}


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    """The game-model benchmarks (``benchmarks/model_bench.py``) in their own processes."""
    print(f"== {MODEL}: tick, rules, memory and snapshots with ~60-item players", file=sys.stderr)
    cmd = [sys.executable, "-m", "benchmarks.model_bench", "--json-only", "--no-save"]
    if args.quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0 and not done.stdout.strip():
        return {"name": MODEL, "error": done.stderr[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print("   " + model_bench.render_summary(result).replace("\n", "\n   "), file=sys.stderr)
    return {"name": MODEL, **result}


def _ops(entries: dict[str, dict[str, Any]], name: str) -> float | None:
    entry = entries.get(name)
    if entry is None or "load" not in entry:
        return None
    return float(entry["load"]["ops_per_s"])


def _p99(entries: dict[str, dict[str, Any]], name: str) -> float | None:
    entry = entries.get(name)
    if entry is None or "load" not in entry:
        return None
    return float(entry["load"]["latency"]["p99_ms"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def derive(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ping = _ops(entries, "ping-100")
    d100, d1000 = _ops(entries, "equip-100-durable"), _ops(entries, "equip-1000-durable")
    w100, w1000 = _ops(entries, "equip-100-write-behind"), _ops(entries, "equip-1000-write-behind")
    return {
        "durable_100_over_ping_ceiling": _ratio(d100, ping),
        "durable_1000_over_ping_ceiling": _ratio(d1000, ping),
        "write_behind_over_durable_100": _ratio(w100, d100),
        "write_behind_over_durable_1000": _ratio(w1000, d1000),
    }


def targets(
    entries: dict[str, dict[str, Any]], derived: dict[str, Any], quick: bool
) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured, or a
    quick run, whose short windows and fewer clients are not what the targets describe)."""
    tick = entries.get(TICK, {})
    tick_p99 = tick.get("loaded", {}).get("p99_ms") if "error" not in tick else None
    rows: list[tuple[str, float | None, float, bool]] = [
        # (target, measured, threshold, higher is better)
        ("durable equip >= 12,000 ops/s, 100 clients", _ops(entries, "equip-100-durable"),
         12_000, True),
        ("durable equip >= 12,000 ops/s, 1,000 clients", _ops(entries, "equip-1000-durable"),
         12_000, True),
        ("durable equip >= 70% of ping ceiling, 100 clients",
         derived["durable_100_over_ping_ceiling"], 0.70, True),
        ("durable equip >= 70% of ping ceiling, 1,000 clients",
         derived["durable_1000_over_ping_ceiling"], 0.70, True),
        ("durable p99 <= 15 ms, 100 clients closed loop", _p99(entries, "equip-100-durable"),
         15.0, False),
        ("durable p99 <= 5 ms at 4,000 ops/s open loop, 1,000 clients",
         _p99(entries, "equip-4k-open-1000-durable"), 5.0, False),
        ("tick p99 <= 5 ms, 10,000 players", tick_p99, 5.0, False),
    ]  # fmt: skip
    out = []
    model = entries.get(MODEL, {})
    for row in model.get("targets", []):
        value = row["measured"]
        threshold = model_bench.TICK_TARGET_MS if "tick" in row["target"] else (
            model_bench.MEMORY_TARGET_BYTES)  # fmt: skip
        rows.append((row["target"], value, threshold, False))
    for target, value, threshold, higher in rows:
        met = (
            None
            if value is None or quick
            else (value >= threshold if higher else value <= threshold)
        )
        out.append({"target": target, "measured": value, "met": met})
    return out


def render_table(result: dict[str, Any]) -> str:
    lines = [
        "",
        f"{'scenario':28} {'durability':27} {'clients':>7} {'ops/s':>9} {'p50':>7} {'p99':>7} "
        f"{'p99.9':>7} {'errors':>6} {'srv%':>5} {'pg%':>5} {'gen%':>5} {'other%':>6}",
    ]
    for e in result["scenarios"]:
        if "error" in e:
            lines.append(f"{e['name']:28} FAILED: {e['error'][:80]}")
            continue
        load, srv, lat = e["load"], e["server"], e["load"]["latency"]
        errors = sum(load["errors"].values())
        lines.append(
            f"{e['name']:28} {e['durability']:27} {e['clients']:>7} {load['ops_per_s']:>9,.0f} "
            f"{lat['p50_ms']:>7.2f} {lat['p99_ms']:>7.2f} {lat['p999_ms']:>7.2f} {errors:>6} "
            f"{srv.get('server_cpu_pct_of_core') or 0:>5.0f} "
            f"{srv.get('postgres_cpu_pct_of_core') or 0:>5.0f} "
            f"{load['generator_cpu_pct_of_core']:>5.0f} "
            f"{srv.get('other_cpu_pct_of_core') or 0:>6.0f}"
        )
    lines.append("(latencies in ms; CPU in % of one core: server, Postgres, load generator, "
                 "and other = everything else on the machine, i.e. noise)")  # fmt: skip
    tick = result.get("tick")
    if tick and "error" not in tick:
        lines.append("")
        lines.append(tick_bench.render_summary(tick))
    model = result.get("model")
    if model and "error" not in model:
        lines.append("")
        lines.append(model_bench.render_summary({k: v for k, v in model.items() if k != "targets"}))
    lines.append("")
    for name, value in result["derived"].items():
        lines.append(f"{name:34} {value if value is not None else 'n/a'}")
    lines.append("")
    for t in result["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "no verdict"}[t["met"]]
        lines.append(f"{verdict:13} {t['target']}  (measured: {t['measured']})")
    if result["meta"].get("server_gc_threshold"):
        lines.append("EXPERIMENT: server ran with another GC threshold than the shipped "
                     "configuration")  # fmt: skip
    if result["meta"]["quick"]:
        lines.append("quick run: short windows and 250 instead of 1,000 clients; "
                     "not comparable with the targets")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help="3 s windows, 250 clients max")
    parser.add_argument(
        "--only", action="append", choices=ALL_NAMES, metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(ALL_NAMES)}",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each window")
    add_generator_arguments(parser)
    parser.add_argument("--msgpack", action="store_true", help="gearhall.v1.msgpack frames")
    parser.add_argument("--profile", action="store_true", help="also py-spy the server")
    parser.add_argument(
        "--gc-threshold", type=int, metavar="N",
        help="experiment: run the server with gc_gen0_threshold N instead of the default",
    )  # fmt: skip
    parser.add_argument("--no-save", action="store_true", help="do not write results JSON")
    parser.add_argument("--keep-data", action="store_true", help="keep data dirs and logs")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 12.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = set(args.only or ALL_NAMES)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {"meta": _meta(args), "scenarios": []}
    # Short path: Postgres puts its Unix socket in the data directory (108-byte limit).
    data_root = Path(tempfile.mkdtemp(prefix="ghb-", dir="/tmp"))
    started = time.monotonic()
    try:
        for index, scenario in enumerate(SCENARIOS):
            if scenario.name in selected:
                result["scenarios"].append(run_scenario(scenario, args, data_root, index))
        if TICK in selected:
            result["tick"] = run_tick(args)
        if MODEL in selected:
            result["model"] = run_model(args)
        if args.profile:
            RESULTS.mkdir(exist_ok=True)
            print("== profile: py-spy on the server, equip-100-durable", file=sys.stderr)
            prof = profile_server.profile(
                clients=100,
                duration=min(args.duration, 10.0),
                warmup=args.warmup,
                procs=args.procs,
                encoding="msgpack" if args.msgpack else "json",
                raw_path=RESULTS / f"{stamp}-profile.txt",
                data_root=data_root,
            )
            result["profile"] = prof
            print(profile_server.render_summary(prof), file=sys.stderr)
    finally:
        if not args.keep_data:
            shutil.rmtree(data_root, ignore_errors=True)
    entries = {e["name"]: e for e in result["scenarios"]}
    if "tick" in result:
        entries[TICK] = result["tick"]
    if "model" in result:
        entries[MODEL] = result["model"]
    result["derived"] = derive(entries)
    result["targets"] = targets(entries, result["derived"], args.quick)
    result["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    result["meta"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    print(render_table(result), file=sys.stderr)
    if not args.no_save:
        path = save_result(result, stamp)
        print(f"\nsaved {path.relative_to(ROOT)}", file=sys.stderr)
    failed = [e["name"] for e in result["scenarios"] if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

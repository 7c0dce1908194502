"""The game model (issue 3) under load: tick, rule throughput, memory and snapshots.

    python -m benchmarks.model_bench                      # every part (~3 min)
    python -m benchmarks.model_bench --only tick --only memory
    python -m benchmarks.model_bench --quick              # fewer players and ticks: a smoke run

Every player here holds ~60 items, built with the pure rules exactly as the server would
have built it (``benchmarks/model_players.py``: starter kit, equips, grants into backpack,
belt, quest and bank, item uses for the cooldowns), so its state, effects and snapshot are
the real ones.

- ``tick``: ``benchmarks.tick_bench`` (the real ``PlayerHub.on_tick``) with 10,000 such
  players. Each has a healing-potion cooldown whose deadline falls at a random tick of the
  run (so the tick pops and announces ~4 deadlines per tick) and an elixir cooldown and buff
  running beyond the run. Between ticks 600 players each make one change: half try to use
  bread (1 s cooldown: those deadlines come back to the tick 20 ticks later, each announced
  with a ``player.cooldown_ready`` push), the others move an item.
- ``tick-moves``: the same players, every op a move: what the cooldown pushes cost.
- ``ops``: rule and apply throughput in-process, no socket: equip, unequip, move, use,
  split, sort, merge and the stats computation, each timed separately (rule, apply, and the
  journal's MessagePack encode of the effects), over 1,000 players.
- ``memory``: 10,000 players restored from their snapshots the way ``PlayerHub.acquire``
  does, in a fresh process: RSS delta and tracemalloc, per player, as a bare state, as a
  ``LivePlayer`` record, with a cached ``Stats``, and (measured on the first 2,000) with a
  full resume buffer (the 256 effects a ``LivePlayer`` keeps for resuming sessions).
- ``snapshot``: ``encode_state`` / ``decode_state`` (the snapshot format) on 60-item
  players: players/s, MB/s and bytes per player; restore also with ``reconcile``.

Benchmarks are not tests: targets are printed beside the figures, never asserted. The JSON
goes to stdout and ``benchmarks/results/<timestamp>-model.json``, a summary to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.harness import ROOT
from benchmarks.model_players import (
    SPLIT_CELL,
    VEST_CELLS,
    ModelPopulation,
    build_player,
    first_item,
)
from benchmarks.tick_bench import START_TICK, TICK_MS
from protocol.base import Request
from protocol.messages import (
    EquipItem,
    MergeStacks,
    MoveItem,
    SortCompartment,
    SplitStack,
    UnequipItem,
    UseItem,
)
from protocol.mirror import apply_all, decode_state, encode_state
from protocol.model import AnyEffect, ItemCreated, PlayerState
from server.config import load_settings
from sim import rules
from sim.rules import Rule, RuleContext
from sim.state import share_strings
from sim.stats import StatsCache, compute_stats
from sim.templates import DEFAULT_TEMPLATES, load_templates

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("tick", "tick-moves", "ops", "memory", "snapshot")
USE_FRACTION = 0.5  # of the ops between ticks in ``tick``; ``tick-moves`` has none


# --- tick ----------------------------------------------------------------------------------


def part_tick(players: int, ticks: int, ops_per_tick: int, use_fraction: float) -> dict[str, Any]:
    from benchmarks import tick_bench

    total_ticks = ticks + max(100, ticks // 4)  # tick_bench's idle phase, then loaded
    return tick_bench.run(
        players, ticks=ticks, ops_per_tick=ops_per_tick,
        population=ModelPopulation(total_ticks, use_fraction),
    )  # fmt: skip


# --- ops -----------------------------------------------------------------------------------


class _OpTimes:
    __slots__ = ("apply", "encode", "n", "rule")

    def __init__(self) -> None:
        self.n = 0
        self.rule = self.apply = self.encode = 0


def _server_gc() -> None:
    """The collector as the server sets it up after start-up (``server/app.py``)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(load_settings({}, environ={}).gc_gen0_threshold, gen1, gen2)


def part_ops(players: int, rounds: int) -> dict[str, Any]:
    catalog = load_templates(DEFAULT_TEMPLATES)
    states = [build_player(pid, catalog, START_TICK) for pid in range(1, players + 1)]
    _server_gc()
    encode = msgspec.msgpack.Encoder().encode
    clock = time.perf_counter_ns
    times: dict[str, _OpTimes] = {}
    tick = [START_TICK]
    next_id = [10**12]

    def timed(name: str, state: PlayerState, rule: Rule, intent: Request) -> list[AnyEffect]:
        ctx = RuleContext(tick=tick[0], tick_ms=TICK_MS, catalog=catalog, next_item_id=next_id[0])
        t0 = clock()
        effects = rule(state, intent, ctx)
        t1 = clock()
        apply_all(state, effects)
        t2 = clock()
        for effect in effects:
            encode(effect)
        t3 = clock()
        if not effects:
            raise RuntimeError(f"{name} changed nothing: the benchmark is not measuring it")
        entry = times.setdefault(name, _OpTimes())
        entry.n += 1
        entry.rule += t1 - t0
        entry.apply += t2 - t1
        entry.encode += t3 - t2
        next_id[0] += 1
        return effects

    caps = [first_item(s, "cloth_cap", "backpack") for s in states]
    vests = [first_item(s, "leather_vest", "backpack") for s in states]
    # Split and merge the first 20-stack of bread; use the other stacks (45 bread in all).
    breads: list[int] = []
    edible: list[list[int]] = []
    for s in states:
        stacks = [c for c in s.compartments["backpack"]
                  if c is not None and s.items[c].template == "bread"]  # fmt: skip
        breads.append(next(c for c in stacks if s.items[c].qty == 20))
        edible.append([c for c in stacks if c != breads[-1]])
    started = time.perf_counter()
    for _ in range(rounds):
        tick[0] += 21  # bread's 1 s cooldown (20 ticks) is over for everyone
        for s, cap, vest, bread, food in zip(states, caps, vests, breads, edible, strict=True):
            timed("equip", s, rules.equip_item, EquipItem(rid=0, item_id=cap, slot="head"))
            timed("unequip", s, rules.unequip_item, UnequipItem(rid=0, slot="head"))
            for cell in (VEST_CELLS[1], VEST_CELLS[0]):
                move = MoveItem(rid=0, item_id=vest, compartment="backpack", index=cell)
                timed("move", s, rules.move_item, move)
            split = SplitStack(rid=0, item_id=bread, qty=1, compartment="backpack",
                               index=SPLIT_CELL)  # fmt: skip
            new = next(
                e.item.id
                for e in timed("split", s, rules.split_stack, split)
                if isinstance(e, ItemCreated)
            )
            timed("sort", s, rules.sort_compartment, SortCompartment(rid=0, compartment="backpack"))
            timed(
                "merge", s, rules.merge_stacks, MergeStacks(rid=0, item_id=new, into_item_id=bread)
            )
            while food[0] not in s.items:  # that stack was eaten up
                food.pop(0)
            timed("use", s, rules.use_item, UseItem(rid=0, item_id=food[0]))
    elapsed = time.perf_counter() - started
    stats_ns = 0
    stats_n = 0
    now_ms = tick[0] * TICK_MS
    for _ in range(rounds):
        for s in states:
            t0 = clock()
            compute_stats(s, catalog, now_ms)
            stats_ns += clock() - t0
            stats_n += 1
    gc.unfreeze()
    out: dict[str, Any] = {
        "players": players,
        "items_per_player": round(statistics.fmean(len(s.items) for s in states), 1),
        "rounds": rounds,
        "wall_s": round(elapsed, 2),
        "ops": {},
    }
    for name, t in times.items():
        us = 1e-3 / t.n
        out["ops"][name] = {
            "count": t.n,
            "rule_us": round(t.rule * us, 2),
            "apply_us": round(t.apply * us, 2),
            "encode_us": round(t.encode * us, 2),
            "ops_per_s_rule_apply": round(t.n / ((t.rule + t.apply) * 1e-9)),
            "ops_per_s_rule_apply_encode": round(t.n / ((t.rule + t.apply + t.encode) * 1e-9)),
        }
    out["ops"]["stats (compute)"] = {
        "count": stats_n,
        "rule_us": round(stats_ns * 1e-3 / stats_n, 2),
        "apply_us": 0.0,
        "encode_us": 0.0,
        "ops_per_s_rule_apply": round(stats_n / (stats_ns * 1e-9)),
        "ops_per_s_rule_apply_encode": round(stats_n / (stats_ns * 1e-9)),
    }
    return out


# --- memory --------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


RESUME_SAMPLE = 2_000
_encode_effect = msgspec.msgpack.Encoder().encode  # as PlayerHub.commit encodes once


def memory_child(path: str, use_tracemalloc: bool) -> dict[str, Any]:
    """Runs in a fresh process: restore players from snapshot bytes, measure each step."""
    from collections import deque

    from server.hub import LivePlayer

    catalog = load_templates(DEFAULT_TEMPLATES)
    blobs: list[bytes] = msgspec.msgpack.decode(Path(path).read_bytes(), type=list[bytes])
    n = len(blobs)
    resume_buffer = 256

    def measure() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if use_tracemalloc else _rss_bytes()

    if use_tracemalloc:
        tracemalloc.start()
    marks = {"baseline": measure()}
    # 1. the bare states, restored as persistence.players.load_player does it
    states = [share_strings(decode_state(b)) for b in blobs]
    marks["state"] = measure()
    # 2. the hub's record around each (empty resume buffer: nothing happened since load)
    live = {s.player_id: LivePlayer(s, s.version, resume_buffer) for s in states}
    marks["live_player"] = measure()
    # 3. stats computed once (the first player.get_stats)
    cache = StatsCache(catalog)
    now_ms = START_TICK * TICK_MS
    for s in states:
        cache.get(s, now_ms)
    marks["stats_cached"] = measure()
    # 4. a full resume buffer: the last 256 effects are kept for resuming sessions (moves
    #    and equip/unequip, each effect kept as PlayerHub.commit keeps it once durable: its
    #    msgpack bytes)
    tick = START_TICK
    subset = states[:RESUME_SAMPLE]
    for s in subset:
        lp = live[s.player_id]
        vest = first_item(s, "leather_vest", "backpack")
        cap = first_item(s, "cloth_cap", "backpack")
        recent: deque[bytes] = lp.recent
        step = 0
        while len(recent) < resume_buffer:
            ctx = RuleContext(tick=tick, tick_ms=TICK_MS, catalog=catalog)
            if step % 2:
                cells = s.compartments["backpack"]
                target = VEST_CELLS[1] if cells[VEST_CELLS[1]] is None else VEST_CELLS[0]
                effects = rules.move_item(
                    s, MoveItem(rid=0, item_id=vest, compartment="backpack", index=target), ctx
                )
            elif "head" in s.equipment:
                effects = rules.unequip_item(s, UnequipItem(rid=0, slot="head"), ctx)
            else:
                effects = rules.equip_item(s, EquipItem(rid=0, item_id=cap, slot="head"), ctx)
            for effect in effects:
                apply_all(s, [effect])
                recent.append(_encode_effect(effect))
            step += 1
    marks["resume_buffer_full"] = measure()
    template_str_bytes = sum(
        sys.getsizeof(item.template) for s in states for item in s.items.values()
    )
    distinct_templates = len({id(item.template) for s in states for item in s.items.values()})
    out: dict[str, Any] = {
        "method": "tracemalloc" if use_tracemalloc else "rss",
        "players": n,
        "items_per_player": round(statistics.fmean(len(s.items) for s in states), 1),
        "snapshot_bytes_held": sum(len(b) for b in blobs),
        "marks": marks,
        "bytes_per_player": {
            "state": round((marks["state"] - marks["baseline"]) / n),
            "live_player": round((marks["live_player"] - marks["baseline"]) / n),
            "stats_cached": round((marks["stats_cached"] - marks["baseline"]) / n),
            "resume_buffer_full": round(
                (marks["stats_cached"] - marks["baseline"]) / n
                + (marks["resume_buffer_full"] - marks["stats_cached"]) / len(subset)
            ),
        },
        "resume_buffer_sample": len(subset),
        "template_str_bytes_per_player": round(template_str_bytes / n),
        "distinct_template_str_objects": distinct_templates,
    }
    if use_tracemalloc:
        out["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return out


def part_memory(players: int) -> dict[str, Any]:
    catalog = load_templates(DEFAULT_TEMPLATES)
    blobs = [encode_state(build_player(pid, catalog, START_TICK)) for pid in range(1, players + 1)]
    out: dict[str, Any] = {"players": players}
    with tempfile.NamedTemporaryFile(prefix="gh-snapshots-", suffix=".msgpack") as f:
        f.write(msgspec.msgpack.encode(blobs))
        f.flush()
        del blobs
        for method in ("rss", "tracemalloc"):
            cmd = [sys.executable, "-m", "benchmarks.model_bench", "--memory-child", f.name]
            if method == "tracemalloc":
                cmd.append("--tracemalloc")
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                out[method] = {"error": done.stderr[-2000:]}
            else:
                out[method] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# --- snapshot ------------------------------------------------------------------------------


def _rates(fns: dict[str, Callable[[], object]], rounds: int = 5, slice_s: float = 0.4
           ) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each ``fn``, once per round, the functions interleaved within a
    round so that a noisy moment on the shared machine hits all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            repeats = 0
            started = time.perf_counter()
            while (elapsed := time.perf_counter() - started) < slice_s or not repeats:
                fn()
                repeats += 1
            out[name].append(elapsed / repeats)
    return out


def part_snapshot(players: int) -> dict[str, Any]:
    catalog = load_templates(DEFAULT_TEMPLATES)
    states = [build_player(pid, catalog, START_TICK) for pid in range(1, players + 1)]
    blobs = [encode_state(s) for s in states]
    sizes = [len(b) for b in blobs]
    total = sum(sizes)
    welcome_json = [len(msgspec.json.encode(s)) for s in states]
    ctx = RuleContext(tick=START_TICK, tick_ms=TICK_MS, catalog=catalog)
    _server_gc()

    def restore_reconcile() -> None:
        for b in blobs:
            if rules.reconcile(decode_state(b), ctx):
                raise RuntimeError("a freshly built player needed reconciling")

    seconds = _rates({
        "encode": lambda: [encode_state(s) for s in states],
        "decode": lambda: [decode_state(b) for b in blobs],
        "decode_and_reconcile": restore_reconcile,
    })  # fmt: skip
    gc.unfreeze()
    mb = total / 1e6
    out: dict[str, Any] = {
        "players": players,
        "items_per_player": round(statistics.fmean(len(s.items) for s in states), 1),
        "snapshot_bytes_per_player": {
            "mean": round(total / players),
            "min": min(sizes),
            "max": max(sizes),
        },
        "welcome_state_json_bytes_per_player": round(statistics.fmean(welcome_json)),
    }
    for name, per_call in seconds.items():
        # median round, and the spread over rounds
        out[name] = {
            "players_per_s": round(players / statistics.median(per_call)),
            "mb_per_s": round(mb / statistics.median(per_call), 1),
            "players_per_s_rounds": sorted(round(players / t) for t in per_call),
        }
    return out


# --- driver --------------------------------------------------------------------------------

TICK_TARGET_MS = 5.0
MEMORY_TARGET_BYTES = 20 * 1024  # 20 KB read as KiB: the lenient reading


def targets(result: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Targets of issue 3 with the measured value; ``met`` is None when not measured or on
    a quick run (fewer players than the target describes)."""
    rows: list[tuple[str, float | None, float]] = []
    for part, label in (
        ("tick", "600 ops/tick, up to half bread uses"),
        ("tick-moves", "600 moves/tick"),
    ):
        loaded = result.get(part, {}).get("loaded", {})
        rows.append((f"tick p99 <= 5 ms, 10,000 players x ~60 items, {label}",
                     loaded.get("p99_ms"), TICK_TARGET_MS))  # fmt: skip
    memory = result.get("memory", {})
    for method in ("rss", "tracemalloc"):
        per = memory.get(method, {}).get("bytes_per_player", {})
        rows.append((f"memory <= 20 KB per loaded 60-item player ({method}, LivePlayer)",
                     per.get("live_player"), MEMORY_TARGET_BYTES))  # fmt: skip
    return [
        {
            "target": name,
            "measured": value,
            "met": None if value is None or quick else value <= threshold,
        }
        for name, value, threshold in rows
    ]


def render_summary(result: dict[str, Any]) -> str:
    from benchmarks import tick_bench

    lines = []
    for name in ("tick", "tick-moves"):
        tick = result.get(name)
        if tick and "error" not in tick:
            lines.append(tick_bench.render_summary(tick))
    ops = result.get("ops")
    if ops and "error" not in ops:
        lines.append(
            f"rules in-process, {ops['players']:,} players x {ops['items_per_player']} items "
            "(us per op; ops/s = 1 / (rule + apply))"
        )
        for name, r in ops["ops"].items():
            lines.append(
                f"  {name:16} rule {r['rule_us']:7.2f}  apply {r['apply_us']:6.2f}  "
                f"encode {r['encode_us']:6.2f}  -> {r['ops_per_s_rule_apply']:>9,} ops/s"
            )
    memory = result.get("memory")
    if memory:
        lines.append(f"memory per loaded player ({memory['players']:,} players, bytes)")
        for method in ("rss", "tracemalloc"):
            m = memory.get(method, {})
            if "error" in m:
                lines.append(f"  {method}: FAILED")
                continue
            per = m["bytes_per_player"]
            lines.append(
                f"  {method:11} state {per['state']:>7,}  LivePlayer {per['live_player']:>7,}  "
                f"+stats {per['stats_cached']:>7,}  +256-effect resume buffer "
                f"{per['resume_buffer_full']:>8,}"
            )
    snap = result.get("snapshot")
    if snap and "error" not in snap:
        size = snap["snapshot_bytes_per_player"]
        lines.append(
            f"snapshots ({snap['players']:,} players x {snap['items_per_player']} items): "
            f"{size['mean']:,} bytes each (min {size['min']:,}, max {size['max']:,}); "
            f"welcome JSON {snap['welcome_state_json_bytes_per_player']:,} bytes"
        )
        for name in ("encode", "decode", "decode_and_reconcile"):
            r = snap[name]
            lines.append(
                f"  {name:21} {r['players_per_s']:>9,} players/s  {r['mb_per_s']:7.1f} MB/s"
            )
    for t in result.get("targets", []):
        verdict = {True: "MET", False: "NOT MET", None: "no verdict"}[t["met"]]
        lines.append(f"{verdict:11} {t['target']}  (measured: {t['measured']})")
    return "\n".join(lines)


def _run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    """Each part in its own process: one part's garbage and GC settings never leak into
    another's figures."""
    cmd = [sys.executable, "-m", "benchmarks.model_bench", "--part", part,
           "--players", str(args.players), "--ticks", str(args.ticks),
           "--ops-per-tick", str(args.ops_per_tick), "--ops-players", str(args.ops_players),
           "--rounds", str(args.rounds)]  # fmt: skip
    print(f"== model/{part}", file=sys.stderr)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-3000:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def run_parts(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick,
            "cpu_count": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        }
    }
    for part in args.only or PARTS:
        result[part] = _run_part(part, args)
    result["meta"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = targets(result, args.quick)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument("--only", action="append", choices=PARTS, help="repeatable")
    parser.add_argument("--quick", action="store_true", help="1,000 players, 300 ticks")
    parser.add_argument("--players", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=2_000)
    parser.add_argument("--ops-per-tick", type=int, default=600)
    parser.add_argument("--ops-players", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=20, help="ops part, at most 45")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.players, args.ticks, args.ops_per_tick = 1_000, 300, 60
        args.ops_players, args.rounds = 200, 5
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.tracemalloc)))
        return 0
    if args.part:
        part: Callable[[], dict[str, Any]] = {
            "tick": lambda: part_tick(args.players, args.ticks, args.ops_per_tick, USE_FRACTION),
            "tick-moves": lambda: part_tick(args.players, args.ticks, args.ops_per_tick, 0.0),
            "ops": lambda: part_ops(args.ops_players, args.rounds),
            "memory": lambda: part_memory(args.players),
            "snapshot": lambda: part_snapshot(args.ops_players),
        }[args.part]
        print(json.dumps(part()))
        return 0
    result = run_parts(args)
    print(json.dumps(result))
    if not args.json_only:
        print(render_summary(result), file=sys.stderr)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-model.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {path.relative_to(ROOT)}", file=sys.stderr)
    failed = [p for p in PARTS if isinstance(result.get(p), dict) and "error" in result[p]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

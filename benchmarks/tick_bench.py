"""Tick duration with many loaded players: ``PlayerHub.on_tick`` timed in-process.

    python -m benchmarks.tick_bench [--players 10000] [--ticks 2000] [--ops-per-tick 600]

What is real: the hub (``server/hub.py``), its ``LivePlayer`` records, the rules that make the
effects (``sim.rules``), ``hub.commit``, and real ``Session`` objects whose pushes are encoded
and queued exactly as on a live socket (their writer tasks drain into a transport that
discards the bytes). Who is online is a *population*: by default every player is built the
way the server builds a new one (``new_player`` + ``grant_starter_kit``), holds one cooldown
ready far in the future, and the op moves the leather vest; ``benchmarks/model_bench.py``
passes players with ~60 items, cooldowns that expire during the run and item uses. Running
cooldowns are put on the hub's cooldown heap as ``PlayerHub.acquire`` does for a loaded
player.

What is stubbed, and why it does not touch the timed code: the journal acknowledges at once
(``on_tick`` never awaits it), and the snapshot writer is emulated between ticks (``on_tick``
only queues snapshot bytes; the database write happens in a background task). Ticks run
back to back on a simulated clock that advances one tick period per tick, so the 30 s
snapshot interval and eviction logic see the same per-tick load as at 20 Hz in real time.

Between two timed ticks, ``--ops-per-tick`` random players each make one state change
through ``hub.run_intent`` (600 per tick at 20 Hz is 12,000 ops/s), and a fraction of players
have a second session, so the tick also flushes deltas to it. Two runs: ``idle`` (no changes:
the fixed cost of walking every player) and ``loaded``.

Cooldowns: deadlines are stored, never counted down (DESIGN.md §3). ``on_tick`` pops the
deadlines that have passed off a heap and pushes ``player.cooldown_ready`` for each, so a
cooldown costs the tick once, when it ends; one running far beyond the run costs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any, Protocol

from persistence.journal import Journal
from protocol import SUBPROTOCOL_JSON
from protocol.base import Request
from protocol.codec import CODECS
from protocol.errors import GearhallError
from protocol.messages import MoveItem
from protocol.model import CooldownStarted, PlayerState
from server import hub as hub_module
from server.config import load_settings
from server.hub import LivePlayer, PlayerHub
from server.metrics import Metrics
from server.session import Session
from sim import rules
from sim.apply import apply_all
from sim.rules import Rule, RuleContext, grant_starter_kit
from sim.state import new_player
from sim.templates import DEFAULT_TEMPLATES, Catalog, load_templates

TICK_HZ = 20
TICK_MS = 1000 // TICK_HZ
START_TICK = 35_000_000_000  # ~ now in 50 ms ticks since 1970: deadlines look real


class _SimClock:
    """Stands in for the ``time`` module inside ``server.hub``: monotonic() is simulated."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        return self.now


class _InstantJournal(Journal):
    """The real journal's interface, acknowledging every append at once (no database)."""

    def __init__(self) -> None:
        super().__init__(_no_connection, mode="write-behind")

    def append(
        self,
        player_id: int,
        first_version: int,
        tick: int,
        effects: list[bytes],
        on_durable: Callable[[], None],
    ) -> None:
        on_durable()


def _no_connection() -> Any:
    raise RuntimeError("the tick bench has no database")


class _NullTransport:
    remote = "bench"

    async def send(self, frame: bytes, text: bool) -> None:
        return None

    async def close(self, code: int, reason: str) -> None:
        return None

    def abort(self) -> None:
        raise RuntimeError("the tick bench must never abort a session")


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[index]


class Population(Protocol):
    """Who is online, and what they do between ticks. ``build`` makes a player's state
    with the pure rules (as the server would have); ``op`` picks one state change for a
    player at ``now_ms`` and returns the intent and its rule."""

    name: str

    def build(self, player_id: int, catalog: Catalog, tick: int) -> PlayerState: ...

    def op(self, state: PlayerState, now_ms: int) -> tuple[Request, Rule]: ...


class KitPopulation:
    """New players: the starter kit, and one cooldown running beyond the run. The op moves
    the leather vest between backpack cells 2 and 10."""

    name = "starter kit"

    def __init__(self) -> None:
        self._vests: dict[int, int] = {}

    def build(self, player_id: int, catalog: Catalog, tick: int) -> PlayerState:
        state = new_player(player_id, f"p{player_id}")
        ctx = RuleContext(tick=tick, tick_ms=TICK_MS, catalog=catalog)
        ids = range(player_id * 100, player_id * 100 + len(catalog.starter_kit))
        apply_all(state, grant_starter_kit(state, ctx, ids))
        far = (tick + 10**6) * TICK_MS
        apply_all(state, [CooldownStarted(key="equip:main_hand", ready_at_ms=far)])
        self._vests[player_id] = next(
            i for i, item in state.items.items() if item.template == "leather_vest"
        )
        return state

    def op(self, state: PlayerState, now_ms: int) -> tuple[Request, Rule]:
        target = 10 if state.compartments["backpack"][10] is None else 2
        vest = self._vests[state.player_id]
        return MoveItem(rid=0, item_id=vest, compartment="backpack", index=target), rules.move_item


async def _run(
    players: int,
    *,
    ticks: int,
    ops_per_tick: int,
    second_session: float,
    seed: int,
    population: Population,
) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = _SimClock()
    # server.hub reads time.monotonic() for snapshot and eviction ages: give it our clock.
    namespace = vars(hub_module)
    saved_time = namespace["time"]
    namespace["time"] = clock
    saved_threshold = gc.get_threshold()
    in_tick = [False]
    tick_collections = [0, 0, 0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and in_tick[0]:
            tick_collections[info["generation"]] += 1

    gc.callbacks.append(on_gc)
    try:
        settings = load_settings({"dev_auth": True, "tick_hz": TICK_HZ}, environ={})
        # The collector as the server configures it after start-up (server/app.py).
        gc.collect()
        gc.freeze()
        gc.set_threshold(settings.gc_gen0_threshold, *saved_threshold[1:])
        catalog = load_templates(DEFAULT_TEMPLATES)
        metrics = Metrics()
        tick = [START_TICK]
        hub = PlayerHub(
            settings=settings,
            catalog=catalog,
            journal=_InstantJournal(),
            pool=None,
            metrics=metrics,
            tick=lambda: tick[0],
            tick_ms=TICK_MS,
        )
        app = types.SimpleNamespace(settings=settings, metrics=metrics)
        codec = CODECS[SUBPROTOCOL_JSON]
        origins: dict[int, Session] = {}
        interval = settings.snapshot_interval_s
        due: list[tuple[float, LivePlayer]] = []
        now_ms = tick[0] * TICK_MS
        build_started = time.perf_counter()
        for pid in range(1, players + 1):
            state = population.build(pid, catalog, tick[0])
            # As in a server that has run a while: every player has a change since its last
            # snapshot, and the snapshot deadlines are spread over one interval.
            live = LivePlayer(state, snapshot_version=state.version - 1, resume_buffer=256)
            due.append((clock.now + rng.random() * interval, live))
            live.snapshot_scheduled = True
            hub.players[pid] = live
            # What PlayerHub.acquire does for a loaded player's running cooldowns.
            for key, ready_at in state.cooldowns.items():
                if ready_at > now_ms:
                    hub._watch_cooldown(pid, key, ready_at)
            sessions = 2 if rng.random() < second_session else 1
            for _ in range(sessions):
                session = Session(app, _NullTransport(), codec)  # type: ignore[arg-type]
                session.start()
                session.player = live
                hub.attach(live, session)
            origins[pid] = live.sessions[0]
        hub._snapshot_due.extend(sorted(due, key=lambda entry: entry[0]))
        build_s = time.perf_counter() - build_started
        items = [len(live.state.items) for live in hub.players.values()]
        cooldowns = [
            sum(1 for r in live.state.cooldowns.values() if r > now_ms)
            for live in hub.players.values()
        ]

        async def run_phase(n_ticks: int, n_ops: int) -> dict[str, Any]:
            durations: list[float] = []
            cpu: list[float] = []
            pushes = snapshots = cooldowns_due = 0
            errors: dict[str, int] = {}
            ids = list(hub.players)
            gc_before = sum(s["collections"] for s in gc.get_stats())
            tick_collections[:] = [0, 0, 0]
            for _ in range(n_ticks):
                for pid in rng.sample(ids, n_ops) if n_ops else ():
                    live = hub.players[pid]
                    intent, rule = population.op(live.state, tick[0] * TICK_MS)
                    try:
                        await hub.run_intent(live, intent, rule, origins[pid])
                    except GearhallError as exc:
                        errors[exc.code] = errors.get(exc.code, 0) + 1
                        continue
                    pushes += len(live.sessions) - 1
                await asyncio.sleep(0)  # writers send what the last tick queued
                clock.now += TICK_MS / 1000.0
                tick[0] += 1
                wheel_before = _watched(hub)
                in_tick[0] = True
                started, cpu_started = time.perf_counter(), time.thread_time()
                hub.on_tick(tick[0])
                durations.append(time.perf_counter() - started)
                cpu.append(time.thread_time() - cpu_started)
                in_tick[0] = False
                # Entries the tick took off the cooldown wheel (announced, or superseded).
                cooldowns_due += wheel_before - _watched(hub)
                snapshots += _complete_snapshots(hub, clock.now)
            durations.sort()
            ms = [d * 1000.0 for d in durations]
            cpu_ms = sorted(c * 1000.0 for c in cpu)
            return {
                "ticks": n_ticks,
                "ops_per_tick": n_ops,
                "op_errors": errors,
                "pushes_per_tick": round(pushes / n_ticks, 1),
                "cooldowns_due_per_tick": round(cooldowns_due / n_ticks, 1),
                "snapshots_per_tick": round(snapshots / n_ticks, 1),
                "gc_collections": sum(s["collections"] for s in gc.get_stats()) - gc_before,
                "gc_collections_in_ticks_by_generation": list(tick_collections),
                "p50_ms": round(_percentile(ms, 0.50), 3),
                "p99_ms": round(_percentile(ms, 0.99), 3),
                "p999_ms": round(_percentile(ms, 0.999), 3),
                "max_ms": round(ms[-1], 3),
                "mean_ms": round(statistics.fmean(ms), 3),
                # CPU time of this thread in the tick: wall time minus time the OS gave the
                # core to someone else (the machine is shared), so the gap is noise.
                "cpu_p50_ms": round(_percentile(cpu_ms, 0.50), 3),
                "cpu_p99_ms": round(_percentile(cpu_ms, 0.99), 3),
                "cpu_max_ms": round(cpu_ms[-1], 3),
            }

        idle = await run_phase(max(100, ticks // 4), 0)
        loaded = await run_phase(ticks, ops_per_tick)
        app.hub = hub  # Session.finish detaches from the hub
        for live in list(hub.players.values()):
            for session in list(live.sessions):
                await session.finish()
        return {
            "players": players,
            "population": population.name,
            "items_per_player": round(statistics.fmean(items), 1),
            "running_cooldowns_per_player_at_start": round(statistics.fmean(cooldowns), 2),
            "second_session_fraction": second_session,
            "tick_hz": TICK_HZ,
            "snapshot_interval_s": interval,
            "build_s": round(build_s, 2),
            "idle": idle,
            "loaded": loaded,
        }
    finally:
        namespace["time"] = saved_time
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*saved_threshold)
        gc.unfreeze()


def _watched(hub: PlayerHub) -> int:
    """Cooldowns the hub's timing wheel is watching."""
    return sum(len(bucket) for bucket in hub._cooldowns.values())


def _complete_snapshots(hub: PlayerHub, now: float) -> int:
    """What the snapshot task does after its database write succeeds (untimed)."""
    batch, hub._snapshot_queue = hub._snapshot_queue, []
    for live, version, _ in batch:
        live.snapshot_version = max(live.snapshot_version, version)
        live.snapshot_in_flight = False
        if live.durable_version > live.snapshot_version and not live.snapshot_scheduled:
            hub._schedule_snapshot(live, now + hub.settings.snapshot_interval_s)
    hub._snapshots_idle.set()
    return len(batch)


def run(
    players: int = 10_000,
    *,
    ticks: int = 2_000,
    ops_per_tick: int = 600,
    second_session: float = 0.1,
    seed: int = 1,
    population: Population | None = None,
) -> dict[str, Any]:
    """Run the tick benchmark in this process and return its figures."""
    import uvloop

    return uvloop.run(
        _run(
            players,
            ticks=ticks,
            ops_per_tick=ops_per_tick,
            second_session=second_session,
            seed=seed,
            population=population or KitPopulation(),
        )
    )


def render_summary(result: dict[str, Any]) -> str:
    lines = [
        f"tick duration, {result['players']:,} players ({result.get('population', '')}, "
        f"{result.get('items_per_player', '?')} items each) at {result['tick_hz']} Hz "
        "(in-process)"
    ]
    for phase in ("idle", "loaded"):
        r = result[phase]
        lines.append(
            f"  {phase:6} ({r['ops_per_tick']} ops, {r['pushes_per_tick']} pushes, "
            f"{r.get('cooldowns_due_per_tick', 0)} cooldowns due, "
            f"{r['snapshots_per_tick']} snapshots per tick): p50 {r['p50_ms']:.2f} ms  "
            f"p99 {r['p99_ms']:.2f} ms  p99.9 {r['p999_ms']:.2f} ms  max {r['max_ms']:.2f} ms"
        )
        if "cpu_p99_ms" in r:
            lines.append(
                f"         on-CPU time in the tick: p50 {r['cpu_p50_ms']:.2f} ms  "
                f"p99 {r['cpu_p99_ms']:.2f} ms  max {r['cpu_max_ms']:.2f} ms"
            )
        if r.get("op_errors"):
            lines.append(f"         op errors (between ticks, untimed): {r['op_errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument("--players", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=2_000)
    parser.add_argument("--ops-per-tick", type=int, default=600)
    parser.add_argument("--second-session", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    result = run(
        args.players,
        ticks=args.ticks,
        ops_per_tick=args.ops_per_tick,
        second_session=args.second_session,
        seed=args.seed,
    )
    print(json.dumps(result))
    if not args.json_only:
        print(render_summary(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

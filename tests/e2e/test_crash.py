"""Crash (kill -9) of a real ``gearhall serve``: nothing acknowledged is lost and no request is
recovered in part (DESIGN.md §4).

Players run closed loops (one request in flight each, many players in parallel) of equips,
swaps, unequips, moves, splits, merges, sorts and uses (potions, bread, the training manual),
and remember every acknowledged effect, replayed with the client mirror (``protocol.mirror``).
The server is SIGKILLed at a random moment (seeded; the seed is printed — set
``GEARHALL_TEST_SEED`` to replay it), and with no server running the test reads Postgres: the
journal must be contiguous, hold every acknowledged effect as acknowledged, and above the last
acknowledged version hold either nothing or all the effects of the one request that was in
flight. The restarted server must then welcome each player with exactly that state (byte for
byte). Three kills cover the loop twice and once the middle of hellos (including new players
whose starter kit is being committed).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import random
import signal

import pytest

from protocol.base import tag_of
from tests.e2e.conftest import (
    WORKLOAD_INTENTS,
    Phase,
    Player,
    Spawn,
    make_players,
    read_facts,
    run_all,
    wait_backends_gone,
)
from tests.support.proc import ServerProcess

# Checkpoints every 0.1 s with only 4 journal rows kept below them: recovery then goes
# through snapshot + journal, and pruning races the kill.
CHECKPOINT_ENV = {"GEARHALL_SNAPSHOT_INTERVAL_S": "0.1", "GEARHALL_JOURNAL_KEEP_VERSIONS": "4"}
SHUTDOWN_TIMEOUT_S = 10.0


def _kill(server: ServerProcess, phase: Phase) -> None:
    phase.killed = True
    server.send_signal(signal.SIGKILL)


def _kill_at(server: ServerProcess, phase: Phase, at: int, welcomed: int) -> None:
    """Kill right as the ``at``-th welcome arrives: other hellos are still in progress."""
    if welcomed == at:
        _kill(server, phase)


def _seed() -> int:
    chosen = os.environ.get("GEARHALL_TEST_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


async def _crash_round(
    server: ServerProcess, players: list[Player], moment: str, rng: random.Random, label: str
) -> None:
    """Run the players' loops against ``server`` and SIGKILL it: after a random delay once
    everyone is welcomed (``loop``), or as a random welcome arrives (``hellos``)."""
    phase = Phase()
    if moment == "hellos":
        kill_at = rng.randint(1, len(players) - 1)
        print(f"{label}: kill at welcome {kill_at} of {len(players)}")
        phase.on_welcome = functools.partial(_kill_at, server, phase, kill_at)
    tasks = [asyncio.create_task(p.run(server.url, phase)) for p in players]
    try:
        if moment == "loop":
            await phase.wait_until(lambda: phase.welcomed == len(players), "every welcome")
            delay = rng.uniform(0.3, 1.5)
            print(f"{label}: kill after {delay:.3f}s of requests")
            # The one intentional wait: a random moment in the middle of the loops.
            await asyncio.sleep(delay)
            _kill(server, phase)
        await run_all(tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _reconcile(
    dsn: str, everyone: list[Player], *, checkpoints: bool, graceful: bool = False
) -> None:
    await wait_backends_gone(dsn)
    facts = await read_facts(dsn, [p.name for p in everyone])
    for player in everyone:
        found = facts[player.name]
        if not checkpoints and not graceful:
            # No snapshot was due: the journal alone is the whole history, 1..V.
            assert found.snapshot is None, f"{player.name}: unexpected snapshot"
            assert not found.rows or found.rows[0].version == 1, (
                f"{player.name}: journal starts at v{found.rows[0].version}"
            )
        player.reconcile(found, graceful=graceful)
        if graceful:  # a graceful stop snapshots everyone
            assert found.snapshot_version == player.version, (
                f"{player.name}: snapshot v{found.snapshot_version}, final v{player.version}"
            )
    print(
        f"  in flight at the kill: {sum(p.inflight_durable for p in everyone)} durable, "
        f"{sum(p.inflight_lost for p in everyone)} not (cumulative)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints", [False, True], ids=["journal-only", "snapshots"])
async def test_kill_9_loses_nothing_acknowledged(spawn: Spawn, dsn: str, checkpoints: bool) -> None:
    seed = _seed()
    print(f"crash test seed {seed} (replay: GEARHALL_TEST_SEED={seed})")
    rng = random.Random(seed)
    env = CHECKPOINT_ENV if checkpoints else {}
    veterans = make_players([f"crash{i}" for i in range(8)], seed)
    rookies = make_players([f"rookie{i}" for i in range(4)], seed)
    everyone = veterans + rookies
    rounds = [("loop", veterans), ("loop", veterans), ("hellos", everyone)]

    for number, (moment, players) in enumerate(rounds, start=1):
        server = await spawn(**env)
        acks_before = sum(p.acks for p in everyone)
        try:
            await _crash_round(server, players, moment, rng, f"round {number}")
        finally:
            await server.kill()
        if moment == "loop":
            acked = sum(p.acks for p in everyone) - acks_before
            print(f"round {number}: {acked} requests acknowledged before the kill")
            assert acked > 0, "the server acknowledged nothing: the test checked nothing"
        await _reconcile(dsn, everyone, checkpoints=checkpoints)

    # The workload did what it claims: every kind of request changed state at least once.
    changed_by = sum((p.changed_by for p in everyone), collections.Counter[str]())
    print(f"state-changing requests by tag: {dict(changed_by)}")
    assert set(changed_by) == {tag_of(t) for t in WORKLOAD_INTENTS}, changed_by

    # Restart once more: every welcome must show the model (reconciled above), then a
    # graceful stop must leave exactly that, snapshotted.
    server = await spawn(**env)
    phase = Phase()
    await run_all([p.run(server.url, phase, max_acks=0) for p in everyone])
    assert phase.welcomed == len(everyone)
    assert await server.terminate(SHUTDOWN_TIMEOUT_S) == 0, server.log_tail()
    await _reconcile(dsn, everyone, checkpoints=checkpoints, graceful=True)

"""Graceful shutdown (DESIGN.md §4): stop accepting, finish in-flight requests, flush the
journal, snapshot everyone, close every socket with 1001 — and then nothing is in doubt: the
durable state of every player is exactly the last state a reply acknowledged.

Once for ``gearhall serve`` receiving SIGTERM (exit code 0), once in process with
``App.stop()``. Players keep sending while the server drains; each request then gets its reply,
an ``unavailable`` error (the client stops sending and waits for the close), or the close.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable

import asyncpg
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from server.app import App
from server.config import Settings
from tests.e2e.conftest import (
    WAIT_S,
    Phase,
    Player,
    Spawn,
    make_players,
    read_facts,
    run_all,
    wait_backends_gone,
)
from tests.support.client import JSON, Client
from tests.support.transports import TRANSPORTS

SHUTDOWN_TIMEOUT_S = 10.0
ACKS_BEFORE_STOP = 5  # every player is mid-loop when the stop comes


async def _refused(url: str) -> bool:
    """Whether a new WebSocket connection is refused (closed port, or HTTP 503)."""
    try:
        client = await Client.open(url, JSON, open_timeout=SHUTDOWN_TIMEOUT_S)
    except (OSError, InvalidHandshake, ConnectionClosed):
        return True
    await client.close()
    return False


def _probe_when_draining(phase: Phase, url: str) -> list[asyncio.Task[bool]]:
    """Once a client has seen the drain (an `unavailable` reply or the close), the listening
    socket is already closed: a new connection made then must be refused."""
    probes: list[asyncio.Task[bool]] = []

    def on_draining() -> None:
        if not probes:
            probes.append(asyncio.get_running_loop().create_task(_refused(url)))

    phase.on_draining = on_draining
    return probes


async def _check_graceful(dsn: str, players: list[Player]) -> None:
    """Postgres holds exactly the acknowledged states, each with a snapshot at that version."""
    for player in players:
        assert player.close_code == 1001, f"{player.name}: closed with {player.close_code}"
        assert player.after_stop, f"{player.name}: sent nothing while the server stopped"
    await wait_backends_gone(dsn)
    facts = await read_facts(dsn, [p.name for p in players])
    for player in players:
        found = facts[player.name]
        player.reconcile(found, graceful=True)
        assert found.snapshot_version == player.version, (
            f"{player.name}: snapshot at v{found.snapshot_version}, acknowledged v{player.version}"
        )
    outcomes = [o for p in players for o in p.after_stop]
    print(
        f"after the stop: {len(outcomes)} requests: "
        + ", ".join(f"{o} {outcomes.count(o)}" for o in ("effects", "unavailable", "closed"))
    )


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "snapshot_interval_s", [30.0, 0.05], ids=["rare-checkpoints", "busy-checkpoints"]
)
async def test_sigterm_drains_and_everything_acknowledged_is_durable(
    spawn: Spawn, dsn: str, snapshot_interval_s: float, transport: str
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    print(f"shutdown test seed {seed}")
    players = make_players([f"term{i}" for i in range(8)], seed)
    server = await spawn(
        GEARHALL_TRANSPORT=transport,
        GEARHALL_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
        # busy: background snapshots are usually in flight when the stop comes
        GEARHALL_SNAPSHOT_INTERVAL_S=str(snapshot_interval_s),
    )
    phase = Phase()
    probes = _probe_when_draining(phase, server.url)
    tasks = [asyncio.create_task(p.run(server.url, phase)) for p in players]
    try:
        await phase.wait_until(
            lambda: all(p.acks >= ACKS_BEFORE_STOP for p in players), "every player mid-loop"
        )
        phase.stopping = True
        server.send_signal(signal.SIGTERM)
        await run_all(tasks)
        code = await server.wait(SHUTDOWN_TIMEOUT_S)
        assert code == 0, f"exit code {code} (None: still running)\n{server.log_tail()}"
    finally:
        for task in tasks:
            task.cancel()
        await server.kill()
    assert probes, "no client saw the server drain"
    assert await probes[0], "a new connection was accepted while the server drained"
    await _check_graceful(dsn, players)

    server = await spawn(GEARHALL_TRANSPORT=transport)
    phase = Phase()
    await run_all([p.run(server.url, phase, max_acks=0) for p in players])  # welcome == model
    assert phase.welcomed == len(players)
    assert await server.terminate(SHUTDOWN_TIMEOUT_S) == 0, server.log_tail()


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)  # overrides the conftest fixture
async def test_app_stop_in_process_drains_and_everything_acknowledged_is_durable(
    make_settings: Callable[..., Settings], dsn: str
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    print(f"in-process shutdown test seed {seed}")
    players = make_players([f"stop{i}" for i in range(8)], seed)
    # As the `app` fixture, without rate limiting: closed loops can outrun the default.
    settings = make_settings(rate_limit_per_s=1e6, rate_limit_burst=1_000_000)
    app = App(settings)
    await app.start()
    url = f"ws://127.0.0.1:{app.port}/"
    phase = Phase()
    probes = _probe_when_draining(phase, url)
    tasks = [asyncio.create_task(p.run(url, phase)) for p in players]
    try:
        await phase.wait_until(
            lambda: all(p.acks >= ACKS_BEFORE_STOP for p in players), "every player mid-loop"
        )
        phase.stopping = True
        async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
            await app.stop()
        await run_all(tasks)
    finally:
        for task in tasks:
            task.cancel()
        await app.stop()  # a no-op once stopped; stops it if the test failed first
    assert probes, "no client saw the server drain"
    assert await probes[0], "a new connection was accepted while the server drained"
    await _check_graceful(dsn, players)

    app = App(settings)
    await app.start()
    try:
        phase = Phase()
        url = f"ws://127.0.0.1:{app.port}/"
        await run_all([p.run(url, phase, max_acks=0) for p in players])
        assert phase.welcomed == len(players)
    finally:
        await app.stop()


async def _poll(dsn: str, query: str, *args: object, what: str) -> None:
    """Wait until ``query`` returns true (Postgres offers no event for these)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + WAIT_S
        while not await conn.fetchval(query, *args):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def _step_to_new_version(player: Player, client: Client, phase: Phase) -> None:
    version = player.version
    while player.version == version:  # a move onto its own cell or a cooldown changes nothing
        assert await player.step(client, phase)


@pytest.mark.slow
async def test_sigterm_snapshots_a_player_whose_checkpoint_is_still_being_written(
    spawn: Spawn, dsn: str
) -> None:
    """A background snapshot of an older version is in flight when SIGTERM comes (held
    up here by a row lock): the shutdown must still leave a snapshot at the final version."""
    player = make_players(["checkpointed"], random.SystemRandom().randrange(2**32))[0]
    server = await spawn(GEARHALL_SNAPSHOT_INTERVAL_S="0.05")
    phase = Phase()
    locker = await asyncpg.connect(dsn)
    client = None
    try:
        client = await player.connect(server.url, phase)
        assert client is not None
        await _step_to_new_version(player, client, phase)
        await _poll(
            dsn,
            "SELECT EXISTS (SELECT 1 FROM snapshots WHERE player_id = $1 AND version = $2)",
            player.player_id,
            player.version,
            what="the first background snapshot",
        )
        async with locker.transaction():
            await locker.execute(
                "SELECT 1 FROM snapshots WHERE player_id = $1 FOR UPDATE", player.player_id
            )
            await _step_to_new_version(player, client, phase)  # its snapshot blocks on the lock
            await _poll(
                dsn,
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = "
                "current_database() AND wait_event_type = 'Lock')",
                what="the server's snapshot to wait on the row lock",
            )
            await _step_to_new_version(player, client, phase)  # acknowledged, in no snapshot
            phase.stopping = True
            server.send_signal(signal.SIGTERM)
            # Refused means the drain began; with nothing in flight, stop() has by then
            # queued its snapshots (it does not yield before snapshot_all).
            deadline = time.monotonic() + WAIT_S
            while not await _refused(server.url):  # each try is a whole connect: no spin
                assert time.monotonic() < deadline, "the server never began to drain"
        # The lock is released: the old snapshot completes, the shutdown goes on.
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert await server.wait(SHUTDOWN_TIMEOUT_S) == 0, server.log_tail()
    finally:
        await locker.close()
        if client is not None:
            await client.close()
        await server.kill()
    await wait_backends_gone(dsn)
    found = (await read_facts(dsn, [player.name]))[player.name]
    player.reconcile(found, graceful=True)  # the journal has it all
    assert found.snapshot_version == player.version, (
        f"graceful shutdown left the snapshot at v{found.snapshot_version}; "
        f"v{player.version} was acknowledged (server/hub.py snapshot_all skips a player "
        f"whose older snapshot is in flight)"
    )

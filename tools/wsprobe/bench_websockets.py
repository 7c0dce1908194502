"""The ``websockets`` engine of ``wsprobe bench``: each client a :class:`ProbeClient`
connection read by a task of its own (see ``bench_engine.py`` for what an engine does).

The reference engine: the same library and connection code as every other wsprobe mode. It
costs about as much CPU per exchange as the server does (docs/benchmarks.md, "The load
generator's own cost"); ``bench_picows.py`` is the cheap one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tools.wsprobe.bench_engine import (
    Recorder,
    Schedule,
    Setup,
    Window,
    greet,
    head_decoder,
    run_schedule,
)
from tools.wsprobe.bench_report import LoadConfig
from tools.wsprobe.client import ProbeError
from tools.wsprobe.plans import MixPlan


@dataclass(slots=True, eq=False)
class _LoadClient:
    ws: ClientConnection
    text: bool
    plan: MixPlan
    rids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # open loop: rid -> (time the op is timed from, actual send time, kind, measured)
    pending: dict[int, tuple[float, float, int, bool]] = field(default_factory=dict)
    in_flight_measured: bool = False
    """Closed loop: the request awaiting its reply was sent inside the window."""
    sending: bool = True
    dead: bool = False
    rec: Recorder | None = None
    """Open loop: where a send that finds the connection closed is counted."""

    async def send_at(self, timed_from: float, now: float, measured: bool) -> None:
        """Open loop (:func:`bench_engine.run_schedule`): send the next request now."""
        rid = next(self.rids)
        kind, request = self.plan.next(rid)
        self.pending[rid] = (timed_from, now, kind, measured)
        try:
            await self.ws.send(request, text=self.text)
        except ConnectionClosed:
            self.dead = True
            if self.pending.pop(rid, None) is not None and measured and self.rec is not None:
                self.rec.error("connection_closed")


# --- closed loop -------------------------------------------------------------------------------


async def _closed_client(client: _LoadClient, window: Window, rec: Recorder) -> None:
    ws, text, plan, rids = client.ws, client.text, client.plan, client.rids
    observes = plan.observes
    decode = head_decoder(text)
    clock = time.monotonic
    start, end = window.start, window.end
    try:
        while True:
            sent = clock()
            if sent >= end:
                return
            rid = next(rids)
            kind, request = plan.next(rid)
            measured = client.in_flight_measured = sent >= start
            await ws.send(request, text=text)
            while True:  # pushes (no rid) are skipped
                frame = await ws.recv(decode=False)
                head = decode(frame)
                if head.rid == rid:
                    break
            client.in_flight_measured = False
            if observes:
                plan.observe(rid, frame)
            if measured:
                rec.reply(head, kind, clock() - sent, None)
    except ConnectionClosed:
        client.dead = True
        if client.in_flight_measured:
            client.in_flight_measured = False
            rec.error("connection_closed")


# --- open loop ---------------------------------------------------------------------------------


async def _open_receiver(client: _LoadClient, rec: Recorder) -> None:
    ws, pending, plan = client.ws, client.pending, client.plan
    decode = head_decoder(client.text)
    clock = time.monotonic
    try:
        # After the schedule ends (``sending`` False) read until nothing is outstanding.
        while client.sending or pending:
            frame = await ws.recv(decode=False)
            head = decode(frame)
            if head.rid is None:
                continue
            times = pending.pop(head.rid, None)
            if times is None:
                continue
            if plan.observes:
                plan.observe(head.rid, frame)
            intended, sent, kind, measured = times
            if measured:
                done = clock()
                rec.reply(head, kind, done - intended, done - sent)
    except ConnectionClosed:
        client.dead = True
        lost = sum(1 for *_, measured in pending.values() if measured)
        pending.clear()
        if lost:
            rec.error("connection_closed", lost)


# --- the pool ----------------------------------------------------------------------------------


async def _drain(tasks: list[asyncio.Task[None]], within_s: float) -> None:
    """Wait for ``tasks`` up to ``within_s``, then cancel the ones still running."""
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=within_s)
    for task in stuck:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class WebsocketsPool:
    """:class:`tools.wsprobe.bench_engine.Pool` on ``websockets``."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.clients: list[_LoadClient] = []
        self.connected = 0

    async def connect(self, indices: range, setup: Setup) -> None:
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        opened = await asyncio.gather(*(self._open(i, gate, setup) for i in indices))
        self.clients = [c for c in opened if c is not None]
        self.connected = len(self.clients)

    async def _open(self, index: int, gate: asyncio.Semaphore, setup: Setup) -> _LoadClient | None:
        async with gate:
            try:
                probe = await self.config.connect.open()
            except ProbeError as exc:  # HandshakeRefusedError: the message says why
                setup.fail("connect_failed", str(exc))
                return None
            plan = await greet(self.config, index, probe.codec, probe.hello, setup)
            if plan is None:
                await probe.close()
                return None
            return _LoadClient(ws=probe.ws, text=probe.codec.text, plan=plan)

    async def run_closed(self, window: Window, rec: Recorder) -> None:
        tasks = [asyncio.create_task(_closed_client(c, window, rec)) for c in self.clients]
        await asyncio.sleep(max(0.0, window.end - time.monotonic()))
        await _drain(tasks, self.config.drain_timeout_s)
        lost = sum(1 for c in self.clients if c.in_flight_measured)
        if lost:
            rec.error("no_reply", lost)

    async def run_open(self, schedule: Schedule, rec: Recorder) -> None:
        clients = self.clients
        receivers = [asyncio.create_task(_open_receiver(c, rec)) for c in clients]
        for client in clients:
            client.rec = rec
        await run_schedule(clients, schedule, rec)
        for client, task in zip(clients, receivers, strict=True):
            client.sending = False
            if not client.pending:
                task.cancel()  # blocked in recv with nothing to wait for
        await _drain(receivers, self.config.drain_timeout_s)
        lost = sum(1 for c in clients for *_, m in c.pending.values() if m)
        if lost:
            rec.error("no_reply", lost)

    async def close(self) -> None:
        await asyncio.gather(*(c.ws.close() for c in self.clients), return_exceptions=True)

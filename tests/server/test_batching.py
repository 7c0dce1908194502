"""Frames ready at once go out in one write: the ``websockets`` adapter's ``send_batch``
hands every frame to websockets inside one send context, and ``send_data`` joins what
websockets produced into one ``transport.write`` (websockets alone writes each frame on
its own: a syscall each). The picows adapter builds the frames itself
(tests/server/test_picows_framing.py). Both must deliver every frame, whole and in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.app import App
from server.session import MAX_BATCH
from server.transport_ws import WebSocketsTransport
from tests.support.client import Client

DEADLINE_S = 10.0


class _CountingWrites:
    """Stands between a websockets connection and its asyncio transport: counts writes."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def _numbered(client: Client, count: int) -> list[int]:
    """The ``n`` of the next ``count`` test frames (anything else the server sends between
    them is not part of the test)."""
    got: list[int] = []
    async with asyncio.timeout(DEADLINE_S):
        while len(got) < count:
            msg = client.decode(await client.ws.recv())
            if "n" in msg:
                got.append(msg["n"])
    return got


def _session_of(app: App) -> Any:
    """The one session (the client has its welcome, so the server has registered it)."""
    (session,) = app.sessions
    return session


@pytest.mark.parametrize("transport", ["websockets"])
async def test_websockets_batch_is_one_write(app: App, url: str) -> None:
    client = await Client.open(url)
    try:
        await client.hello("batcher")
        session = _session_of(app)
        assert isinstance(session.transport, WebSocketsTransport)
        conn = session.transport._conn
        counting = _CountingWrites(conn.transport)
        conn.transport = counting
        try:
            frames = [json.dumps({"t": "pong", "n": i}).encode() for i in range(5)]
            await session.transport.send_batch(frames, True)
        finally:
            conn.transport = counting.real
        assert len(counting.writes) == 1, [len(w) for w in counting.writes]
        assert await _numbered(client, len(frames)) == list(range(5))
    finally:
        await client.close()


async def test_a_burst_of_queued_frames_arrives_whole_and_in_order(app: App, url: str) -> None:
    """More frames than one batch holds, queued at once: the writer sends them in batches
    of ``MAX_BATCH``; the client gets every one, in order."""
    client = await Client.open(url)
    try:
        await client.hello("burst")
        session = _session_of(app)
        count = MAX_BATCH * 2 + 7
        for i in range(count):
            session.send_frame(json.dumps({"t": "pong", "n": i}).encode())
        assert await _numbered(client, count) == list(range(count))
    finally:
        await client.close()

"""A closed connection is freed by reference counting, not left for the cyclic collector:
under connection churn (a login storm), cyclic garbage per connection turned into
collector pauses of 30-100 ms that skipped ticks (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

from server.app import App
from server.config import Settings
from tests.support.client import Client


async def test_closed_connections_leave_no_cycles(
    make_settings: Callable[..., Settings], transport: str
) -> None:
    # gc_freeze_loaded_s 0: the hub's own young collection after logins would hide them.
    app = App(make_settings(gc_freeze_loaded_s=0))
    await app.start()
    try:
        url = f"ws://127.0.0.1:{app.port}/"
        warm = await Client.open(url)
        await warm.hello("warm")
        await warm.close()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(10):
                client = await Client.open(url)
                assert (await client.hello(f"churn{i % 2}"))["t"] == "session.welcome"
                await client.close()
            # Wait (bounded) for the server side of every connection to finish: a session
            # leaves app.sessions in its transport's finally block, which no client sees.
            async with asyncio.timeout(5.0):
                while app.sessions:  # noqa: ASYNC110 (no event announces it)
                    await asyncio.sleep(0)
            gc.collect()
            ours = [
                type(o).__module__ + "." + type(o).__qualname__
                for o in gc.garbage
                if type(o).__module__.split(".")[0] in {"server", "websockets", "picows"}
            ]
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            gc.enable()
        assert ours == []
    finally:
        await app.stop()

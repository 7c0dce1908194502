"""A whole server in the test's event loop, for tests that need their own settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from server.app import App
from server.config import Settings
from sim.templates import Catalog


@contextlib.asynccontextmanager
async def serving(settings: Settings, catalog: Catalog | None = None) -> AsyncIterator[App]:
    """Start an app with ``settings`` (and ``catalog`` instead of the stored one), stop it
    gracefully on the way out."""
    app = App(settings, catalog=catalog)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()

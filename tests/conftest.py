"""Fixtures shared by every test layer.

- ``pg``: one real Postgres for the run (embedded, started here).
- ``dsn``: a fresh, empty database for one test.
- ``app``: a real Gearhall server on 127.0.0.1:0 against that database, dev auth on, on the
  ``transport`` fixture's WebSocket library (tests/server/conftest.py: both).
- ``url``: its WebSocket URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from server.app import App
from server.config import Settings, load_settings
from tests.support.pg import TestCluster


@pytest.fixture(scope="session")
def pg() -> Iterator[TestCluster]:
    cluster = TestCluster()
    yield cluster
    cluster.stop()


@pytest.fixture
async def dsn(pg: TestCluster) -> AsyncIterator[str]:
    name = await pg.create_database()
    yield pg.dsn_for(name)
    await pg.drop_database(name)


@pytest.fixture
def transport() -> str:
    """The WebSocket library of the ``app`` fixture; tests/server runs under both."""
    return "websockets"


@pytest.fixture
def make_settings(dsn: str, transport: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, object] = {
            "database_url": dsn,
            "port": 0,
            "dev_auth": True,
            "log_level": "warning",
            "transport": transport,
        }
        base.update(overrides)
        return load_settings(base, environ={})

    return make


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    server = App(make_settings())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def url(app: App) -> str:
    return f"ws://127.0.0.1:{app.port}/"

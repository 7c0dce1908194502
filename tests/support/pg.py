"""One embedded Postgres per test run; a fresh database per test that asks for one.

``GEARHALL_TEST_DATABASE_URL`` points the tests at an existing server instead (its
database is used as the template connection; test databases are created next to it).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import asyncpg

from persistence.embedded import EmbeddedPostgres, start_embedded


class TestCluster:
    def __init__(self) -> None:
        self._embedded: EmbeddedPostgres | None = None
        url = os.environ.get("GEARHALL_TEST_DATABASE_URL")
        if url:
            self._admin_dsn = url
        else:
            # A short path: the server's Unix socket lives in the data directory.
            root = Path(tempfile.mkdtemp(prefix="ghpg-", dir="/tmp"))
            self._embedded = start_embedded(root, stop_at_exit=True)
            self._admin_dsn = self._embedded.dsn()

    def dsn_for(self, database: str) -> str:
        if self._embedded is not None:
            return self._embedded.dsn(database)
        base, _, query = self._admin_dsn.partition("?")
        head = base.rsplit("/", 1)[0]
        return f"{head}/{database}" + (f"?{query}" if query else "")

    async def create_database(self) -> str:
        name = f"gh_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self._admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self._admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def stop(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()

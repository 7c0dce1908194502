"""Revocations and role changes reach every node's open sockets through Postgres
LISTEN/NOTIFY (DESIGN.md §8: nothing may assume a player's sockets are in this process).

The repository announces on ``gearhall_auth`` inside the transaction that revokes, so a
notice is delivered exactly when the revocation is committed, to every node, this one
included. Each node keeps an index of its authenticated sessions by login session, account
and API key, and on a notice closes the affected sockets (1008) or updates their roles.
Delivery takes milliseconds; the 1-second promise holds with margin.

If the listening connection drops, notices sent meanwhile are lost: after reconnecting, the
node re-checks every login session it has open against the database (one query) and closes
those no longer valid. The same sweep also runs every ``SWEEP_PERIOD_S``, which bounds any
other way to miss a notice (a revocation committed between a hello's token check and the
socket joining the index).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import asyncpg

from persistence.repos import accounts as repo
from server.session import CLOSE_POLICY

if TYPE_CHECKING:
    from server.app import App
    from server.session import Session

log = logging.getLogger("gearhall.accounts")

SWEEP_PERIOD_S = 10.0
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class AuthBus:
    def __init__(self, app: App) -> None:
        self._app = app
        self.by_auth_session: defaultdict[int, set[Session]] = defaultdict(set)
        self.by_account: defaultdict[int, set[Session]] = defaultdict(set)
        self.by_api_key: defaultdict[int, set[Session]] = defaultdict(set)
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.notices = 0

    # --- the index of this node's sessions ------------------------------------------------------

    def track(self, session: Session) -> None:
        p = session.principal
        if p is None:
            return
        if p.auth_session_id is not None:
            self.by_auth_session[p.auth_session_id].add(session)
        if p.account_id is not None:
            self.by_account[p.account_id].add(session)
        if p.api_key_id is not None:
            self.by_api_key[p.api_key_id].add(session)

    def forget(self, session: Session) -> None:
        p = session.principal
        if p is None:
            return
        for index, key in (
            (self.by_auth_session, p.auth_session_id),
            (self.by_account, p.account_id),
            (self.by_api_key, p.api_key_id),
        ):
            if key is None:
                continue
            sessions = index.get(key)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del index[key]

    # --- listening --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._keep_listening(), name="auth-bus")

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._app.dsn)
        conn.add_termination_listener(lambda _c: self._lost.set())
        await conn.add_listener(repo.AUTH_CHANNEL, self._on_notice)
        self._conn = conn

    async def _keep_listening(self) -> None:
        while True:
            try:
                async with asyncio.timeout(SWEEP_PERIOD_S):
                    await self._lost.wait()
            except TimeoutError:
                try:
                    await self.sweep()
                except _DB_ERRORS as exc:
                    log.warning("auth sweep failed: %s", exc)
                continue
            self._lost.clear()
            log.warning("auth notice connection lost; reconnecting")
            delay = 0.1
            while True:
                try:
                    await self._connect()
                    await self.sweep()
                    break
                except _DB_ERRORS as exc:
                    log.warning("auth notice reconnect failed: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(5.0, delay * 2)

    async def sweep(self) -> None:
        """Close every socket whose login session is no longer valid."""
        ids = list(self.by_auth_session)
        if not ids:
            return
        async with self._app.pool.acquire() as conn:
            live = await repo.live_sessions(conn, ids)
        self._close_sessions([i for i in ids if i not in live], "session revoked")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)

    def _on_notice(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notices += 1
        try:
            notice = json.loads(payload)
            kind = notice["kind"]
            if kind == "revoke":
                self._close_sessions(notice["session_ids"], _reason(notice.get("reason")))
            elif kind == "ban":
                self._close(self.by_account.get(notice["account_id"], ()), "account banned")
            elif kind == "roles":
                self.apply_roles(notice["account_id"], notice["roles"])
            elif kind == "api_key_revoked":
                self._close(self.by_api_key.get(notice["key_id"], ()), "API key revoked")
        except (ValueError, KeyError, TypeError):
            log.error("unreadable auth notice: %r", payload)

    def apply_roles(self, account_id: int, roles: list[str]) -> None:
        """The account's roles changed: its sessions here act with the new ones from their
        next message. Called by the handler that changed them (so this node applies the
        change before answering) and again by the notice (idempotent), for other nodes."""
        for session in self.by_account.get(account_id, ()):
            if session.principal is not None and session.permissions:
                session.principal.roles = frozenset(roles)
                session.permissions = session.principal.permissions

    def _close_sessions(self, session_ids: list[int], reason: str) -> None:
        for session_id in session_ids:
            self._close(self.by_auth_session.get(session_id, ()), reason)

    def _close(self, sessions: object, reason: str) -> None:
        assert isinstance(sessions, set | tuple)
        for session in list(sessions):
            session.revoke(CLOSE_POLICY, reason)


def _reason(raw: object) -> str:
    return {
        "logout": "logged out",
        "logout_all": "logged out everywhere",
        "password_changed": "password changed",
        "refresh_reuse": "session revoked: refresh token reused",
        "banned": "account banned",
    }.get(str(raw), "session revoked")

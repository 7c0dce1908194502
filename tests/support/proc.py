"""``gearhall serve`` as a real subprocess, for tests that kill it (-9) or stop it (SIGTERM).

The server gets a free port picked here (bind 127.0.0.1:0, close, pass ``--port``) and its
database through ``GEARHALL_DATABASE_URL``; readiness is ``GET /readyz`` answering 200,
polled until a deadline. Its log goes to a file so a full pipe can never stall it, and the
tail of that file is in every failure message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.support.http import http_status

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0


def free_port() -> int:
    """A port nothing listens on right now (another process could take it; unlikely here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One ``gearhall serve`` child. Use ``async with`` (or :meth:`kill` in a ``finally``)."""

    def __init__(self, dsn: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    async def start(self, tick_hz: int = 20) -> None:
        """Spawn the server and return once ``/readyz`` says ready.

        Raises:
            AssertionError: it exited, or was not ready before the deadline.
        """
        assert self.proc is None, "one process per ServerProcess"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEARHALL_")}
        env.update(
            GEARHALL_DATABASE_URL=self.dsn,
            GEARHALL_DEV_AUTH="1",
            GEARHALL_LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        self.port = free_port()
        argv = [sys.executable, "-m", "server.cli", "serve"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--tick-hz", str(tick_hz)]
        with self.log_path.open("ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            if await http_status(self.port, "/readyz") == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server not ready after {START_DEADLINE_S}s:\n{self.log_tail()}"
                )
            # Polling for readiness: the server offers no other start-up signal to wait on.
            await asyncio.sleep(0.05)

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the server now, without waiting (so a test can kill at an exact moment)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, within_s: float) -> int | None:
        """The exit code, or None if it is still running after ``within_s`` seconds."""
        assert self.proc is not None
        try:
            async with asyncio.timeout(within_s):
                return await self.proc.wait()
        except TimeoutError:
            return None

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap. Safe to call any number of times."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
            proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def terminate(self, within_s: float) -> int | None:
        """SIGTERM and wait up to ``within_s`` seconds; the exit code, or None if still up."""
        self.send_signal(signal.SIGTERM)
        return await self.wait(within_s)

    async def __aenter__(self) -> ServerProcess:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()

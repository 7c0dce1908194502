"""Autobahn|Testsuite cases 1-10 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8,
closing handshake, limits) against each transport's test-only echo endpoint.

The test runs what a developer runs, ``python -m tools.autobahn.run``, against a server on
this test's database. That installs wstest under ``var/autobahn`` on first use (about a
minute; later runs find the stamp). wstest needs Python 2.7: when the machine has none the
test fails and says what to install, it does not skip. A case may fail only if
``tools/autobahn/summary.py`` allows it for that transport with a documented reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.transports import TRANSPORTS

ROOT = Path(__file__).resolve().parents[2]
CASES_1_TO_10 = 301  # Autobahn|Testsuite 0.8.2 (pinned in tools/autobahn)
# A cold install (~70 s, more on a slow registry), a server start and wstest (~20 s).
RUN_TIMEOUT_S = 900.0


async def _run(*args: str) -> tuple[int, str]:
    """The script's exit status and stderr (its table). Its own session, so a timeout can
    stop it and the server it started together."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.autobahn.run",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_autobahn_cases_1_to_10(transport: str, dsn: str, tmp_path: Path) -> None:
    verdict = tmp_path / "autobahn.json"
    reports = tmp_path / "reports"
    status, table = await _run(
        "--transport",
        transport,
        "--cases",
        "1-10",
        "--database-url",
        dsn,
        "--reports",
        str(reports),
        "--json-out",
        str(verdict),
    )
    assert status != 2, f"wstest could not be installed:\n{table}"
    assert verdict.is_file(), f"no verdict (exit status {status}):\n{table}"
    (summary,) = json.loads(verdict.read_text())["transports"]
    assert "error" not in summary, f"{transport}: the run did not finish:\n{summary['error']}"
    assert summary["cases"] == CASES_1_TO_10, table
    assert summary["failed_unexpected"] == [], (
        f"{transport}: FAILED cases that no documented deviation allows "
        f"(reports in {reports / transport}):\n{table}"
    )
    assert status == 0, table

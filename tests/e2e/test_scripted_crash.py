"""Acknowledged means durable, told as two ``wsprobe run`` scripts (tests/e2e/scripts/):
``before_crash.toml`` makes changes whose replies are acknowledgements, the server is
SIGKILLed, and on the restarted server ``after_crash.toml`` checks the welcome against what
the first script captured. ``wsprobe state --digest`` before the kill and after the restart
must also agree: the whole state, byte for byte, not only what the script names.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.e2e.conftest import Spawn
from tests.support.proc import ROOT
from tests.support.wsprobe import run_wsprobe

SCRIPTS = ROOT / "tests" / "e2e" / "scripts"


def _captured(output: str) -> dict[str, object]:
    """The variables a ``--json`` run captured, over all its steps."""
    captured: dict[str, object] = {}
    for line in output.splitlines():
        step = json.loads(line)
        captured.update(step.get("captured") or {})
    return captured


@pytest.mark.slow
async def test_what_a_script_was_acknowledged_survives_kill_9(spawn: Spawn) -> None:
    server = await spawn()
    before = await run_wsprobe("run", str(SCRIPTS / "before_crash.toml"), "--url", server.url,
                               "--json")  # fmt: skip
    assert before.code == 0, f"{before}\n{server.log_tail()}"
    captured = _captured(before.out)
    digest = await run_wsprobe("state", server.url, "--token", "dev:crash", "--digest")
    assert digest.code == 0, digest

    server.send_signal(signal.SIGKILL)
    assert await server.wait(10.0) == -signal.SIGKILL

    restarted = await spawn()
    after = await run_wsprobe(
        "run", str(SCRIPTS / "after_crash.toml"), "--url", restarted.url,
        "--var", f"version={captured['version']}", "--var", f"cap={captured['cap']}",
    )  # fmt: skip
    assert after.code == 0, f"{after}\n{restarted.log_tail()}"
    again = await run_wsprobe("state", restarted.url, "--token", "dev:crash", "--digest")
    assert json.loads(again.out) == json.loads(digest.out)


async def test_the_check_fails_when_something_acknowledged_is_missing(spawn: Spawn) -> None:
    # The same check against a server that never saw before_crash.toml must fail: a new
    # player has nothing in those cells and a different version.
    server = await spawn()
    after = await run_wsprobe("run", str(SCRIPTS / "after_crash.toml"), "--url", server.url,
                              "--var", "version=21", "--var", "cap=1000")  # fmt: skip
    assert after.code == 1, after
    assert "version" in after.err

"""Run the ``wsprobe`` command line as a real subprocess and collect what it printed.

Tests run it against a server in the test's own event loop (the ``app`` fixture) or a
``ServerProcess``; the subprocess is awaited, never blocked on, so that server keeps running.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

from tests.support.proc import ROOT

DEADLINE_S = 60.0


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # what an assertion message shows
        return f"exit {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


async def run_wsprobe(
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    deadline_s: float = DEADLINE_S,
) -> Result:
    """``wsprobe ARGS`` with ``stdin`` fed in (then closed); fails the test at the deadline."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.wsprobe.cli",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )
    try:
        async with asyncio.timeout(deadline_s):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"wsprobe {' '.join(args)} still running after {deadline_s:g}s\n"
            f"{out.decode()}{err.decode()}"
        ) from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())

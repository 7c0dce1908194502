"""The wsprobe examples in docs/game-model.md really run.

Every ``$ wsprobe …`` line of the doc's console block is run, in order, against a fresh
server on an empty database, with the doc's URL replaced by the server's. What the doc shows
after each command must match what came back: the message type, the effect types in order,
the error code and the version. Values the doc elides with ``…`` (ticks, deadlines) and
free text are not compared.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.support.proc import ServerProcess

DOC = Path(__file__).resolve().parents[2] / "docs" / "game-model.md"
DOC_URL = "ws://127.0.0.1:8765/"
_SHAPE = re.compile(r'"(t|e|code)":"([a-z_.]+)"|"version":(\d+)')


def examples() -> list[tuple[str, str]]:
    """(command, expected output) pairs from the doc's console block."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("```console\n", 1)[1].split("```", 1)[0]
    pairs: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], ""))
        elif pairs:
            command, shown = pairs[-1]
            pairs[-1] = (command, shown + line + "\n")
    return pairs


def shape(output: str) -> list[str]:
    """The comparable skeleton of JSON lines: message/effect types, codes, versions."""
    return [m.group(2) or f"version={m.group(3)}" for m in _SHAPE.finditer(output)]


def test_the_doc_has_examples_for_every_operation() -> None:
    commands = {shlex.split(command)[1] for command, _ in examples()}
    assert {"state", "equip", "use", "split", "merge", "move", "sort", "stats", "grant",
            "destroy"} <= commands  # fmt: skip
    assert all(shown.strip() for _, shown in examples()), "every example shows its output"


@pytest.mark.slow
async def test_wsprobe_examples_in_the_game_model_doc(dsn: str, tmp_path: Path) -> None:
    server = ServerProcess(dsn, tmp_path / "server.log", {"GEARHALL_DEV_AUTH": "1"})
    await server.start()
    try:
        for command, shown in examples():
            argv = shlex.split(command.replace(DOC_URL, server.url))
            assert argv[0] == "wsprobe"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tools.wsprobe.cli",
                *argv[1:],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
            got = out.decode()
            assert shape(got) == shape(shown), (
                f"$ {command}\nexpected (from the doc):\n{shown}\ngot:\n{got}{err.decode()}"
            )
    finally:
        await server.kill()

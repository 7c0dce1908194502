"""The example scripts in docs/examples/ really run: each one, ``wsprobe run FILE --url URL``,
in both encodings, against a ``gearhall serve`` of its own on an empty database (the scripts
expect new players), must exit 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Spawn
from tests.support.proc import ROOT
from tests.support.wsprobe import run_wsprobe

EXAMPLES = ROOT / "docs" / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.toml"))
DOC_URL = "ws://127.0.0.1:8765/"


def test_there_are_example_scripts_and_each_names_the_doc_url() -> None:
    assert {p.stem for p in SCRIPTS} >= {"tour", "grant", "bad_input"}
    for path in SCRIPTS:
        text = path.read_text(encoding="utf-8")
        assert f'url = "{DOC_URL}"' in text, path
        assert text.startswith("#"), f"{path.name}: say what the example shows, at the top"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
async def test_example_script_is_valid(path: Path) -> None:
    result = await run_wsprobe("run", str(path), "--check")
    assert result.code == 0, result
    assert result.out == result.err == ""


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
async def test_example_script_passes(spawn: Spawn, path: Path, encoding: str) -> None:
    server = await spawn()
    flags = ["--msgpack"] if encoding == "msgpack" else []
    result = await run_wsprobe("run", str(path), "--url", server.url, *flags)
    assert result.code == 0, f"{path.name} ({encoding}):\n{result}\n{server.log_tail()}"
    assert result.out.rstrip().splitlines()[-1].startswith("ok: "), result
    assert "FAILED" not in result.out

"""``wsprobe bench --engine c``: the checks test_bench_picows.py makes of the picows engine,
against a real server on both of its transports, plus what only this engine has: it is
built from source on first use, and it refuses what it cannot run (``wss://``, the ``stack``
kind) before connecting. The frame-level cases (fragments, a server's close, a protocol
violation) run for every engine in test_bench_picows.py.

Nothing here measures performance: counts, proportions and the open-loop schedule are what
must come out exactly, as with the other engines.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from server.app import App
from server.config import Settings
from tests.support.proc import free_port
from tests.support.transports import TRANSPORTS
from tests.support.wsprobe import Result, run_wsprobe
from tests.wsprobe.test_bench import (
    SHORT,
    assert_percentiles_ordered,
    progress_lines,
    scheduled,
    wrr_slack,
)
from tools.wsprobe import bench_c
from tools.wsprobe.bench_report import LoadConfig
from tools.wsprobe.client import ProbeClient
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.plans import parse_mix

C = ("--engine", "c")
MIX = "equip:3,move:2,sort:1,stats:1,ping:2"
"""Every kind the engine runs (all but ``stack``)."""


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every real-server test here runs against both server transports."""
    name: str = request.param
    return name


@asynccontextmanager
async def _server(settings: Settings) -> AsyncIterator[App]:
    server = App(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def fast_url(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """A server whose per-connection rate limit a closed loop cannot reach."""
    async with _server(make_settings(rate_limit_per_s=1e6, rate_limit_burst=1_000_000)) as app:
        yield f"ws://127.0.0.1:{app.port}/"


async def bench(url: str, *args: str) -> tuple[Result, dict[str, Any]]:
    """``wsprobe bench URL --engine c ARGS``; the result and its JSON report."""
    result = await run_wsprobe("bench", url, *C, *args)
    report = json.loads(result.out) if result.code == 0 else {}
    return result, report


# --- against a real server ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_a_closed_loop_mix(fast_url: str, encoding: str) -> None:
    extra = ["--msgpack"] if encoding == "msgpack" else []
    result, report = await bench(
        fast_url, "--clients", "4", "--processes", "2", "--mix", MIX, *SHORT, *extra
    )
    assert result.code == 0, result
    assert report["config"]["engine"] == "c"
    assert report["config"]["connect"]["encoding"] == encoding
    assert report["mode"] == "closed"
    assert report["errors"] == {}, result
    assert report["ops"] > 0
    assert sum(report["ops_by_kind"].values()) == report["ops"]
    weights: dict[str, int] = dict(parse_mix(MIX))
    for kind, slack in wrr_slack(MIX).items():
        expected = report["ops"] * weights[kind] / sum(weights.values())
        assert abs(report["ops_by_kind"][kind] - expected) <= 4 * slack + 1e-9, (kind, report)
    assert_percentiles_ordered(report["latency"])
    assert report["latency"]["count"] == report["ops"]
    assert report["service_latency"] is None
    assert [w["connected"] for w in report["workers"]] == [2, 2]
    assert (report["connected"], report["connect_error"]) == (4, None)
    # The child's CPU is the generator's: without it a worker would show almost none.
    assert all(w["cpu_pct_of_core"] > 0 for w in report["workers"])
    assert [p["t_s"] for p in report["timeline"]] == [1.0, 1.5]
    assert sum(p["ops"] for p in report["timeline"]) == report["ops"]
    assert len(progress_lines(result.err)) == 2, result.err
    assert f"{encoding} on c" in result.err
    assert "errors: none" in result.err


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_an_open_loop_sends_exactly_what_its_schedule_says(
    fast_url: str, encoding: str
) -> None:
    extra = ["--msgpack"] if encoding == "msgpack" else []
    result, report = await bench(
        fast_url, "--clients", "3", "--processes", "2", "--rate", "90", "--mix", MIX,
        "--warmup", "0.5", "--duration", "1.25", *extra,
    )  # fmt: skip
    assert result.code == 0, result
    assert report["mode"] == "open"
    assert report["scheduled"] == scheduled(90.0, 3, 2, 0.5, 1.25) == 112
    assert report["ops"] + report["error_count"] == 112, report
    assert report["errors"] == {}, result
    assert set(report["ops_by_kind"]) == set(parse_mix(MIX))
    assert_percentiles_ordered(report["latency"])
    assert_percentiles_ordered(report["service_latency"])
    assert report["service_latency"]["count"] == report["ops"]
    # Latency runs from the intended send time, service from the actual one: never less.
    assert report["latency"]["max_ms"] >= report["service_latency"]["max_ms"]


async def test_error_replies_are_counted_by_code(make_settings: Callable[..., Settings]) -> None:
    async with _server(make_settings(rate_limit_per_s=20.0, rate_limit_burst=20)) as app:
        result, report = await bench(
            f"ws://127.0.0.1:{app.port}/", "--clients", "2", "--processes", "2",
            "--rate", "200", "--mix", "ping", "--warmup", "0.5", "--duration", "1",
        )  # fmt: skip
    assert result.code == 0, result
    assert report["errors"].get("rate_limited", 0) > 0, report
    assert report["ops"] > 0
    assert set(report["errors"]) <= {"rate_limited", "connection_closed", "client_down"}
    assert report["scheduled"] == 200
    assert report["ops"] + report["error_count"] == 200
    assert sum(p["errors"] for p in report["timeline"]) == report["error_count"]


async def test_a_server_closing_a_flooding_client_is_counted(
    make_settings: Callable[..., Settings],
) -> None:
    # As for picows: 5 pass, 5 are refused, the next refusal closes the connection (1008);
    # the op outstanding at the close is connection_closed, the later ones client_down.
    async with _server(make_settings(rate_limit_per_s=1.0, rate_limit_burst=5)) as app:
        result, report = await bench(
            f"ws://127.0.0.1:{app.port}/", "--clients", "1", "--rate", "200", "--mix", "ping",
            "--warmup", "0", "--duration", "1",
        )  # fmt: skip
    assert result.code == 0, result
    assert report["scheduled"] == 200
    assert report["ops"] + report["error_count"] == 200, report
    assert report["ops"] > 0
    assert set(report["errors"]) == {"rate_limited", "connection_closed", "client_down"}, report


async def test_a_player_that_cannot_run_the_mix_is_dropped_and_said_why(fast_url: str) -> None:
    # Client 1 of run "worn" already wears its cap: Python reads its welcome, finds it unfit
    # and has the child drop that connection; the other two run.
    async with await ProbeClient.connect(fast_url) as client:
        welcome = await client.hello("dev:bench-worn-1")
        state = welcome["state"]
        assert isinstance(state, dict)
        cap = next(i for i, item in state["items"].items() if item["template"] == "cloth_cap")
        reply = await client.request(
            {"t": "inventory.equip_item", "item_id": int(cap), "slot": "head"}
        )
        assert reply["t"] == "effects", reply
    result, report = await bench(
        fast_url, "--run-id", "worn", "--clients", "3", "--mix", "equip:1",
        "--warmup", "0.2", "--duration", "0.5",
    )  # fmt: skip
    assert result.code == 0, result
    assert report["connected"] == 2
    assert report["errors"] == {"player_unfit": 1}
    assert "dev:bench-worn-1 cannot run the mix" in report["connect_error"]
    assert report["ops"] > 0


# --- what it will not do, said before connecting -----------------------------------------------


async def test_nothing_listening_is_exit_2_with_a_reason() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    result = await run_wsprobe("bench", url, *C, "--clients", "3", "--duration", "1")
    assert result.code == 2, result
    assert f"no client could connect: {url}: " in result.err
    assert "refused" in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    ("url", "mix", "says"),
    [
        ("wss://127.0.0.1:1/", "ping", "--engine c speaks ws:// only, not wss://"),
        ("ws://127.0.0.1:1/", "equip:1,stack:1", "--engine c cannot run stack"),
    ],
)
async def test_what_the_engine_cannot_run_is_exit_2_before_connecting(
    url: str, mix: str, says: str
) -> None:
    result = await run_wsprobe("bench", url, *C, "--mix", mix, "--duration", "1")
    assert result.code == 2, result
    assert says in result.err
    assert result.out == ""


def test_it_is_built_once_per_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = bench_c.build()
    assert first.parent == tmp_path / "gearhall"
    assert first.stat().st_mode & 0o111
    built_at = first.stat().st_mtime_ns
    assert bench_c.build() == first
    assert first.stat().st_mtime_ns == built_at  # not rebuilt
    assert list(first.parent.iterdir()) == [first]  # no temporary file left behind


def test_a_missing_compiler_is_said_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(bench_c.CEngineError, match="needs a C compiler: cannot run "):
        bench_c.build()


async def test_the_childs_cpu_is_read_from_proc() -> None:
    # The worker adds this to its own CPU: a generator whose work is in the child must not
    # report an idle worker. A child that has spun for 0.3 s of CPU shows it.
    config = LoadConfig(connect=ConnectOptions(url="ws://127.0.0.1:1/"), clients=1, duration_s=1)
    pool = bench_c.CPool(config)
    assert pool.child_cpu_seconds() == 0.0
    spin = (
        "import sys, time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('spun', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = pool._proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", spin, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert await proc.stdout.readline() == b"spun\n"
        assert 0.3 <= pool.child_cpu_seconds() < 5.0
    finally:
        proc.stdin.close()
        await proc.wait()
    assert pool.child_cpu_seconds() >= 0.3  # the last reading, once it has exited

"""``wsprobe bench`` as a real subprocess against a real server (in the test's event loop):
the report on stdout, progress and summary on stderr, exit codes, both encodings, closed and
open loop (on both client engines), errors counted by code, TLS, Origin, refused connections
and the plot. Everything else runs on the default engine; test_bench_picows.py has the picows
engine against both server transports, and frame-level cases with both engines.

Runs are short (about a second measured, a handful of clients): nothing here measures
performance. What is asserted is what the generator must get exactly right whatever the
machine's speed: counts, proportions, ordering, the open-loop schedule.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import trustme

from server.app import App
from server.config import Settings
from tests.support import standin
from tests.support.proc import free_port
from tests.support.wsprobe import Result, run_wsprobe
from tools.wsprobe.bench_report import ENGINES
from tools.wsprobe.client import ProbeClient
from tools.wsprobe.plans import parse_mix, wrr_cycle

EVERY_KIND = "equip:1,move:1,stack:1,sort:1,stats:1,ping:1"
PROGRESS = re.compile(r"^ *\d+(\.\d+)?s +[\d,]+ ops/s  errors [\d,]+  p99 \d+\.\d\d ms$")
SHORT = ("--warmup", "0.5", "--duration", "1.5")


async def _server(settings: Settings) -> App:
    server = App(settings)
    await server.start()
    return server


@pytest.fixture
async def fast_url(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """A server whose per-connection rate limit a closed loop cannot reach."""
    server = await _server(make_settings(rate_limit_per_s=1e6, rate_limit_burst=1_000_000))
    yield f"ws://127.0.0.1:{server.port}/"
    await server.stop()


@pytest.fixture
async def limited_url(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """20 requests/s per connection, bursts of 20."""
    server = await _server(make_settings(rate_limit_per_s=20.0, rate_limit_burst=20))
    yield f"ws://127.0.0.1:{server.port}/"
    await server.stop()


async def bench(url: str, *args: str) -> tuple[Result, dict[str, Any]]:
    """Run ``wsprobe bench URL ARGS``; the result and its JSON report (empty if none)."""
    result = await run_wsprobe("bench", url, *args)
    report = json.loads(result.out) if result.code == 0 else {}
    return result, report


def progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if PROGRESS.match(line)]


def wrr_slack(mix: str) -> dict[str, float]:
    """How far one client's count of each kind can be from exact proportion, over any run of
    consecutive requests: whole cycles are exact, so it is the worst partial cycle."""
    weights = parse_mix(mix)
    cycle = wrr_cycle(list(weights.values()))
    period, total = len(cycle), sum(weights.values())
    slack = {}
    for index, (kind, weight) in enumerate(weights.items()):
        share = Fraction(weight, total)
        slack[kind] = float(
            max(
                abs(sum(cycle[(s + i) % period] == index for i in range(n)) - n * share)
                for s in range(period)
                for n in range(period)
            )
        )
    return slack


def scheduled(rate: float, clients: int, procs: int, warmup: float, duration: float) -> int:
    """Ops an open loop must send inside the window, worked out exactly: worker ``w`` owns
    ``n_w`` clients and sends op ``j`` at ``(j + w / procs) / r_w`` with ``r_w = rate * n_w /
    clients``; the window holds the ``j`` with ``warmup <= t < warmup + duration``."""
    base, extra = divmod(clients, procs)
    total = 0
    for w in range(procs):
        r = Fraction(rate) * (base + (1 if w < extra else 0)) / clients
        phase = Fraction(w, procs)
        start = max(0, math.ceil(Fraction(warmup) * r - phase))
        stop = max(0, math.ceil((Fraction(warmup) + Fraction(duration)) * r - phase))
        total += stop - start
    return total


def assert_percentiles_ordered(latency: dict[str, Any]) -> None:
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"], latency
    assert latency["p99_ms"] <= latency["p999_ms"] <= latency["max_ms"], latency


# --- closed loop -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_a_closed_loop_mix_over_two_processes(
    fast_url: str, encoding: str, engine: str
) -> None:
    mix = "equip:3,move:2,stack:1,ping:2"
    extra = ["--msgpack", "--quiet"] if encoding == "msgpack" else []
    result, report = await bench(
        fast_url, "--clients", "4", "--processes", "2", "--mix", mix, *SHORT, *extra,
        "--engine", engine,
    )  # fmt: skip
    assert result.code == 0, result
    assert report["config"]["engine"] == engine
    assert f"{encoding} on {engine}" in result.err
    assert report["mode"] == "closed"
    assert report["config"]["connect"]["encoding"] == encoding
    assert report["mix"] == mix
    assert report["errors"] == {}, result
    assert report["error_count"] == 0
    assert report["ops"] > 0
    assert sum(report["ops_by_kind"].values()) == report["ops"]
    # Each client's requests follow the weighted round-robin cycle: proportions are exact
    # but for one partial cycle per client.
    weights: dict[str, int] = dict(parse_mix(mix))
    for kind, slack in wrr_slack(mix).items():
        expected = report["ops"] * weights[kind] / sum(weights.values())
        assert abs(report["ops_by_kind"][kind] - expected) <= 4 * slack + 1e-9, (kind, report)
    assert_percentiles_ordered(report["latency"])
    assert report["latency"]["count"] == report["ops"]
    assert report["service_latency"] is None
    assert [w["worker"] for w in report["workers"]] == [0, 1]
    assert [w["connected"] for w in report["workers"]] == [2, 2]
    assert (report["connected"], report["connect_error"]) == (4, None)
    assert sum(w["ops"] for w in report["workers"]) == report["ops"]
    assert report["generator_cpu_s"] > 0
    assert all(w["cpu_pct_of_core"] > 0 for w in report["workers"])
    assert isinstance(report["generator_bound"], bool)
    # One point per second of the window (the last one half a second), covering every reply.
    assert [p["t_s"] for p in report["timeline"]] == [1.0, 1.5]
    assert sum(p["ops"] for p in report["timeline"]) == report["ops"]
    distribution = report["latency_distribution"]
    assert distribution[-1] == [1.0, report["latency"]["max_ms"]]
    # Progress on stderr unless --quiet; the summary always.
    progress = progress_lines(result.err)
    assert len(progress) == (0 if "--quiet" in extra else 2), result.err
    assert "p99.9" in result.err
    assert "errors: none" in result.err
    assert "generator CPU" in result.err


# --- open loop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_an_open_loop_sends_exactly_what_its_schedule_says(
    fast_url: str, engine: str
) -> None:
    # 3 clients over 2 workers: 60 and 30 ops/s, 75 and 37 ops in the 1.25 s window (the
    # second worker is half a step behind: 37.5 ops fall to 37), 112 in all for 112.5 = rate
    # x duration. Every scheduled op is counted, as an op or as an error.
    rate, duration = 90.0, 1.25
    result, report = await bench(
        fast_url, "--clients", "3", "--processes", "2", "--rate", "90", "--mix", EVERY_KIND,
        "--warmup", "0.5", "--duration", "1.25", "--msgpack", "--engine", engine,
    )  # fmt: skip
    assert result.code == 0, result
    assert report["config"]["engine"] == engine
    expected = scheduled(rate, 3, 2, 0.5, duration)
    assert expected == 112
    assert abs(expected - rate * duration) < 2  # under one op per worker
    assert report["mode"] == "open"
    assert report["scheduled"] == expected
    assert report["ops"] + report["error_count"] == expected, report
    # Every kind is valid with replies outstanding: a healthy server answers them all.
    assert report["errors"] == {}, result
    assert set(report["ops_by_kind"]) == set(parse_mix(EVERY_KIND))
    assert_percentiles_ordered(report["latency"])
    assert_percentiles_ordered(report["service_latency"])
    assert report["service_latency"]["count"] == report["ops"]
    assert report["service_latency_distribution"]


async def test_error_replies_are_counted_by_code(limited_url: str) -> None:
    # 100 ops/s per connection against a limit of 20/s: most are refused, and the run still
    # completes (exit 0) with the refusals in the report.
    result, report = await bench(
        limited_url, "--clients", "2", "--processes", "2", "--rate", "200", "--mix", "ping",
        "--warmup", "0.5", "--duration", "1",
    )  # fmt: skip
    assert result.code == 0, result
    assert report["errors"].get("rate_limited", 0) > 0, report
    assert report["ops"] > 0
    # A long stall of the generator could flood a connection into being closed; anything
    # else would be a miscount.
    assert set(report["errors"]) <= {"rate_limited", "connection_closed", "client_down"}
    assert report["scheduled"] == scheduled(200.0, 2, 2, 0.5, 1.0) == 200
    assert report["ops"] + report["error_count"] == 200
    assert sum(p["errors"] for p in report["timeline"]) == report["error_count"]
    assert "rate_limited" in result.err
    assert any(not line.rstrip().endswith("errors 0") for line in progress_lines(result.err))


# --- connections -------------------------------------------------------------------------------


@pytest.fixture
async def tls_url(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = await _server(
        make_settings(
            tls_cert_file=str(cert_file),
            tls_key_file=str(key_file),
            rate_limit_per_s=1e6,
            rate_limit_burst=1_000_000,
            allowed_origins=["https://play.example"],
        )
    )
    yield f"wss://127.0.0.1:{server.port}/"
    await server.stop()


async def test_wss_with_a_ca_and_an_origin(tls_url: str, tmp_path: Path) -> None:
    ca = str(tmp_path / "ca.pem")
    result, report = await bench(
        tls_url, "--ca", ca, "--origin", "https://play.example", "--clients", "1",
        "--mix", "equip:1,stats:1", "--warmup", "0.2", "--duration", "0.5",
    )  # fmt: skip
    assert result.code == 0, result
    assert report["errors"] == {}
    assert report["ops"] > 0
    assert len(report["workers"]) == 1  # one client: one process
    assert report["config"]["connect"]["ca_file"] == ca
    untrusted = await run_wsprobe("bench", tls_url, "--clients", "2", "--duration", "0.5")
    assert untrusted.code == 2, untrusted
    assert "TLS certificate not trusted" in untrusted.err
    assert untrusted.out == ""


async def test_nothing_listening_is_exit_2_with_a_reason() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    result = await run_wsprobe("bench", url, "--clients", "3", "--duration", "1")
    assert result.code == 2, result
    assert f"no client could connect: {url}: connection refused" in result.err
    assert result.out == ""


async def test_a_player_that_cannot_run_the_mix_is_left_out_and_said_why(fast_url: str) -> None:
    # Client 1 of run "worn" already wears its cap: the equip kind cannot start from there.
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
    assert "already wears something on its head" in report["connect_error"]
    assert "only 2 of 3 clients connected" in result.err
    assert report["ops"] > 0


@pytest.fixture
async def gatekeeper() -> AsyncIterator[standin.Gatekeeper]:
    """Refuses every upgrade that sends an Origin with 403, as an Origin check would."""
    async with standin.gatekeeper() as server:
        yield server


async def test_a_refused_handshake_is_exit_2_with_the_servers_reason(
    gatekeeper: standin.Gatekeeper,
) -> None:
    base, origins = gatekeeper
    url = f"{base}/"
    result = await run_wsprobe(
        "bench", url, "--clients", "2", "--origin", "https://evil.example", "--duration", "1"
    )
    assert result.code == 2, result
    assert "forbids this connection (403): the Origin https://evil.example" in result.err
    assert "origin not allowed" in result.err
    assert origins == ["https://evil.example"] * 2


@pytest.mark.parametrize(
    ("mix", "says"),
    [("equip:50,jump:5", "unknown kind 'jump'"), ("equip:0", "at least 1"), ("", "empty mix")],
)
async def test_a_bad_mix_is_exit_2_before_connecting(mix: str, says: str) -> None:
    result = await run_wsprobe("bench", f"ws://127.0.0.1:{free_port()}/", "--mix", mix)
    assert result.code == 2, result
    assert "argument --mix" in result.err
    assert says in result.err
    assert "connect" not in result.err


# --- output files ------------------------------------------------------------------------------


async def test_plot_and_json_files(fast_url: str, tmp_path: Path) -> None:
    png, out = tmp_path / "bench.png", tmp_path / "bench.json"
    result, report = await bench(
        fast_url, "--clients", "2", "--mix", "equip:1,ping:1", *SHORT,
        "--plot", str(png), "--json", str(out),
    )  # fmt: skip
    assert result.code == 0, result
    assert json.loads(out.read_text()) == report
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (1200, 500)
    # A real drawing, not a blank canvas: many colours (axes, bars, lines, anti-aliased text).
    from matplotlib.image import imread

    pixels = imread(str(png))
    colours = {tuple(row) for row in pixels.reshape(-1, pixels.shape[-1])[::7].tolist()}
    assert len(colours) > 50
    assert f"plot: {png}" in result.err


async def test_plot_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "matplotlib"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    result = await run_wsprobe(
        "bench", f"ws://127.0.0.1:{free_port()}/", "--plot", str(tmp_path / "x.png"),
        env={"PYTHONPATH": str(blocked.parent)},
    )  # fmt: skip
    assert result.code == 2, result
    assert "install gearhall[plot]" in result.err
    assert "connect" not in result.err  # refused before any run
    assert not (tmp_path / "x.png").exists()

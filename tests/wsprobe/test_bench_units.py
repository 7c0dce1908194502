"""The pure parts of ``wsprobe bench``: parsing a mix, the weighted round-robin that spreads
it, the open-loop schedule's window, merging progress intervals and worker results, and what
is printed and drawn from them."""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.wsprobe.bench_engine import schedule_bounds
from tools.wsprobe.bench_report import (
    Interval,
    LoadConfig,
    Progress,
    Timeline,
    WorkerResult,
    merge_results,
    render_summary,
)
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.plans import KINDS, MixError, format_mix, parse_mix, wrr_cycle
from tools.wsprobe.plot import write_plot
from tools.wsprobe.stats import LatencyHistogram

# --- mixes -------------------------------------------------------------------------------------


def test_a_mix_keeps_its_order_and_weights() -> None:
    mix = parse_mix("equip:50, move:30 ,ping:20")
    assert list(mix.items()) == [("equip", 50), ("move", 30), ("ping", 20)]
    assert format_mix(mix) == "equip:50,move:30,ping:20"
    assert parse_mix("stats") == {"stats": 1}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty mix"),
        ("   ", "empty mix"),
        ("equip:0", "must be at least 1"),
        ("equip:-3", "must be at least 1"),
        ("equip:1.5", "not an integer"),
        ("equip:x", "not an integer"),
        ("jump:3", "unknown kind 'jump'"),
        ("equip:1,equip:2", "appears twice"),
        ("equip:1,,ping:1", "is not kind:weight"),
        ("equip=1", "is not kind:weight"),
        ("equip:1000000,ping:1", "too fine-grained"),
    ],
)
def test_a_bad_mix_is_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(MixError, match=says):
        parse_mix(text)


def test_an_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(MixError) as caught:
        parse_mix("jump:3")
    assert all(kind in str(caught.value) for kind in KINDS)


weights = st.lists(st.integers(1, 40), min_size=1, max_size=6)


@given(weights)
def test_each_period_holds_every_kind_exactly_in_proportion(ws: list[int]) -> None:
    cycle = wrr_cycle(ws)
    g = math.gcd(*ws)
    assert len(cycle) == sum(ws) // g
    assert [cycle.count(i) for i in range(len(ws))] == [w // g for w in ws]
    assert wrr_cycle(ws) == cycle  # deterministic


def test_the_round_robin_interleaves_instead_of_running_in_blocks() -> None:
    # Worked by hand (credits after each pick): 0 (-5,3,2), 1 (0,-4,4), 2 (5,-1,-4),
    # 0 (0,2,-2), 0 on the tie (-5,5,0), 1 (0,-2,2), 0 (-5,1,4), 2 (0,4,-4), 1 (5,-3,-2), 0.
    assert wrr_cycle([5, 3, 2]) == [0, 1, 2, 0, 0, 1, 0, 2, 1, 0]
    assert wrr_cycle([50, 30, 20]) == wrr_cycle([5, 3, 2])
    assert wrr_cycle([1, 1, 1]) == [0, 1, 2]


# --- the open-loop schedule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "phase", "warmup", "duration", "expected"),
    [
        (100.0, 0.0, 0.5, 1.0, range(50, 150)),  # op 50 is exactly at the window's start: in
        (100.0, 0.5, 0.5, 1.0, range(50, 150)),  # half a step later: 49.5 -> 50
        (60.0, 0.0, 0.5, 1.25, range(30, 105)),
        (30.0, 0.5, 0.5, 1.25, range(15, 52)),  # 37.5 ops/window: the phase decides 37
        (10.0, 0.0, 0.0, 1.0, range(0, 10)),
        (3.0, 0.75, 0.0, 0.1, range(0, 0)),  # no op falls inside a short window
    ],
)
def test_the_window_holds_the_ops_intended_inside_it(
    rate: float, phase: float, warmup: float, duration: float, expected: range
) -> None:
    assert schedule_bounds(rate, phase, warmup, duration) == expected


@given(
    st.integers(1, 5000),
    st.integers(0, 7),
    st.integers(0, 30),
    st.integers(1, 50),
)
def test_the_window_is_exactly_the_ops_intended_inside_it(
    rate: int, phase_eighths: int, warmup_tenths: int, duration_tenths: int
) -> None:
    phase = Fraction(phase_eighths, 8)
    warmup, duration = Fraction(warmup_tenths, 10), Fraction(duration_tenths, 10)
    bounds = schedule_bounds(rate, float(phase), float(warmup), float(duration))
    inside = [
        j
        for j in range(int((warmup + duration) * rate) + 2)
        if warmup <= (j + phase) / rate < warmup + duration
    ]
    assert list(bounds) == inside
    assert abs(len(bounds) - duration * rate) < 1


# --- progress ----------------------------------------------------------------------------------


def _interval(index: int, ops: int, latencies_us: list[int], errors: int = 0) -> Interval:
    h = LatencyHistogram()
    for v in latencies_us:
        h.record_us(v)
    return Interval(
        index=index,
        ops=ops,
        errors={"rate_limited": errors} if errors else {},
        latency=h,
        cpu_s=0.25,
    )


def test_a_point_is_made_once_every_worker_has_sent_its_interval_in_order() -> None:
    config = LoadConfig(connect=ConnectOptions(url="ws://x/"), clients=2, duration_s=2.5)
    assert config.intervals() == 3
    timeline = Timeline(config, workers=2)
    assert timeline.add(_interval(0, 10, [1000] * 10)) == []
    assert timeline.add(_interval(1, 5, [3000] * 5, errors=2)) == []  # worker 0 runs ahead
    [first] = timeline.add(_interval(0, 30, [2000] * 30))
    assert (first.t_s, first.ops, first.ops_per_s, first.errors) == (1.0, 40, 40.0, 0)
    assert (first.p50_ms, first.p99_ms) == (2.0, 2.0)
    assert first.generator_cpu_pct_of_core == 50.0
    [second] = timeline.add(_interval(1, 5, [3000] * 5, errors=1))
    assert (second.t_s, second.ops, second.errors) == (2.0, 10, 3)
    assert timeline.add(_interval(2, 4, [1000] * 4)) == []
    [last] = timeline.add(_interval(2, 6, [1000] * 6))
    # The last interval is half a second long: 10 ops in it are 20 ops/s.
    assert (last.t_s, last.ops, last.ops_per_s) == (2.5, 10, 20.0)
    assert timeline.points == [first, second, last]


def test_progress_prints_a_line_per_interval_or_rewrites_one_line_on_a_terminal() -> None:
    config = LoadConfig(connect=ConnectOptions(url="ws://x/"), clients=1, duration_s=2.0)
    timeline = Timeline(config, workers=1)
    points = [
        *timeline.add(_interval(0, 12_345, [4100])),
        *timeline.add(_interval(1, 100, [900], errors=3)),
    ]
    lines = io.StringIO()
    progress = Progress(lines, in_place=False)
    for point in points:
        progress.point(point)
    progress.done()
    assert lines.getvalue().splitlines() == [
        "   1s    12,345 ops/s  errors 0  p99 4.10 ms",
        "   2s       100 ops/s  errors 3  p99 0.90 ms",
    ]
    terminal = io.StringIO()
    progress = Progress(terminal, in_place=True)
    for point in points:
        progress.point(point)
    progress.done()
    assert "\n" not in terminal.getvalue()[:-1]
    assert terminal.getvalue().count("\r") == 2
    assert terminal.getvalue().endswith("errors 3  p99 0.90 ms\n")


# --- the report --------------------------------------------------------------------------------


def _result(
    worker: int, ops_by_kind: list[int], errors: dict[str, int], cpu_s: float
) -> WorkerResult:
    latency = LatencyHistogram()
    for v in range(1, sum(ops_by_kind) + 1):
        latency.record_us(v * 10)
    return WorkerResult(
        worker=worker,
        clients=2,
        connected=2,
        setup_s=0.1,
        ops=sum(ops_by_kind),
        ops_by_kind=ops_by_kind,
        errors=errors,
        latency=latency,
        service=None,
        scheduled=None,
        cpu_s=cpu_s,
        max_send_lag_ms=0.0,
    )


def test_worker_results_add_up_and_a_busy_worker_is_flagged() -> None:
    config = LoadConfig(
        connect=ConnectOptions(url="ws://x/"),
        clients=4,
        duration_s=2.0,
        mix=parse_mix("equip:2,ping:1"),
        procs=2,
    )
    calm = merge_results(
        config,
        [
            _result(0, [20, 10], {"rate_limited": 2}, cpu_s=0.5),
            _result(1, [40, 20], {"no_reply": 1, "conflict": 3}, cpu_s=1.0),
        ],
        [],
    )
    assert (calm.ops, calm.ops_per_s) == (90, 45.0)
    assert calm.ops_by_kind == {"equip": 60, "ping": 30}
    assert calm.errors == {"conflict": 3, "no_reply": 1, "rate_limited": 2}  # sorted
    assert calm.error_count == 6
    assert calm.latency.count == 90
    assert calm.latency.max_ms == 0.6
    assert (calm.generator_cpu_pct_of_core, calm.generator_bound) == (75.0, False)
    assert [w.cpu_pct_of_core for w in calm.workers] == [25.0, 50.0]
    summary = render_summary(calm)
    assert "45 ops/s (90 ops: equip 60, ping 30)" in summary
    assert "errors: conflict 3, no_reply 1, rate_limited 2" in summary
    assert "per worker: 25% 50%" in summary
    assert "WARNING" not in summary

    busy = merge_results(
        config, [_result(0, [2, 1], {}, cpu_s=0.4), _result(1, [2, 1], {}, cpu_s=1.9)], []
    )
    assert busy.generator_bound
    assert "WARNING: a load worker used over 90% of a core" in render_summary(busy)


def test_a_report_without_a_single_reply_still_plots(tmp_path: Path) -> None:
    config = LoadConfig(connect=ConnectOptions(url="ws://x/"), clients=1, duration_s=1.0)
    nothing = _result(0, [0], {"rate_limited": 50}, cpu_s=0.1)
    timeline = Timeline(config, workers=1)
    points = timeline.add(_interval(0, 0, [], errors=50))
    report = merge_results(config, [nothing], points)
    assert report.latency_distribution == []
    png = tmp_path / "empty.png"
    write_plot(report, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

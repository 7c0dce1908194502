"""The tick driver against a hand-stepped clock: no test here waits for real time.

The fake clock keeps integer milliseconds and starts at a realistic epoch; tick numbers are
computed in floating point, which is exact to far below a millisecond at that magnitude.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.driver import TickDriver, tick_ms_for

EPOCH_MS = 1_750_000_000_000  # a multiple of 1000, so a tick boundary at every rate
VALID_HZ = (1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000)


class FakeClock:
    def __init__(self, wall_ms: int = EPOCH_MS, monotonic_ms: int = 3_600_000) -> None:
        self._wall_ms = wall_ms
        self._monotonic_ms = monotonic_ms
        self.reads = 0

    def wall_ms(self) -> int:
        return self._wall_ms

    def monotonic(self) -> float:
        self.reads += 1
        if self.reads > 100_000:  # a driver spinning on a clock that cannot move
            raise RuntimeError("monotonic() read too often")
        return self._monotonic_ms / 1000

    def advance(self, ms: int) -> None:
        self._wall_ms += ms
        self._monotonic_ms += ms

    def step_wall(self, ms: int) -> None:
        """An NTP step: the wall clock jumps, the monotonic clock does not."""
        self._wall_ms += ms


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[int] = []
        self.overruns: list[int] = []


def make(
    tick_hz: int = 20, clock: FakeClock | None = None
) -> tuple[TickDriver, FakeClock, Recorder]:
    clock = clock or FakeClock()
    seen = Recorder()
    driver = TickDriver(tick_hz, seen.ticks.append, clock, on_overrun=seen.overruns.append)
    return driver, clock, seen


@pytest.mark.parametrize(
    ("hz", "ms"), [(1, 1000), (10, 100), (20, 50), (25, 40), (50, 20), (1000, 1)]
)
def test_tick_ms_for(hz: int, ms: int) -> None:
    assert tick_ms_for(hz) == ms


@pytest.mark.parametrize("hz", [0, -10, 3, 7, 30, 60, 2000])
def test_tick_ms_for_rejects_rates_not_dividing_1000(hz: int) -> None:
    with pytest.raises(ValueError, match="must divide 1000"):
        tick_ms_for(hz)
    with pytest.raises(ValueError, match="must divide 1000"):
        TickDriver(hz, lambda tick: None, FakeClock())


def test_the_first_tick_is_the_wall_clock_tick() -> None:
    driver, _, _ = make(20, FakeClock(EPOCH_MS + 1234))
    assert driver.tick_ms == 50
    assert driver.current == driver.now_tick() == (EPOCH_MS + 1234) // 50


@settings(max_examples=500, deadline=None)
@given(
    hz=st.sampled_from(VALID_HZ),
    wall_ms=st.integers(1_600_000_000_000, 2_500_000_000_000),
    monotonic_ms=st.integers(0, 10**10),
    advances=st.lists(st.integers(0, 5_000), max_size=30),
)
def test_tick_numbers_are_unix_ms_div_tick_ms(
    hz: int, wall_ms: int, monotonic_ms: int, advances: list[int]
) -> None:
    driver, clock, seen = make(hz, FakeClock(wall_ms, monotonic_ms))
    for ms in advances:
        clock.advance(ms)
        assert driver.now_tick() == clock.wall_ms() // driver.tick_ms
        driver.step()
        assert driver.current == clock.wall_ms() // driver.tick_ms
    assert seen.ticks == sorted(set(seen.ticks)), "a tick ran twice or went backwards"
    if seen.ticks:
        assert seen.ticks[-1] == driver.current


def test_step_runs_on_tick_once_per_boundary() -> None:
    driver, clock, seen = make(20, FakeClock(EPOCH_MS + 10))
    first = driver.current
    assert driver.step() == 0
    clock.advance(30)  # 40 ms into the tick: no boundary crossed
    assert driver.step() == 0
    assert seen.ticks == []
    clock.advance(10)  # exactly on the boundary
    assert driver.step() == 0
    assert driver.step() == 0  # a second step in the same tick does nothing
    assert seen.ticks == [first + 1]
    for _ in range(3):
        clock.advance(50)
        driver.step()
    assert seen.ticks == [first + 1, first + 2, first + 3, first + 4]
    assert (driver.stats.ticks, driver.stats.overruns, seen.overruns) == (4, 0, [])


def test_skipped_ticks_count_as_overruns_and_on_tick_gets_the_current_tick() -> None:
    driver, clock, seen = make(20, FakeClock(EPOCH_MS + 10))
    first = driver.current
    clock.advance(175)  # 185 ms in: ticks first+1 and first+2 were missed
    assert driver.step() == 2
    assert seen.ticks == [first + 3]
    assert seen.overruns == [2]
    clock.advance(50)
    assert driver.step() == 0
    clock.advance(1000)
    assert driver.step() == 19
    assert seen.ticks == [first + 3, first + 4, first + 24]
    assert seen.overruns == [2, 19]
    assert (driver.stats.ticks, driver.stats.overruns) == (3, 21)


def test_overruns_are_counted_without_a_callback() -> None:
    clock = FakeClock(EPOCH_MS)
    ticks: list[int] = []
    driver = TickDriver(10, ticks.append, clock)
    clock.advance(350)
    assert driver.step() == 2
    assert driver.stats.overruns == 2
    assert ticks == [EPOCH_MS // 100 + 3]


def test_seconds_to_next() -> None:
    driver, clock, _ = make(20, FakeClock(EPOCH_MS + 10))
    assert driver.seconds_to_next() == pytest.approx(0.040)
    clock.advance(39)
    assert driver.seconds_to_next() == pytest.approx(0.001)
    clock.advance(100)  # late: the deadline has passed, nothing to wait for
    assert driver.seconds_to_next() == 0.0
    driver.step()
    assert driver.seconds_to_next() == pytest.approx(0.001)  # 149 ms in, next at 150


def test_due_is_the_next_boundary_on_the_monotonic_clock() -> None:
    """``due`` is what the request path compares the monotonic clock with: it must be the
    next tick's start, before and after each step, late steps included."""
    driver, clock, ticks = make(20, FakeClock(EPOCH_MS + 10))
    assert driver.due == pytest.approx(clock.monotonic() + 0.040)
    clock.advance(39)
    assert clock.monotonic() < driver.due  # not yet: a poll would run nothing
    clock.advance(1)
    assert clock.monotonic() >= driver.due
    assert driver.step() == 0 and len(ticks.ticks) == 1
    assert driver.due == pytest.approx(clock.monotonic() + 0.050)
    clock.advance(120)  # late by two ticks and a bit: due moves to the next boundary
    driver.step()
    assert driver.due == pytest.approx(clock.monotonic() + 0.030)


@settings(max_examples=300, deadline=None)
@given(
    hz=st.sampled_from((10, 20, 25, 50)),
    phase_ms=st.integers(0, 999),
    lateness=st.lists(st.floats(0.0, 0.99), min_size=50, max_size=300),
)
def test_late_wakeups_do_not_drift(hz: int, phase_ms: int, lateness: list[float]) -> None:
    """Waking up late by up to one tick, every time, never loses a tick.

    A driver that scheduled "now + period" would fall behind by the lateness each tick and
    soon skip one; deadlines computed from tick numbers stay on the wall clock's grid.
    """
    driver, clock, seen = make(hz, FakeClock(EPOCH_MS + phase_ms))
    first = driver.current
    for late in lateness:
        clock.advance(round(driver.seconds_to_next() * 1000) + int(late * driver.tick_ms))
        assert driver.step() == 0
        assert driver.current == clock.wall_ms() // driver.tick_ms
    assert seen.ticks == list(range(first + 1, first + 1 + len(lateness)))
    assert seen.overruns == []
    assert driver.stats.overruns == 0


def test_a_wall_clock_step_does_not_move_ticks() -> None:
    driver, clock, seen = make(20, FakeClock(EPOCH_MS))
    first = driver.current
    clock.step_wall(-600_000)  # NTP steps the wall clock ten minutes back
    assert driver.now_tick() == first
    clock.advance(50)
    driver.step()
    assert seen.ticks == [first + 1]


# --- run() / stop(): the real event loop, the fake clock ----------------------------------


async def test_run_ticks_until_stopped() -> None:
    """on_tick moves the clock to the next boundary, so run() never has a delay to wait."""
    clock = FakeClock(EPOCH_MS)
    ticks: list[int] = []

    def on_tick(tick: int) -> None:
        ticks.append(tick)
        if len(ticks) == 10:
            driver.stop()
        else:
            clock.advance(driver.tick_ms)

    driver = TickDriver(20, on_tick, clock)
    first = driver.current
    clock.advance(driver.tick_ms)
    await asyncio.wait_for(driver.run(), timeout=5)
    assert ticks == list(range(first + 1, first + 11))
    assert (driver.stats.ticks, driver.stats.overruns) == (10, 0)


async def test_stop_interrupts_the_wait() -> None:
    """Half a second before the next tick, stop() ends run() within a few loop iterations."""
    clock = FakeClock(EPOCH_MS + 500)
    ticks: list[int] = []
    driver = TickDriver(1, ticks.append, clock)
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(0)
    assert not task.done()  # waiting for the next tick
    driver.stop()
    for _ in range(20):
        if task.done():
            break
        await asyncio.sleep(0)  # yields to the loop; no time passes
    else:
        task.cancel()
        pytest.fail("run() did not return after stop()")
    await task
    assert ticks == []


async def test_run_after_stop_returns_at_once() -> None:
    clock = FakeClock(EPOCH_MS)
    ticks: list[int] = []
    driver = TickDriver(20, ticks.append, clock)
    driver.stop()
    clock.advance(500)
    await asyncio.wait_for(driver.run(), timeout=5)
    assert ticks == []


def test_lateness_is_reported_per_tick() -> None:
    clock = FakeClock()
    late: list[float] = []
    driver = TickDriver(20, lambda tick: None, clock, on_late=late.append)
    clock.advance(50)  # exactly on the next boundary
    driver.step()
    clock.advance(50 + 12)  # 12 ms after the following one
    driver.step()
    clock.advance(30)  # still inside that tick: nothing runs, nothing is reported
    driver.step()
    assert late == [0.0, pytest.approx(0.012)]

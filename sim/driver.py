"""The tick driver: the only asyncio in ``sim``.

Ticks are numbered from the wall clock (``tick = unix_ms // tick_ms``) so a tick number
means the same moment across restarts and nodes, and cooldown deadlines keep running while
the server is down. Deadlines are computed from the tick number, never by adding the tick
period to "now", so lateness in one tick does not push every later tick back (no drift).
A tick that starts after the next deadline has passed skips the missed ticks and counts
them as overruns; ``on_tick`` is always called with the current tick, never a stale one.

``on_tick`` is synchronous on purpose: nothing may await (least of all Postgres) inside a
tick. The clock is injected so tests step time by hand instead of sleeping.

A busy event loop runs its timers late: one loop iteration can hold a thousand read
callbacks and task steps, tens of milliseconds. So besides :meth:`run`, whose timer starts
each tick, the server checks :attr:`TickDriver.due` on its request path and calls
:meth:`step` there once it has passed: a tick then starts within one message of its
deadline. Whichever comes first runs it; the other finds nothing to do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""


class SystemClock:
    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


def tick_ms_for(tick_hz: int) -> int:
    """Milliseconds per tick. Raises ValueError unless ``tick_hz`` divides 1000."""
    if tick_hz <= 0 or 1000 % tick_hz:
        raise ValueError(f"tick rate {tick_hz} Hz must divide 1000 (e.g. 10, 20, 25, 50)")
    return 1000 // tick_hz


class TickStats:
    __slots__ = ("overruns", "ticks")

    def __init__(self) -> None:
        self.ticks = 0
        self.overruns = 0


class TickDriver:
    """Calls ``on_tick(tick)`` once per tick until :meth:`stop`."""

    def __init__(
        self,
        tick_hz: int,
        on_tick: Callable[[int], None],
        clock: Clock | None = None,
        on_overrun: Callable[[int], None] | None = None,
        on_late: Callable[[float], None] | None = None,
    ) -> None:
        self.tick_ms = tick_ms_for(tick_hz)
        self.tick_hz = tick_hz
        self._on_tick = on_tick
        self._on_overrun = on_overrun
        # Called with how late each tick starts (seconds after its boundary): the event
        # loop's responsiveness, which a tick's own duration does not show.
        self._on_late = on_late
        self._clock: Clock = clock or SystemClock()
        # Fixed at construction: wall time at monotonic zero. Tick numbers then advance with
        # the monotonic clock, so a wall-clock step (NTP) cannot make ticks go backwards.
        self._wall_offset_ms = self._clock.wall_ms() - self._clock.monotonic() * 1000.0
        self._stopping = asyncio.Event()
        self.stats = TickStats()
        self.current = self.now_tick()
        self.due = self._due()
        """Seconds on the clock's monotonic scale when the next tick starts."""

    def now_tick(self) -> int:
        """The tick number for the present moment."""
        return int((self._clock.monotonic() * 1000.0 + self._wall_offset_ms) // self.tick_ms)

    def step(self) -> int:
        """Run one tick now if its deadline has passed; return the ticks it skipped.

        Exposed for tests that drive time by hand; :meth:`run` loops over it.
        """
        now_ms = self._clock.monotonic() * 1000.0 + self._wall_offset_ms
        now = int(now_ms // self.tick_ms)
        if now <= self.current:
            return 0
        if self._on_late is not None:
            self._on_late((now_ms - now * self.tick_ms) / 1000.0)
        skipped = now - self.current - 1
        if skipped:
            self.stats.overruns += skipped
            if self._on_overrun is not None:
                self._on_overrun(skipped)
        self.current = now
        self.due = self._due()
        self.stats.ticks += 1
        self._on_tick(now)
        return skipped

    def _due(self) -> float:
        return ((self.current + 1) * self.tick_ms - self._wall_offset_ms) / 1000.0

    def seconds_to_next(self) -> float:
        return max(0.0, self.due - self._clock.monotonic())

    async def run(self) -> None:
        while not self._stopping.is_set():
            delay = self.seconds_to_next()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    break
                except TimeoutError:
                    pass
            else:
                # Float rounding can put "now" a hair before the boundary the deadline says
                # has passed; yield so that case never spins the loop without letting I/O run.
                await asyncio.sleep(0)
            self.step()

    def stop(self) -> None:
        self._stopping.set()

"""A mergeable latency histogram with bounded relative error (HdrHistogram's layout, small).

Values are whole microseconds. Below ``2 * SUB`` each value has its own bucket; above, every
power of two is split into ``SUB`` linear sub-buckets, so a bucket is never wider than
1/``SUB`` of the values in it. A percentile is the nearest-rank one (the ``ceil(p * n)``-th
smallest sample) reported as the top of its bucket, clamped to the exact maximum: with
``SUB = 128`` it is never below the true value and less than 1/128 (0.8%) above it, and exact
below 256 µs. Memory is a few thousand counters whatever the run length, and workers merge by
adding counts, so the parent's percentiles cover every sample, not an average of averages.
"""

from __future__ import annotations

import math

import msgspec

SUB_BITS = 7
SUB = 1 << SUB_BITS
RELATIVE_ERROR = 1.0 / SUB
"""A reported percentile ``r`` of a true (nearest-rank) percentile ``v``: ``v <= r < v * (1 +
RELATIVE_ERROR)``, and ``r == v`` when ``v < 2 * SUB``."""


def bucket_of(value_us: int) -> int:
    """The bucket index of a non-negative value in microseconds."""
    shift = value_us.bit_length() - SUB_BITS - 1
    if shift <= 0:
        return value_us
    return shift * SUB + (value_us >> shift)


def bucket_top(index: int) -> int:
    """The largest value that falls into bucket ``index``."""
    if index < 2 * SUB:
        return index
    shift, sub = divmod(index, SUB)
    # index = shift*SUB + m with m in [SUB, 2*SUB): divmod gives (shift + 1, m - SUB).
    shift -= 1
    mantissa = sub + SUB
    return ((mantissa + 1) << shift) - 1


def nearest_rank(fraction: float, total: int) -> int:
    """The 1-based rank of the ``fraction`` percentile among ``total`` samples.

    ``ceil(fraction * total)``, rounded first so that float noise (``0.9 * 10`` may come out
    a hair above 9) does not move it up a rank; at least 1.
    """
    return max(1, math.ceil(round(fraction * total, 9)))


class LatencySummary(msgspec.Struct, frozen=True, kw_only=True):
    """Percentiles in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


class PercentilePoint(msgspec.Struct, frozen=True, array_like=True):
    """One point of a percentile distribution: ``[percentile, ms]`` on the wire."""

    percentile: float
    """In [0, 1]; 1 is the maximum."""
    ms: float


class LatencyHistogram(msgspec.Struct, kw_only=True):
    """Counts per bucket plus the exact count, sum and maximum."""

    counts: list[int] = msgspec.field(default_factory=list)
    total: int = 0
    sum_us: int = 0
    max_us: int = 0

    def record(self, seconds: float) -> None:
        self.record_us(int(seconds * 1_000_000.0) if seconds > 0.0 else 0)

    def record_us(self, value: int) -> None:
        index = bucket_of(value)
        counts = self.counts
        if index >= len(counts):
            counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
        self.total += 1
        self.sum_us += value
        self.max_us = max(self.max_us, value)

    def merge(self, other: LatencyHistogram) -> None:
        counts = self.counts
        if len(other.counts) > len(counts):
            counts.extend([0] * (len(other.counts) - len(counts)))
        for index, n in enumerate(other.counts):
            if n:
                counts[index] += n
        self.total += other.total
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile_us(self, fraction: float) -> int:
        """The ``fraction`` percentile (nearest rank), as the top of its bucket."""
        if not self.total:
            return 0
        rank = nearest_rank(fraction, self.total)
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(bucket_top(index), self.max_us)
        return self.max_us

    def summary(self) -> LatencySummary:
        return LatencySummary(
            count=self.total,
            mean_ms=_ms(self.sum_us / self.total) if self.total else 0.0,
            p50_ms=_ms(self.percentile_us(0.50)),
            p90_ms=_ms(self.percentile_us(0.90)),
            p99_ms=_ms(self.percentile_us(0.99)),
            p999_ms=_ms(self.percentile_us(0.999)),
            max_ms=_ms(self.max_us),
        )

    def distribution(self, ticks_per_half: int = 5) -> list[PercentilePoint]:
        """The percentile distribution as HdrHistogram prints it: ``ticks_per_half`` points
        between 0 and 50%, as many between 50% and 75%, 75% and 87.5%, ... (each step halves
        the distance to 100%), up to the resolution of the sample count, then the maximum.
        What a percentile plot (x: ``1 / (1 - percentile)`` on a log scale) is drawn from."""
        if not self.total:
            return []
        points: list[PercentilePoint] = []
        half = 0
        while True:
            base = 1.0 - 0.5**half
            step = 0.5 ** (half + 1) / ticks_per_half
            for tick in range(ticks_per_half):
                # Rounded so the JSON shows 0.3, not 0.30000000000000004 (12 digits keep
                # every tick distinct for any sample count a run can reach).
                fraction = round(base + tick * step, 12)
                points.append(PercentilePoint(fraction, _ms(self.percentile_us(fraction))))
            half += 1
            # Past 1 - 1/total every further percentile is the maximum: stop there.
            if 0.5**half < 1.0 / self.total:
                break
        points.append(PercentilePoint(1.0, _ms(self.max_us)))
        return points


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)

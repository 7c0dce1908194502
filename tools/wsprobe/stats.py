"""A mergeable latency histogram with bounded relative error (HdrHistogram's layout, small).

Values are whole microseconds. Below ``2 * SUB`` each value has its own bucket; above, every
power of two is split into ``SUB`` linear sub-buckets, so a bucket is never wider than
1/``SUB`` of the values in it: with ``SUB = 128`` a reported percentile is within 0.8% of the
true one (and never below it: a percentile reports the top of its bucket, clamped to the exact
maximum). Memory is a few thousand counters whatever the run length, and workers merge by
adding counts, so the parent's percentiles cover every sample, not an average of averages.
"""

from __future__ import annotations

import msgspec

SUB_BITS = 7
SUB = 1 << SUB_BITS


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


class LatencySummary(msgspec.Struct, frozen=True, kw_only=True):
    """Percentiles in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


class LatencyHistogram(msgspec.Struct, kw_only=True):
    """Counts per bucket plus the exact count, sum and maximum."""

    counts: list[int] = msgspec.field(default_factory=list)
    total: int = 0
    sum_us: int = 0
    max_us: int = 0

    def record(self, seconds: float) -> None:
        value = int(seconds * 1_000_000.0) if seconds > 0.0 else 0
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
            counts[index] += n
        self.total += other.total
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile_us(self, fraction: float) -> int:
        """The smallest bucket top at or below which ``fraction`` of the values lie."""
        if not self.total:
            return 0
        rank = max(1, int(fraction * self.total + 0.999999))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(bucket_top(index), self.max_us)
        return self.max_us

    def summary(self) -> LatencySummary:
        def ms(us: float) -> float:
            return round(us / 1000.0, 3)

        return LatencySummary(
            count=self.total,
            mean_ms=ms(self.sum_us / self.total) if self.total else 0.0,
            p50_ms=ms(self.percentile_us(0.50)),
            p90_ms=ms(self.percentile_us(0.90)),
            p99_ms=ms(self.percentile_us(0.99)),
            p999_ms=ms(self.percentile_us(0.999)),
            max_ms=ms(self.max_us),
        )

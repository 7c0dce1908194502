"""The load generator's latency histogram (``tools/wsprobe/stats.py``): buckets, merging and
percentiles against the exact percentiles of the same samples."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from tools.wsprobe.stats import (
    RELATIVE_ERROR,
    SUB,
    LatencyHistogram,
    bucket_of,
    bucket_top,
    nearest_rank,
)

# Latencies in µs: mostly small, some huge, so both the exact and the log-linear buckets get
# exercised, with runs of equal values (ties are where rank arithmetic goes wrong).
values_us = st.one_of(st.integers(0, 2 * SUB), st.integers(0, 50_000), st.integers(0, 60_000_000))
samples = st.lists(values_us, min_size=1, max_size=400)
# Percentiles as exact decimals: the reference rank is computed without floats.
percentiles = st.sampled_from(
    ["0", "0.001", "0.25", "0.5", "0.9", "0.95", "0.99", "0.999", "0.9999", "1"]
) | st.integers(0, 1000).map(lambda n: f"{n / 1000:g}")


def histogram_of(values: list[int]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.record_us(v)
    return h


def exact_percentile(values: list[int], p: str) -> int:
    """The nearest-rank percentile: the ceil(p * n)-th smallest sample (at least the first)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(p) * len(ordered)))
    return ordered[rank - 1]


# --- buckets -----------------------------------------------------------------------------------


@given(st.integers(0, 10**12))
def test_a_value_lies_in_its_bucket_and_the_bucket_is_narrow(value: int) -> None:
    top = bucket_top(bucket_of(value))
    assert top >= value
    if value < 2 * SUB:
        assert top == value  # exact below 2 * SUB
    else:
        assert (top - value) * SUB < value  # less than 1/SUB of the value above it


@given(st.integers(0, 10**6))
def test_bucket_top_and_bucket_of_round_trip_and_tile_the_line(index: int) -> None:
    top = bucket_top(index)
    assert bucket_of(top) == index
    assert bucket_of(top + 1) == index + 1  # no gap and no overlap between neighbours
    if index:
        assert bucket_top(index - 1) < top


@given(st.integers(0, 10**12))
def test_bucket_of_is_monotonic(value: int) -> None:
    assert bucket_of(value) <= bucket_of(value + 1) <= bucket_of(value) + 1


# --- merging -----------------------------------------------------------------------------------


@given(samples, samples)
def test_merging_two_histograms_equals_one_histogram_of_all_samples(
    a: list[int], b: list[int]
) -> None:
    merged = histogram_of(a)
    merged.merge(histogram_of(b))
    assert merged == histogram_of(a + b)


@given(samples)
def test_merging_into_an_empty_histogram_copies_it(values: list[int]) -> None:
    empty = LatencyHistogram()
    empty.merge(histogram_of(values))
    assert empty == histogram_of(values)


# --- percentiles -------------------------------------------------------------------------------


@given(samples, percentiles)
def test_a_percentile_is_within_the_documented_relative_error_of_the_exact_one(
    values: list[int], p: str
) -> None:
    exact = exact_percentile(values, p)
    reported = histogram_of(values).percentile_us(float(p))
    assert reported >= exact  # never optimistic
    if exact < 2 * SUB:
        assert reported == exact
    else:
        assert reported < exact * (1 + RELATIVE_ERROR)


@given(st.integers(1, 100_000), percentiles)
def test_nearest_rank_matches_exact_arithmetic(total: int, p: str) -> None:
    assert nearest_rank(float(p), total) == max(1, math.ceil(Fraction(p) * total))


@given(samples)
def test_the_summary_is_ordered_and_exact_at_the_ends(values: list[int]) -> None:
    summary = histogram_of(values).summary()
    assert summary.count == len(values)
    assert summary.max_ms == round(max(values) / 1000, 3)
    assert summary.p50_ms <= summary.p90_ms <= summary.p99_ms <= summary.p999_ms
    assert summary.p999_ms <= summary.max_ms
    assert summary.mean_ms == round(sum(values) / len(values) / 1000, 3)


@given(samples)
def test_the_distribution_rises_to_the_maximum(values: list[int]) -> None:
    h = histogram_of(values)
    points = h.distribution()
    fractions = [p.percentile for p in points]
    assert fractions == sorted(fractions)
    assert len(set(fractions)) == len(fractions)
    assert fractions[0] == 0.0
    assert points[-1].percentile == 1.0
    assert points[-1].ms == round(max(values) / 1000, 3)
    assert points[0].ms == round(h.percentile_us(0.0) / 1000, 3)
    assert [p.ms for p in points] == sorted(p.ms for p in points)
    # It resolves the tail as far as the sample count allows: 1 - 1/n is within one tick.
    assert 1.0 - fractions[-2] <= 2.0 / len(values)


def test_an_empty_histogram_reports_zeros() -> None:
    h = LatencyHistogram()
    assert h.percentile_us(0.99) == 0
    assert h.distribution() == []
    assert h.summary().count == 0


def test_record_takes_seconds_and_keeps_whole_microseconds() -> None:
    h = LatencyHistogram()
    h.record(0.0015)
    h.record(-0.001)  # a clock step backwards counts as zero, not as a negative latency
    assert h.max_us == 1500
    assert h.percentile_us(0.0) == 0
    assert h.sum_us == 1500

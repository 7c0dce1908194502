"""The event-loop metrics (server/metrics.py: ``LoopCounter``, ``LoopHistogram``) expose
exactly what prometheus_client's own Counter and Histogram expose for the same
observations: same series names, labels, bucket bounds, counts and sums."""

from __future__ import annotations

import gc
import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import GcPauses, LoopCounter, LoopHistogram

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0, 2.5)


def _series(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.endswith("_created"):  # prometheus_client's own extra series
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_loop_histogram_matches_prometheus_client() -> None:
    rng = random.Random(7)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop_h = LoopHistogram("req_seconds", "doc", "tag", BUCKETS, ours)
    ref_h = Histogram("req_seconds", "doc", ["tag"], buckets=BUCKETS, registry=theirs)
    # Bounds themselves (a bucket is "less than or equal"), values past the last bound,
    # zero, and random values.
    values = [*BUCKETS, 0.0, 3.0, 1e9] + [rng.expovariate(500.0) for _ in range(2000)]
    for i, value in enumerate(values):
        tag = ("ping", "equip", "move")[i % 3]
        loop_h.labels(tag).observe(value)
        ref_h.labels(tag).observe(value)
    mine, ref = _series(ours), _series(theirs)
    assert mine.keys() == ref.keys()
    for key, value in ref.items():
        assert abs(mine[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_loop_counter_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop_c = LoopCounter("msgs", "doc", "tag", ours)
    ref_c = Counter("msgs", "doc", ["tag"], registry=theirs)
    for i in range(100):
        tag = "a" if i % 3 else "b"
        loop_c.labels(tag).inc()
        ref_c.labels(tag).inc()
    loop_c.labels("c").inc(2.5)
    ref_c.labels("c").inc(2.5)
    assert _series(ours) == _series(theirs)


def test_gc_pauses_are_timed_by_generation() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("gc_pause", "doc", ["generation"], registry=registry)
    pauses = GcPauses(histogram)
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses)
    counts = {
        s.labels["generation"]: s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if s.name == "gc_pause_count"
    }
    assert counts.get("0", 0) >= 1
    assert counts.get("2", 0) >= 1

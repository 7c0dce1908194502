"""Token buckets with a hand-passed clock: per key, and bounded in the keys they remember."""

from __future__ import annotations

from server.ratelimit import KeyedBuckets


def test_each_key_has_its_own_bucket() -> None:
    buckets = KeyedBuckets(rate_per_s=1.0, burst=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0, 0, 1000]
    assert buckets.take("b", 0.0) == 0  # another address is not charged for "a"
    assert buckets.take("a", 1.0) == 0  # one token back after a second


def test_the_least_recently_used_key_is_forgotten_beyond_the_bound() -> None:
    buckets = KeyedBuckets(rate_per_s=0.001, burst=1, max_tracked=2)
    assert buckets.take("a", 0.0) == 0
    assert buckets.take("b", 0.0) == 0
    assert buckets.take("a", 0.0) > 0  # "a" is empty, and now the most recently used
    assert buckets.take("c", 0.0) == 0  # a third key: "b" is forgotten, not "a"
    assert buckets.take("a", 0.0) > 0
    assert buckets.take("b", 0.0) == 0  # forgotten: it starts full again

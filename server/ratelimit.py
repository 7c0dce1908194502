"""Token buckets: one per connection, and one per key (a client address) for limits kept
per node. Time is passed in, so tests need no clock."""

from __future__ import annotations

import collections


class TokenBucket:
    __slots__ = ("_last", "_rate", "_tokens", "burst", "refused_in_row")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self._rate = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last = now
        self.refused_in_row = 0

    def take(self, now: float) -> int:
        """Take one token. Returns 0 if allowed, else milliseconds until one is available."""
        tokens = min(self.burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            self.refused_in_row = 0
            return 0
        self._tokens = tokens
        self.refused_in_row += 1
        return max(1, int((1.0 - tokens) / self._rate * 1000.0 + 0.999))


class KeyedBuckets:
    """A token bucket per key (a client address), bounded in memory: beyond ``max_tracked``
    keys the least recently used is forgotten (it starts full again)."""

    def __init__(self, rate_per_s: float, burst: int, max_tracked: int = 10_000) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max = max_tracked
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def take(self, key: str, now: float) -> int:
        """Take one token for ``key``: 0 if allowed, else milliseconds until one is."""
        bucket = self._buckets.pop(key, None) or TokenBucket(self._rate, self._burst, now)
        self._buckets[key] = bucket
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return bucket.take(now)

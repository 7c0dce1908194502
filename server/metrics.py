"""Prometheus metrics, one registry per app so tests can run several servers in a process.

Label children for hot paths are cached (``labels()`` hashes its arguments on every call).
The three metrics touched for every message (received, sent, request duration) are
:class:`LoopCounter` and :class:`LoopHistogram`, not ``prometheus_client``'s: those take a
lock on every increment and find a histogram's bucket with a Python loop, which together
cost ~3 µs per request (py-spy, benchmarks/profile_server.py). Ours are plain numbers,
which is safe because they are only touched on the event loop's thread, where the
``/metrics`` endpoint also reads them. They expose the same series under the same names.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from protocol.base import ServerMessage, tag_of

_go_float: Callable[[float], str] = floatToGoString  # how prometheus_client prints a bound

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_TICK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class LoopCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= amount.
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


_Child = TypeVar("_Child", LoopCounterChild, LoopHistogramChild)


class _LoopFamily(Collector, Generic[_Child]):
    """A metric with one label, for the event loop's thread only (no lock): one child per
    label value, made on first use by ``new_child``."""

    def __init__(
        self,
        *,
        family: Callable[..., Metric],
        name: str,
        documentation: str,
        label: str,
        new_child: Callable[[], _Child],
        registry: CollectorRegistry,
    ) -> None:
        self._family, self._name, self._doc, self._label = family, name, documentation, label
        self._new_child: Callable[[], _Child] = new_child
        self._children: dict[str, _Child] = {}
        registry.register(self)

    def labels(self, value: str) -> _Child:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._new_child()
        return child

    def describe(self) -> Iterator[Metric]:
        yield self._family(self._name, self._doc, labels=[self._label])

    def collect(self) -> Iterator[Metric]:
        family = self._family(self._name, self._doc, labels=[self._label])
        for value, child in self._children.items():
            self._add(family, value, child)
        yield family

    def _add(self, family: Metric, value: str, child: _Child) -> None:
        raise NotImplementedError


class LoopCounter(_LoopFamily[LoopCounterChild]):
    """A counter with one label, for the event loop's thread only."""

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry):
        super().__init__(
            family=CounterMetricFamily,
            name=name,
            documentation=documentation,
            label=label,
            new_child=LoopCounterChild,
            registry=registry,
        )

    def _add(self, family: Metric, value: str, child: LoopCounterChild) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric([value], child.value)


class LoopHistogram(_LoopFamily[LoopHistogramChild]):
    """A histogram with one label, for the event loop's thread only."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ):
        bounds = self._bounds = tuple(sorted(buckets))
        super().__init__(
            family=HistogramMetricFamily,
            name=name,
            documentation=documentation,
            label=label,
            new_child=lambda: LoopHistogramChild(bounds),
            registry=registry,
        )

    def _add(self, family: Metric, value: str, child: LoopHistogramChild) -> None:
        assert isinstance(family, HistogramMetricFamily)
        cumulative, buckets = 0, []
        for bound, count in zip((*self._bounds, float("inf")), child.counts, strict=True):
            cumulative += count
            buckets.append((_go_float(bound), float(cumulative)))
        family.add_metric([value], buckets, child.sum)


class GcPauses:
    """A ``gc.callbacks`` entry timing every collection into a histogram by generation.

    A collection stops the event loop (and every thread) for its whole length: the pause a
    request or a tick sees. It may run on any thread that allocates (the password hashing
    pool too), hence prometheus_client's locked histogram; one collection runs at a time
    (the GIL), so one start time is enough."""

    def __init__(self, histogram: Histogram) -> None:
        self._children = {g: histogram.labels(str(g)) for g in (0, 1, 2)}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.connections = Gauge("gearhall_connections", "Open WebSocket connections", registry=r)
        self.connections_total = Counter(
            "gearhall_connections_accepted", "WebSocket connections accepted", registry=r
        )
        self.messages_in = LoopCounter(
            "gearhall_messages_received", "Client messages received", "tag", r
        )
        self.messages_out = LoopCounter(
            "gearhall_messages_sent", "Server messages queued for sending", "tag", r
        )
        self.request_latency = LoopHistogram(
            "gearhall_request_duration_seconds",
            "Time from decoding a request to queuing its reply",
            "tag",
            _LATENCY_BUCKETS,
            r,
        )
        self.errors = Counter("gearhall_errors", "Error replies sent", ["code"], registry=r)
        self.tick_duration = Histogram(
            "gearhall_tick_duration_seconds",
            "Time spent in one tick",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.tick_lateness = Histogram(
            "gearhall_tick_lateness_seconds",
            "How late each tick started after its boundary: event-loop responsiveness "
            "(a long callback, a collector pause), which tick durations do not show",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.tick_overruns = Counter(
            "gearhall_tick_overruns", "Ticks skipped because a tick ran late", registry=r
        )
        self.gc_pause = Histogram(
            "gearhall_gc_pause_seconds",
            "Collector pauses by generation: the whole process stops for each",
            ["generation"],
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.journal_batch_rows = Histogram(
            "gearhall_journal_batch_rows",
            "Effects per journal commit",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.journal_commit_latency = Histogram(
            "gearhall_journal_commit_duration_seconds",
            "Journal commit latency",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.journal_retries = Counter(
            "gearhall_journal_commit_retries", "Failed journal commits retried", registry=r
        )
        self.snapshot_duration = Histogram(
            "gearhall_snapshot_duration_seconds",
            "Time to write one batch of snapshots",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.slow_consumer_aborts = Counter(
            "gearhall_slow_consumer_aborts",
            "Connections aborted because the client did not read",
            registry=r,
        )
        self.rate_limited = Counter(
            "gearhall_rate_limited_messages", "Messages refused by the rate limit", registry=r
        )
        self.db_pool_in_use = Gauge(
            "gearhall_db_pool_connections_in_use", "Pool connections checked out", registry=r
        )
        self.players_online = Gauge("gearhall_players_loaded", "Players held in memory", registry=r)
        self.handshakes_refused = Counter(
            "gearhall_handshakes_refused",
            "Upgrades and POSTs refused by the per-IP abuse limits (server/abuse.py)",
            ["reason"],
            registry=r,
        )
        self.front_door_responses = Counter(
            "gearhall_front_door_responses",
            "HTTP answers of the front door: POST endpoints, preflights, refused requests",
            ["path", "status"],
            registry=r,
        )

        self._sent: dict[type[ServerMessage], LoopCounterChild] = {}

    def sent(self, msg_type: type[ServerMessage]) -> None:
        """Count one outbound message (label children cached: ``labels()`` is not free)."""
        child = self._sent.get(msg_type)
        if child is None:
            child = self._sent[msg_type] = self.messages_out.labels(tag_of(msg_type))
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

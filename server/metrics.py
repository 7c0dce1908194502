"""Prometheus metrics, one registry per app so tests can run several servers in a process.

Label children for hot paths are cached (``labels()`` hashes its arguments on every call).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from protocol.base import ServerMessage, tag_of

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_TICK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.connections = Gauge("gearhall_connections", "Open WebSocket connections", registry=r)
        self.connections_total = Counter(
            "gearhall_connections_accepted", "WebSocket connections accepted", registry=r
        )
        self.messages_in = Counter(
            "gearhall_messages_received", "Client messages received", ["tag"], registry=r
        )
        self.messages_out = Counter(
            "gearhall_messages_sent", "Server messages queued for sending", ["tag"], registry=r
        )
        self.request_latency = Histogram(
            "gearhall_request_duration_seconds",
            "Time from decoding a request to queuing its reply",
            ["tag"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
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

        self._sent: dict[type[ServerMessage], Counter] = {}

    def sent(self, msg_type: type[ServerMessage]) -> None:
        """Count one outbound message (label children cached: ``labels()`` is not free)."""
        child = self._sent.get(msg_type)
        if child is None:
            child = self._sent[msg_type] = self.messages_out.labels(tag_of(msg_type))
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

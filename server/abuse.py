"""Abuse limits answered before the upgrade: per client IP, per node.

A game server is cheap to knock over before a single message is decoded: every upgrade costs
a handshake and a session, every ``POST /auth/login`` a password hash. So before either,
:func:`server.handshake.route` and the front door (:mod:`server.front`) ask this module:

- **Origin.** A browser says where the page that opens the socket came from; a request with
  an ``Origin`` header not in ``allowed_origins`` is refused (403), so another site's page
  cannot use a player's browser against us. Game clients and launchers send no ``Origin``
  and are not affected.
- **Handshake rate.** A token bucket per IP (``handshakes_per_ip_per_s``,
  ``handshake_burst_per_ip``) for every upgrade attempt and every POST: 429 with
  ``Retry-After``.
- **Open sockets.** At most ``max_sockets_per_ip`` game connections per IP (429). The
  adapters count a connection from the moment its upgrade is accepted until it ends.
- **Who is the client.** The TCP peer, unless the peer is one of ``trusted_proxies``: then
  the rightmost address of ``X-Forwarded-For`` that is not a trusted proxy (the one the
  nearest untrusted hop connected from; anything left of it may be forged by the client).

Memory stays bounded whatever the traffic: a socket count is removed at zero, and buckets
are kept in least-recently-used order, so the idle ones (refilled to the burst: dropping
them changes nothing) are at the front and dropped as the next handshake passes; past
``max_tracked`` IPs (an attack from very many addresses) the least recently used goes.
The limits are per node; a cluster-wide limit is the load balancer's job.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType

from server.config import ConfigError, Settings
from server.ratelimit import TokenBucket

MAX_TRACKED_IPS = 100_000
"""Handshake buckets kept at most (about 150 bytes each)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused before it is served."""

    status: HTTPStatus
    reason: str
    """The ``reason`` label of ``gearhall_handshakes_refused_total``."""
    message: str
    retry_after_s: int | None = None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_s is None:
            return ()
        return (("Retry-After", str(self.retry_after_s)),)


_ORIGIN = Refusal(HTTPStatus.FORBIDDEN, "origin", "origin not allowed")
_SOCKETS = Refusal(
    HTTPStatus.TOO_MANY_REQUESTS, "sockets", "too many connections from this address"
)


def normalise_ip(text: str) -> str | None:
    """The canonical text of an IP address (an IPv4-mapped IPv6 address as IPv4), or None
    if ``text`` is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class IpLimits:
    """The per-IP state of one node (owned by :class:`server.app.App`)."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED_IPS,
    ) -> None:
        """
        Raises:
            ConfigError: an entry of ``trusted_proxies`` is not an IP address.
        """
        trusted = set()
        for proxy in settings.trusted_proxies:
            ip = normalise_ip(proxy)
            if ip is None:
                raise ConfigError(f"trusted_proxies: {proxy!r} is not an IP address")
            trusted.add(ip)
        self._trusted = frozenset(trusted)
        self._origins = frozenset(settings.allowed_origins)
        self._max_sockets = settings.max_sockets_per_ip
        self._rate = settings.handshakes_per_ip_per_s
        self._burst = settings.handshake_burst_per_ip
        # A bucket untouched this long is full again: dropping it loses nothing.
        self._idle_s = self._burst / self._rate
        self._clock = clock
        self._max_tracked = max_tracked
        # ip -> (last use, bucket), least recently used first (a dict keeps insertion order)
        self._buckets: dict[str, tuple[float, TokenBucket]] = {}
        self._sockets: dict[str, int] = {}

    # --- who ---------------------------------------------------------------------------------

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: ``peer``, or from ``X-Forwarded-For`` if ``peer`` is a
        trusted proxy. A chain with something that is not an address in it is not read."""
        peer_ip = normalise_ip(peer) or peer
        if forwarded_for is None or peer_ip not in self._trusted:
            return peer_ip
        client = peer_ip
        for hop in reversed(forwarded_for.split(",")):
            ip = normalise_ip(hop)
            if ip is None:
                return peer_ip
            client = ip
            if ip not in self._trusted:
                break
        return client

    # --- origin ------------------------------------------------------------------------------

    def origin_allowed(self, origin: str) -> bool:
        return origin in self._origins

    def origin_refusal(self, origin: str | None) -> Refusal | None:
        """403 for an ``Origin`` that is not allowed; None without one."""
        if origin is None or origin in self._origins:
            return None
        return _ORIGIN

    # --- handshake rate ----------------------------------------------------------------------

    def rate_refusal(self, ip: str) -> Refusal | None:
        """Take a handshake token for ``ip``: None, or 429 with the seconds until one is
        available."""
        now = self._clock()
        buckets = self._buckets
        while buckets:  # idle buckets are the least recently used: at the front
            oldest = next(iter(buckets))
            if now - buckets[oldest][0] < self._idle_s:
                break
            del buckets[oldest]
        entry = buckets.pop(ip, None)
        bucket = TokenBucket(self._rate, self._burst, now) if entry is None else entry[1]
        wait_ms = bucket.take(now)
        buckets[ip] = (now, bucket)
        if len(buckets) > self._max_tracked:
            del buckets[next(iter(buckets))]
        if not wait_ms:
            return None
        return Refusal(
            HTTPStatus.TOO_MANY_REQUESTS,
            "rate",
            "too many handshakes from this address",
            retry_after_s=math.ceil(wait_ms / 1000),
        )

    @property
    def tracked_ips(self) -> int:
        """How many handshake buckets are held."""
        return len(self._buckets)

    # --- open sockets ------------------------------------------------------------------------

    def socket_refusal(self, ip: str) -> Refusal | None:
        """429 if ``ip`` already has ``max_sockets_per_ip`` game connections."""
        if self._sockets.get(ip, 0) >= self._max_sockets:
            return _SOCKETS
        return None

    def socket_opened(self, ip: str) -> None:
        self._sockets[ip] = self._sockets.get(ip, 0) + 1

    def socket_closed(self, ip: str) -> None:
        """
        Raises:
            KeyError: ``ip`` has no open socket (an adapter closed one it never opened).
        """
        left = self._sockets[ip] - 1
        if left:
            self._sockets[ip] = left
        else:
            del self._sockets[ip]

    @property
    def open_sockets(self) -> Mapping[str, int]:
        """Game connections per IP, IPs with none left out (read-only view)."""
        return MappingProxyType(self._sockets)

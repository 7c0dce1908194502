"""The front door of the game port (server/front.py) and the per-IP abuse limits
(server/abuse.py), on both transports, over real sockets.

POSTs go to a fake route registered on the running app (``/test/echo``), so these tests
depend on the front door only, not on the account handlers. Conditions the client cannot
observe as an event (the server noticing a closed socket) are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import msgspec
import pytest
import trustme
import uvloop
from websockets.asyncio.client import connect
from websockets.datastructures import HeadersLike
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from server import front
from server.abuse import IpLimits
from server.app import App
from server.config import ConfigError, Settings, load_settings
from server.http import HttpRequest, HttpResponse
from tests.support.client import JSON, Client
from tests.support.http import http_get
from tests.support.serving import serving

DEADLINE_S = 10.0
ECHO = "/test/echo"
ALLOWED = "https://play.example"
FOREIGN = "https://evil.example"


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> object:
        return msgspec.json.decode(self.body)


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


async def exchange(port: int, data: bytes, tls: ssl.SSLContext | None = None) -> Answer:
    """Send ``data`` and read the answer until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            raw = await reader.read()
    finally:
        writer.close()
    return parse(raw)


def post_request(
    path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def ws_url(app: App) -> str:
    return f"ws://127.0.0.1:{app.port}/"


async def upgrade_status(
    url: str,
    origin: str | None = None,
    headers: HeadersLike | None = None,
    subprotocol: str = JSON,
) -> tuple[int, dict[str, str]]:
    """Try an upgrade offering ``subprotocol``: 101, or the refusal's status and headers."""
    try:
        ws = await connect(
            url,
            subprotocols=[Subprotocol(subprotocol)],
            origin=Origin(origin) if origin else None,
            additional_headers=headers,
        )
    except InvalidStatus as exc:
        return exc.response.status_code, {k.lower(): v for k, v in exc.response.headers.items()}
    await ws.close()
    return 101, {}


async def player(url: str, name: str, **kwargs: object) -> Client:
    """A connected client with a session."""
    client = await Client.open(url, JSON, **kwargs)
    welcome = await client.hello(name)
    assert welcome["t"] == "session.welcome", welcome
    return client


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds or the deadline passes: the server learns that a
    client closed in its own connection_lost callback, which no client sees happen."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)  # polling: see above


def refused(app: App, reason: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "gearhall_handshakes_refused_total", {"reason": reason}
    )
    return value or 0.0


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def calls(app: App) -> list[HttpRequest]:
    """Requests that reached the fake POST route ``/test/echo`` on ``app``."""
    return echo_route(app)


def echo_route(app: App) -> list[HttpRequest]:
    seen: list[HttpRequest] = []

    async def echo(app: App, request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(HTTPStatus.OK, request.body, headers=(("X-Echo", "yes"),))

    app.post_routes[ECHO] = echo
    return seen


@pytest.fixture
def limits(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with an Origin allow-list."""
    return lambda **kw: make_settings(allowed_origins=[ALLOWED], **kw)


# --- POST ----------------------------------------------------------------------------------


async def test_a_post_with_a_json_body_gets_the_handlers_answer(
    app: App, calls: list[HttpRequest]
) -> None:
    body = b'{"name": "alice", "password": "hunter22"}'
    answer = await exchange(app.port, post_request(f"{ECHO}?x=1", body, {"X-Custom": "a"}))
    assert answer.status == 200
    assert answer.body == body
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-echo"] == "yes"
    assert "access-control-allow-origin" not in answer.headers  # no Origin, no CORS
    [request] = calls
    assert (request.method, request.path, request.body) == ("POST", ECHO, body)
    assert request.headers["x-custom"] == "a"
    assert request.headers["content-type"] == "application/json"
    assert request.remote_ip == "127.0.0.1"
    assert app.metrics.registry.get_sample_value(
        "gearhall_front_door_responses_total", {"path": ECHO, "status": "200"}
    )


async def test_the_post_leaves_no_error_in_the_logs(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(make_settings()) as app:
        calls = echo_route(app)
        for _ in range(3):
            answer = await exchange(app.port, post_request(ECHO, b"{}"))
            assert answer.status == 200
    # stopped: websockets' opening-handshake task of each POST connection has ended
    assert len(calls) == 3
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING and "dev auth" not in r.msg]
    assert loud == []


async def test_a_body_over_the_limit_is_413_and_never_reaches_the_handler(
    app: App, calls: list[HttpRequest]
) -> None:
    limit = app.settings.http_body_max_bytes
    answer = await exchange(app.port, post_request(ECHO, b"x" * (limit + 1)))
    assert answer.status == 413
    assert answer.json() == {
        "code": "bad_request",
        "message": f"body larger than {limit} bytes",
        "details": {},
    }
    head = post_request(ECHO, b"")
    head = head.replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    answer = await exchange(app.port, head + chunked(b"x" * limit, b"y"))
    assert answer.status == 413
    assert calls == []
    exact = await exchange(app.port, post_request(ECHO, b"x" * limit))
    assert exact.status == 200
    assert len(calls) == 1


async def test_a_chunked_body_is_read_whole(app: App, calls: list[HttpRequest]) -> None:
    head = post_request(ECHO, b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    answer = await exchange(app.port, head + chunked(b'{"a": ', b'"b"', b"}"))
    assert answer.status == 200
    assert answer.body == b'{"a": "b"}'
    assert calls[0].body == b'{"a": "b"}'


async def test_expect_100_continue_gets_a_go_ahead_before_the_body(
    app: App, calls: list[HttpRequest]
) -> None:
    body = b'{"big": true}'
    head = post_request(ECHO, b"", {"Expect": "100-continue"})
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(head)
        async with asyncio.timeout(DEADLINE_S):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)
            answer = parse(await reader.read())
    finally:
        writer.close()
    assert answer.status == 200
    assert answer.body == body


async def test_unknown_path_is_404_and_other_methods_are_405(
    app: App, calls: list[HttpRequest]
) -> None:
    answer = await exchange(app.port, post_request("/test/nothing", b"{}"))
    assert answer.status == 404
    assert answer.json() == {"code": "not_found", "message": "no such endpoint", "details": {}}
    answer = await exchange(app.port, post_request(ECHO, b"{}", method="PUT"))
    assert answer.status == 405
    assert answer.headers["allow"] == "POST, OPTIONS"
    answer = await exchange(app.port, post_request("/healthz", b"", method="DELETE"))
    assert answer.status == 405
    assert answer.headers["allow"] == "GET"
    assert calls == []
    # GET is still the WebSocket library's: health answers as before
    assert await http_get(app.port, "/healthz") == (200, "ok\n")


async def test_a_malformed_or_oversized_head_is_refused(app: App) -> None:
    answer = await exchange(app.port, b"GARBAGE\r\n\r\n")
    assert answer.status == 400
    assert answer.json() == {"code": "bad_request", "message": "malformed request", "details": {}}
    answer = await exchange(app.port, b"POST /test/echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert answer.status == 400  # HTTP/1.1 without Host
    padding = b"X-Padding: " + b"a" * (front.MAX_HEAD_BYTES + 1) + b"\r\n"
    answer = await exchange(app.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + padding + b"\r\n")
    assert answer.status == 431


async def test_a_handler_that_raises_is_500_and_logged(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(app: App, request: HttpRequest) -> HttpResponse:
        raise RuntimeError("database on fire")

    app.post_routes["/test/broken"] = broken
    answer = await exchange(app.port, post_request("/test/broken", b"{}"))
    assert answer.status == 500
    assert answer.json() == {"code": "internal", "message": "internal error", "details": {}}
    assert b"fire" not in answer.body
    [record] = [r for r in caplog.records if r.name == "gearhall.front"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and "database on fire" in str(record.exc_info[1])
    # the server goes on
    assert await http_get(app.port, "/healthz") == (200, "ok\n")


async def test_a_slow_request_is_408_and_a_slow_handler_503(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "REQUEST_TIMEOUT_S", 0.2)
    monkeypatch.setattr(front, "HANDLER_TIMEOUT_S", 0.2)
    never = asyncio.Event()

    async def stuck(app: App, request: HttpRequest) -> HttpResponse:
        await never.wait()
        raise AssertionError("unreachable")

    app.post_routes["/test/stuck"] = stuck
    request = post_request("/test/stuck", b'{"slow": 1}')
    answer = await exchange(app.port, request[:-3])  # the body is never complete
    assert answer.status == 408
    answer = await exchange(app.port, request[:20])  # nor is the head
    assert answer.status == 408
    answer = await exchange(app.port, request)
    assert answer.status == 503
    assert answer.json() == {"code": "unavailable", "message": "timed out", "details": {}}
    assert app.in_flight == 0


# --- Origin and CORS -----------------------------------------------------------------------


async def test_cors_preflight_and_post_from_an_allowed_origin(
    limits: Callable[..., Settings],
) -> None:
    async with serving(limits()) as app:
        calls = echo_route(app)
        preflight = post_request(ECHO, b"", {"Origin": ALLOWED}, method="OPTIONS")
        answer = await exchange(app.port, preflight)
        assert answer.status == 204
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert answer.headers["access-control-allow-methods"] == "POST"
        assert answer.headers["access-control-allow-headers"] == "Content-Type, Authorization"
        assert answer.headers["vary"] == "Origin"
        assert answer.body == b""
        answer = await exchange(app.port, post_request(ECHO, b"{}", {"Origin": ALLOWED}))
        assert answer.status == 200
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert answer.headers["vary"] == "Origin"
        assert len(calls) == 1
        # a foreign origin is refused, preflight or not
        preflight = post_request(ECHO, b"", {"Origin": FOREIGN}, method="OPTIONS")
        answer = await exchange(app.port, preflight)
        assert answer.status == 403
        assert "access-control-allow-origin" not in answer.headers
        answer = await exchange(app.port, post_request(ECHO, b"{}", {"Origin": FOREIGN}))
        assert answer.status == 403
        assert answer.json() == {
            "code": "forbidden",
            "message": "origin not allowed",
            "details": {},
        }
        assert len(calls) == 1
        assert refused(app, "origin") == 2


async def test_an_upgrade_from_a_foreign_origin_is_403_and_makes_no_session(
    limits: Callable[..., Settings],
) -> None:
    async with serving(limits()) as app:
        status, _ = await upgrade_status(ws_url(app), origin=FOREIGN)
        assert status == 403
        assert app.sessions == set()
        assert app.metrics.registry.get_sample_value("gearhall_connections_accepted_total") == 0
        assert refused(app, "origin") == 1
        assert app.ip_limits.open_sockets == {}
        # health is exempt from the Origin rule
        status, _ = await upgrade_status(f"{ws_url(app)}healthz", origin=FOREIGN)
        assert status == 200
        # an allowed origin, and no origin at all, get in
        allowed = await player(ws_url(app), "browser", origin=Origin(ALLOWED))
        launcher = await player(ws_url(app), "launcher")
        assert len(app.sessions) == 2
        await allowed.close()
        await launcher.close()


# --- handshake rate and sockets per IP -----------------------------------------------------


async def test_the_handshake_burst_runs_out_with_429_and_retry_after(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(handshakes_per_ip_per_s=0.01, handshake_burst_per_ip=3)
    async with serving(settings) as app:
        calls = echo_route(app)
        assert await upgrade_status(ws_url(app)) == (101, {})
        assert await upgrade_status(ws_url(app)) == (101, {})
        answer = await exchange(app.port, post_request(ECHO, b"{}"))  # POSTs share the bucket
        assert answer.status == 200
        status, headers = await upgrade_status(ws_url(app))
        assert status == 429
        retry_after = int(headers["retry-after"])
        assert 1 <= retry_after <= 100  # one token at 0.01/s
        answer = await exchange(app.port, post_request(ECHO, b"{}"))
        assert answer.status == 429
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json() == {
            "code": "rate_limited",
            "message": "too many handshakes from this address",
            "details": {},
        }
        assert len(calls) == 1
        assert refused(app, "rate") == 2
        # probes and scrapes are never counted
        for _ in range(5):
            assert (await http_get(app.port, "/healthz"))[0] == 200
            assert (await http_get(app.port, "/metrics"))[0] == 200


async def test_the_socket_cap_per_ip_refuses_one_more_until_one_closes(
    make_settings: Callable[..., Settings],
) -> None:
    async with serving(make_settings(max_sockets_per_ip=3)) as app:
        url = ws_url(app)
        clients = [await player(url, f"cap{i}") for i in range(3)]
        assert app.ip_limits.open_sockets == {"127.0.0.1": 3}
        status, _ = await upgrade_status(url)
        assert status == 429
        assert refused(app, "sockets") == 1
        assert app.ip_limits.open_sockets == {"127.0.0.1": 3}
        await clients.pop().close()
        await until(lambda: app.ip_limits.open_sockets == {"127.0.0.1": 2}, "a socket freed")
        clients.append(await player(url, "cap3"))
        assert app.ip_limits.open_sockets == {"127.0.0.1": 3}
        for client in clients:
            await client.close()
        await until(lambda: app.ip_limits.open_sockets == {}, "every socket freed")


async def test_socket_counts_return_to_zero_whatever_ends_the_connection(
    app: App, calls: list[HttpRequest]
) -> None:
    url = ws_url(app)
    closed = await player(url, "closes")
    aborted = await player(url, "aborts")
    assert app.ip_limits.open_sockets == {"127.0.0.1": 2}
    # accepted by route but refused by the library (no Sec-WebSocket-Key): not left counted
    no_key = (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {JSON}\r\n\r\n"
    )
    answer = await exchange(app.port, no_key.encode())
    assert answer.status == 400
    assert (await upgrade_status(url, subprotocol="chat.v2"))[0] == 400
    assert (await exchange(app.port, post_request(ECHO, b"{}"))).status == 200
    await closed.close()
    aborted.ws.transport.abort()
    await until(lambda: app.ip_limits.open_sockets == {}, "every socket freed")
    await until(lambda: not app.sessions, "every session finished")


# --- X-Forwarded-For -----------------------------------------------------------------------


async def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        trusted_proxies=["127.0.0.1"], handshakes_per_ip_per_s=0.01, handshake_burst_per_ip=1
    )
    async with serving(settings) as app:
        calls = echo_route(app)
        url = ws_url(app)
        # the rightmost address that is not a trusted proxy; left of it may be forged
        chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 127.0.0.1"}
        assert (await exchange(app.port, post_request(ECHO, b"{}", chain))).status == 200
        assert calls[-1].remote_ip == "203.0.113.9"
        # each forwarded client has its own bucket and its own sockets
        first = await player(url, "xff1", additional_headers={"X-Forwarded-For": "203.0.113.7"})
        assert app.ip_limits.open_sockets == {"203.0.113.7": 1}
        status, _ = await upgrade_status(url, headers={"X-Forwarded-For": "203.0.113.7"})
        assert status == 429
        second = await player(url, "xff2", additional_headers={"X-Forwarded-For": "203.0.113.8"})
        assert app.ip_limits.open_sockets == {"203.0.113.7": 1, "203.0.113.8": 1}
        await first.close()
        await second.close()
        await until(lambda: app.ip_limits.open_sockets == {}, "every socket freed")


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    app: App, calls: list[HttpRequest]
) -> None:
    forged = {"X-Forwarded-For": "203.0.113.9"}
    assert (await exchange(app.port, post_request(ECHO, b"{}", forged))).status == 200
    assert calls[-1].remote_ip == "127.0.0.1"
    client = await player(ws_url(app), "forger", additional_headers=forged)
    assert app.ip_limits.open_sockets == {"127.0.0.1": 1}
    await client.close()


# --- the handover --------------------------------------------------------------------------


async def test_a_large_upgrade_head_is_handed_over_whole(app: App) -> None:
    # larger than picows' first read buffer, so it is fed in several parts
    client = await player(ws_url(app), "padded", additional_headers={"X-Padding": "p" * 8000})
    pong = await client.request("ping")
    assert pong["t"] == "pong"
    await client.close()


async def test_bytes_after_the_upgrade_head_reach_the_websocket(
    make_settings: Callable[..., Settings],
) -> None:
    async with serving(make_settings(echo_endpoint=True)) as app:
        head = (
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        frame = bytes([0x81, 0x80 | 5]) + b"\0\0\0\0" + b"hello"  # masked with a zero key
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            writer.write(head + frame)  # in one write: the frame arrives with the head
            async with asyncio.timeout(DEADLINE_S):
                response = await reader.readuntil(b"\r\n\r\n")
                echoed = await reader.readexactly(7)
        finally:
            writer.close()
        assert response.startswith(b"HTTP/1.1 101 ")
        assert echoed == bytes([0x81, 5]) + b"hello"


async def test_the_handover_on_uvloop(make_settings: Callable[..., Settings]) -> None:
    """``gearhall serve`` runs on uvloop, whose sockets choose how they read (into a copy or
    into the protocol's buffer) when reading starts: after picows' protocol replaces the
    front door, bytes must reach it. The server runs on its own uvloop in a thread."""

    async def scenario(settings: Settings) -> None:
        async with serving(settings) as app:
            calls = echo_route(app)
            answer = await exchange(app.port, post_request(ECHO, b'{"uv": 1}'))
            assert (answer.status, answer.body) == (200, b'{"uv": 1}')
            assert len(calls) == 1
            padding = {"X-Padding": "p" * 8000}
            client = await player(ws_url(app), "uv", additional_headers=padding)
            for _ in range(20):  # frames that arrive after the switch
                assert (await client.request("ping"))["t"] == "pong"
            await client.close()

    async with asyncio.timeout(60):
        await asyncio.to_thread(uvloop.run, scenario(make_settings()))


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> Iterator[tuple[Path, Path, ssl.SSLContext]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    yield cert_file, key_file, client


async def test_posts_and_upgrades_over_tls(
    make_settings: Callable[..., Settings],
    certificate: tuple[Path, Path, ssl.SSLContext],
) -> None:
    cert_file, key_file, client_tls = certificate
    settings = make_settings(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    async with serving(settings) as app:
        calls = echo_route(app)
        answer = await exchange(app.port, post_request(ECHO, b'{"tls": 1}'), tls=client_tls)
        assert answer.status == 200
        assert answer.body == b'{"tls": 1}'
        assert len(calls) == 1
        client = await player(f"wss://127.0.0.1:{app.port}/", "secure", ssl=client_tls)
        pong = await client.request("ping")
        assert pong["t"] == "pong"
        await client.close()
        await until(lambda: app.ip_limits.open_sockets == {}, "the socket freed")


# --- IpLimits on its own (no server) -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ip_limits(clock: Clock | None = None, max_tracked: int = 100, **settings: object) -> IpLimits:
    return IpLimits(
        load_settings(settings, environ={}), clock=clock or Clock(), max_tracked=max_tracked
    )


def test_the_client_ip_comes_from_x_forwarded_for_only_behind_a_trusted_proxy() -> None:
    limits = ip_limits(trusted_proxies=["10.0.0.1", "10.0.0.2"])
    assert limits.client_ip("192.0.2.1", "203.0.113.9") == "192.0.2.1"  # untrusted peer
    assert limits.client_ip("10.0.0.1", None) == "10.0.0.1"
    assert limits.client_ip("10.0.0.1", "1.1.1.1, 203.0.113.9") == "203.0.113.9"
    assert limits.client_ip("10.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.2") == "203.0.113.9"
    assert limits.client_ip("10.0.0.1", "10.0.0.2") == "10.0.0.2"  # all trusted: leftmost
    assert limits.client_ip("10.0.0.1", "203.0.113.9, junk") == "10.0.0.1"  # unreadable
    assert limits.client_ip("10.0.0.1", "") == "10.0.0.1"
    assert limits.client_ip("::ffff:10.0.0.1", " 2001:DB8::1 ") == "2001:db8::1"
    with pytest.raises(ConfigError, match="trusted_proxies"):
        ip_limits(trusted_proxies=["proxy.internal"])


def test_the_handshake_bucket_refills_and_retry_after_says_when() -> None:
    clock = Clock()
    limits = ip_limits(clock, handshakes_per_ip_per_s=0.5, handshake_burst_per_ip=2)
    assert limits.rate_refusal("a") is None
    assert limits.rate_refusal("a") is None
    refusal = limits.rate_refusal("a")
    assert refusal is not None
    assert (refusal.status, refusal.reason, refusal.retry_after_s) == (429, "rate", 2)
    assert refusal.headers == (("Retry-After", "2"),)
    assert limits.rate_refusal("b") is None  # per IP
    clock.now += 2.0
    assert limits.rate_refusal("a") is None


def test_idle_buckets_are_dropped_and_the_number_kept_is_capped() -> None:
    clock = Clock()
    limits = ip_limits(clock, 3, handshakes_per_ip_per_s=1.0, handshake_burst_per_ip=2)
    for ip in ("a", "b", "c", "d", "e"):
        limits.rate_refusal(ip)
    assert limits.tracked_ips == 3  # the least recently used went
    clock.now += 1.0
    limits.rate_refusal("f")
    assert limits.tracked_ips == 3
    clock.now += 1.5  # d and e idle for burst / rate (2 s): full again
    limits.rate_refusal("g")
    assert limits.tracked_ips == 2  # f (not yet idle) and g


def test_socket_counts_and_the_cap() -> None:
    limits = ip_limits(max_sockets_per_ip=2)
    limits.socket_opened("a")
    assert limits.socket_refusal("a") is None
    limits.socket_opened("a")
    refusal = limits.socket_refusal("a")
    assert refusal is not None and (refusal.status, refusal.reason) == (429, "sockets")
    assert refusal.headers == ()
    limits.socket_closed("a")
    limits.socket_closed("a")
    assert limits.open_sockets == {}
    with pytest.raises(KeyError):
        limits.socket_closed("a")
    assert limits.origin_refusal(None) is None
    assert limits.origin_refusal("https://anywhere.example") is not None  # empty allow-list

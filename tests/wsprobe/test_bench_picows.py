"""``wsprobe bench --engine picows``: the same checks as test_bench.py, against a real server
on both of its transports, and the frame-level cases a Gearhall server never produces
(fragmented replies, a server's close, a protocol violation) against a stand-in, with both
engines, which must count them alike.

As in test_bench.py nothing here measures performance: counts, proportions and the
open-loop schedule are what must come out exactly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from protocol import SUBPROTOCOL_JSON
from server.app import App
from server.config import Settings
from tests.support import standin
from tests.support.proc import free_port
from tests.support.transports import TRANSPORTS
from tests.support.wsprobe import Result, run_wsprobe
from tests.wsprobe.test_bench import (
    EVERY_KIND,
    SHORT,
    assert_percentiles_ordered,
    progress_lines,
    scheduled,
    wrr_slack,
)
from tools.wsprobe.bench_report import ENGINES
from tools.wsprobe.plans import parse_mix

PICOWS = ("--engine", "picows")


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every real-server test here runs against both server transports."""
    name: str = request.param
    return name


@asynccontextmanager
async def _server(settings: Settings) -> AsyncIterator[App]:
    server = App(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def fast_url(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """A server whose per-connection rate limit a closed loop cannot reach."""
    async with _server(make_settings(rate_limit_per_s=1e6, rate_limit_burst=1_000_000)) as app:
        yield f"ws://127.0.0.1:{app.port}/"


async def bench(url: str, *args: str) -> tuple[Result, dict[str, Any]]:
    """``wsprobe bench URL --engine picows ARGS``; the result and its JSON report."""
    result = await run_wsprobe("bench", url, *PICOWS, *args)
    report = json.loads(result.out) if result.code == 0 else {}
    return result, report


# --- against a real server ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_a_closed_loop_mix(fast_url: str, encoding: str) -> None:
    mix = "equip:3,move:2,stack:1,ping:2"
    extra = ["--msgpack"] if encoding == "msgpack" else []
    result, report = await bench(
        fast_url, "--clients", "4", "--processes", "2", "--mix", mix, *SHORT, *extra
    )
    assert result.code == 0, result
    assert report["config"]["engine"] == "picows"
    assert report["config"]["connect"]["encoding"] == encoding
    assert report["mode"] == "closed"
    assert report["errors"] == {}, result
    assert report["ops"] > 0
    assert sum(report["ops_by_kind"].values()) == report["ops"]
    weights: dict[str, int] = dict(parse_mix(mix))
    for kind, slack in wrr_slack(mix).items():
        expected = report["ops"] * weights[kind] / sum(weights.values())
        assert abs(report["ops_by_kind"][kind] - expected) <= 4 * slack + 1e-9, (kind, report)
    assert_percentiles_ordered(report["latency"])
    assert report["latency"]["count"] == report["ops"]
    assert report["service_latency"] is None
    assert [w["connected"] for w in report["workers"]] == [2, 2]
    assert (report["connected"], report["connect_error"]) == (4, None)
    assert all(w["cpu_pct_of_core"] > 0 for w in report["workers"])
    assert [p["t_s"] for p in report["timeline"]] == [1.0, 1.5]
    assert sum(p["ops"] for p in report["timeline"]) == report["ops"]
    assert len(progress_lines(result.err)) == 2, result.err
    assert f"{encoding} on picows" in result.err
    assert "errors: none" in result.err


async def test_an_open_loop_sends_exactly_what_its_schedule_says(fast_url: str) -> None:
    result, report = await bench(
        fast_url, "--clients", "3", "--processes", "2", "--rate", "90", "--mix", EVERY_KIND,
        "--warmup", "0.5", "--duration", "1.25", "--msgpack",
    )  # fmt: skip
    assert result.code == 0, result
    assert report["mode"] == "open"
    assert report["scheduled"] == scheduled(90.0, 3, 2, 0.5, 1.25) == 112
    assert report["ops"] + report["error_count"] == 112, report
    assert report["errors"] == {}, result
    assert set(report["ops_by_kind"]) == set(parse_mix(EVERY_KIND))
    assert_percentiles_ordered(report["latency"])
    assert_percentiles_ordered(report["service_latency"])
    assert report["service_latency"]["count"] == report["ops"]


async def test_error_replies_are_counted_by_code(make_settings: Callable[..., Settings]) -> None:
    async with _server(make_settings(rate_limit_per_s=20.0, rate_limit_burst=20)) as app:
        result, report = await bench(
            f"ws://127.0.0.1:{app.port}/", "--clients", "2", "--processes", "2",
            "--rate", "200", "--mix", "ping", "--warmup", "0.5", "--duration", "1",
        )  # fmt: skip
    assert result.code == 0, result
    assert report["errors"].get("rate_limited", 0) > 0, report
    assert report["ops"] > 0
    assert set(report["errors"]) <= {"rate_limited", "connection_closed", "client_down"}
    assert report["scheduled"] == 200
    assert report["ops"] + report["error_count"] == 200
    assert sum(p["errors"] for p in report["timeline"]) == report["error_count"]
    assert "rate_limited" in result.err


async def test_a_server_closing_a_flooding_client_is_counted(
    make_settings: Callable[..., Settings],
) -> None:
    # 200 ops/s against 1/s with bursts of 5: 5 pass, 5 are refused, the next refusal in a
    # row closes the connection (1008). The op that tripped it is outstanding at the close
    # (connection_closed) and the schedule's later ops find the client down.
    async with _server(make_settings(rate_limit_per_s=1.0, rate_limit_burst=5)) as app:
        result, report = await bench(
            f"ws://127.0.0.1:{app.port}/", "--clients", "1", "--rate", "200", "--mix", "ping",
            "--warmup", "0", "--duration", "1",
        )  # fmt: skip
    assert result.code == 0, result
    assert report["scheduled"] == 200
    assert report["ops"] + report["error_count"] == 200, report
    assert report["ops"] > 0
    assert set(report["errors"]) == {"rate_limited", "connection_closed", "client_down"}, report


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(certificate chain, key, CA) for 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    yield str(cert_file), str(key_file), str(ca_file)


async def test_wss_with_a_ca_and_an_origin(
    make_settings: Callable[..., Settings], tls_files: tuple[str, str, str]
) -> None:
    cert, key, ca = tls_files
    settings = make_settings(
        tls_cert_file=cert,
        tls_key_file=key,
        rate_limit_per_s=1e6,
        rate_limit_burst=1_000_000,
        allowed_origins=["https://play.example"],
    )
    async with _server(settings) as app:
        url = f"wss://127.0.0.1:{app.port}/"
        result, report = await bench(
            url, "--ca", ca, "--origin", "https://play.example", "--clients", "1",
            "--mix", "equip:1,stats:1", "--warmup", "0.2", "--duration", "0.5",
        )  # fmt: skip
        untrusted = await run_wsprobe("bench", url, *PICOWS, "--clients", "2", "--duration", "1")
    assert result.code == 0, result
    assert report["errors"] == {}
    assert report["ops"] > 0
    assert report["config"]["connect"]["ca_file"] == ca
    assert untrusted.code == 2, untrusted
    assert "TLS certificate not trusted" in untrusted.err
    assert untrusted.out == ""


# --- refused connections -----------------------------------------------------------------------


async def test_nothing_listening_is_exit_2_with_a_reason() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    result = await run_wsprobe("bench", url, *PICOWS, "--clients", "3", "--duration", "1")
    assert result.code == 2, result
    assert f"no client could connect: {url}: connection refused" in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    ("path", "origin", "says"),
    [
        ("/", "https://evil.example", "forbids this connection (403): the Origin "),
        ("/", "https://evil.example", "it said: origin not allowed"),
        ("/auth", None, "wants authentication before the upgrade (401)"),
        ("/auth", None, "it said: token expired"),
        ("/busy", None, "too many connections or handshakes from this address (429); retry "),
        ("/", None, "speaks none of the offered subprotocols (gearhall.v1.json)"),
    ],
)
async def test_a_refused_handshake_is_exit_2_with_the_servers_reason(
    path: str, origin: str | None, says: str
) -> None:
    async with standin.gatekeeper() as (base, origins):
        args = ["--origin", origin] if origin is not None else []
        result = await run_wsprobe(
            "bench", base + path, *PICOWS, "--clients", "2", "--duration", "1", *args
        )
    assert result.code == 2, result
    assert f"no client could connect: {base + path}: " in result.err
    assert says in result.err
    assert origins == [origin] * 2  # the Origin header went out exactly when asked
    assert result.out == ""


# --- frames a Gearhall server does not send, against a stand-in --------------------------------

Behaviour = Literal["fragment", "close", "violate"]
REPLIES_BEFORE_TROUBLE = 5


class _StandIn(WSListener):
    """Answers hello and ping like a Gearhall server (JSON only), with a twist:

    - ``fragment``: every reply in three fragments, a PING between two of them, and a push
      (no ``rid``) before it;
    - ``close``: after 5 pongs, the next request gets a close frame (1008) instead;
    - ``violate``: after 5 pongs, the next request gets a continuation frame out of nowhere.
    """

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.pongs = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        msg = json.loads(frame.get_payload_as_bytes())
        if msg["t"] == "session.hello":
            self._send(transport, {"t": "session.welcome", "rid": msg["rid"]})
            return
        if self.pongs >= REPLIES_BEFORE_TROUBLE and self.behaviour == "close":
            transport.send_close(WSCloseCode.POLICY_VIOLATION, b"enough")
            transport.disconnect()
            return
        if self.pongs >= REPLIES_BEFORE_TROUBLE and self.behaviour == "violate":
            transport.send(WSMsgType.CONTINUATION, b"{}")
            return
        self.pongs += 1
        self._send(transport, {"t": "pong", "rid": msg["rid"], "tick": 0})

    def _send(self, transport: WSTransport, msg: dict[str, object]) -> None:
        data = json.dumps(msg).encode()
        if self.behaviour != "fragment":
            transport.send(WSMsgType.TEXT, data)
            return
        transport.send(WSMsgType.TEXT, b'{"t":"tick","tick":0}')  # a push
        third = len(data) // 3
        transport.send(WSMsgType.TEXT, data[:third], fin=False)
        transport.send_ping(b"between fragments")
        transport.send(WSMsgType.CONTINUATION, data[third : 2 * third], fin=False)
        transport.send(WSMsgType.CONTINUATION, data[2 * third :], fin=True)


@asynccontextmanager
async def stand_in(behaviour: Behaviour, subprotocol: str = SUBPROTOCOL_JSON) -> AsyncIterator[str]:
    """A stand-in that accepts every upgrade, picking ``subprotocol`` whatever was offered."""

    def accept(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        response = WSUpgradeResponse.create_101_response(
            extra_headers={"Sec-WebSocket-Protocol": subprotocol}
        )
        return WSUpgradeResponseWithListener(response, _StandIn(behaviour))

    server = await ws_create_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.close()
        await server.wait_closed()


async def stand_in_bench(
    behaviour: Behaviour, engine: str, *args: str
) -> tuple[Result, dict[str, Any]]:
    async with stand_in(behaviour) as url:
        result = await run_wsprobe(
            "bench", url, "--engine", engine, "--mix", "ping", "--clients", "1",
            "--warmup", "0", "--duration", "0.5", *args,
        )  # fmt: skip
    assert result.code == 0, result
    return result, json.loads(result.out)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("loop", ["closed", "open"])
async def test_fragmented_replies_are_joined(engine: str, loop: str) -> None:
    rate = ["--rate", "100"] if loop == "open" else []
    result, report = await stand_in_bench("fragment", engine, *rate)
    assert report["errors"] == {}, result
    assert report["ops"] > 0
    if loop == "open":
        assert report["ops"] == report["scheduled"] == 50


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_server_close_in_a_closed_loop_loses_the_request_in_flight(engine: str) -> None:
    result, report = await stand_in_bench("close", engine)
    assert report["ops"] == REPLIES_BEFORE_TROUBLE, result
    assert report["errors"] == {"connection_closed": 1}, result


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_server_close_in_an_open_loop_accounts_for_every_op(engine: str) -> None:
    result, report = await stand_in_bench("close", engine, "--rate", "100")
    assert report["scheduled"] == 50
    assert report["ops"] == REPLIES_BEFORE_TROUBLE, result
    errors = report["errors"]
    assert errors["connection_closed"] >= 1, result  # the request answered with the close
    assert set(errors) <= {"connection_closed", "client_down"}, result
    assert report["ops"] + report["error_count"] == 50


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_stray_continuation_frame_fails_the_connection(engine: str) -> None:
    result, report = await stand_in_bench("violate", engine)
    assert report["ops"] == REPLIES_BEFORE_TROUBLE, result
    assert report["errors"] == {"connection_closed": 1}, result
    if engine == "picows":
        assert "continuation frame outside a fragmented message" in result.err


async def test_a_server_picking_another_subprotocol_is_refused() -> None:
    async with stand_in("fragment", subprotocol="chat.v2") as url:
        result = await run_wsprobe("bench", url, *PICOWS, "--clients", "1", "--duration", "1")
    assert result.code == 2, result
    assert "the server chose subprotocol 'chat.v2', not 'gearhall.v1.json'" in result.err

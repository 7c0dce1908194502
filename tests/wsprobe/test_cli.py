"""``wsprobe send``, ``watch`` and the connection options, run as a real subprocess against a
real server: exit codes, what is printed, TLS with a CA, Origin, and refused handshakes
explained (a stand-in server answers 400/401/403/429 the way a Gearhall server in front of
its auth layer would)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trustme

from server.app import App
from server.config import Settings
from tests.support import standin
from tests.support.proc import ROOT, free_port
from tests.support.wsprobe import run_wsprobe
from tools.wsprobe.client import ProbeClient

# --- send --------------------------------------------------------------------------------------


async def test_send_prints_only_the_reply_and_exits_0(url: str) -> None:
    result = await run_wsprobe("send", url, "ping", "--token", "dev:pat")
    assert result.code == 0, result
    reply = json.loads(result.out)  # exactly one JSON document: the welcome is not printed
    assert reply["t"] == "pong"
    assert reply["rid"] == 2


async def test_send_without_a_session_shows_the_servers_answer(url: str) -> None:
    result = await run_wsprobe("send", url, "ping")
    assert result.code == 1, result
    assert json.loads(result.out)["code"] == "unauthenticated"


async def test_send_with_a_token_resolves_references_and_exits_0(url: str) -> None:
    result = await run_wsprobe(
        "send", url, "equip", "item_id=@cloth_cap", "slot=head", "--token", "dev:sally"
    )
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert reply["t"] == "effects"
    assert [e["e"] for e in reply["effects"]] == ["items_moved"]
    # It happened: a fresh session sees the cap on the head.
    async with await ProbeClient.connect(url) as client:
        welcome = await client.hello("dev:sally")
    state = welcome["state"]
    assert isinstance(state, dict)
    head = state["equipment"]["head"]
    assert state["items"][str(head)]["template"] == "cloth_cap"


async def test_send_accepts_full_tags_and_the_token_from_the_environment(url: str) -> None:
    result = await run_wsprobe("send", url, "player.get_stats", env={"WSPROBE_TOKEN": "dev:envy"})
    assert result.code == 0, result
    assert json.loads(result.out)["t"] == "player.stats"


async def test_an_error_reply_is_printed_and_exits_1(url: str) -> None:
    # The iron helm needs level 2; a new player is level 1.
    result = await run_wsprobe(
        "send", url, "equip", "item_id=@iron_helm", "slot=head", "--token", "dev:low"
    )
    assert result.code == 1, result
    reply = json.loads(result.out)
    assert reply["t"] == "error"
    assert reply["code"] == "requirements_not_met"


async def test_a_raw_json_body_is_sent_unvalidated(url: str) -> None:
    result = await run_wsprobe(
        "send", url, "unequip", "--json", '{"slot": "tail"}', "--token", "dev:raw"
    )
    assert result.code == 1, result
    assert json.loads(result.out)["code"] == "bad_request"


async def test_send_can_say_hello_itself(url: str) -> None:
    ok = await run_wsprobe("send", url, "session.hello", "token=dev:hi")
    assert ok.code == 0, ok
    assert json.loads(ok.out)["t"] == "session.welcome"
    refused = await run_wsprobe("send", url, "session.hello", "token=nobody")
    assert refused.code == 1, refused
    assert json.loads(refused.out)["t"] == "error"


async def test_a_refused_hello_is_an_error_reply(url: str) -> None:
    result = await run_wsprobe("send", url, "ping", "--token", "not-a-token")
    assert result.code == 1, result
    assert json.loads(result.out)["t"] == "error"


async def test_an_invalid_field_is_reported_and_nothing_is_sent(url: str) -> None:
    result = await run_wsprobe("send", url, "equip", "item_id=@cloth_cap", "slot=tail",
                               "--token", "dev:typo")  # fmt: skip
    assert result.code == 2, result
    assert "slot" in result.err
    assert result.out == ""
    async with await ProbeClient.connect(url) as client:
        welcome = await client.hello("dev:typo")
    state = welcome["state"]
    assert isinstance(state, dict)
    assert state["version"] == welcome["version"]
    assert state["equipment"] == {}


async def test_an_unknown_tag_is_sent_as_given(url: str) -> None:
    result = await run_wsprobe("send", url, "market.list_things", "page=2")
    assert result.code == 1, result
    assert json.loads(result.out)["code"] == "bad_request"


async def test_no_server_exits_2_with_a_readable_message() -> None:
    result = await run_wsprobe("send", f"ws://127.0.0.1:{free_port()}/", "ping")
    assert result.code == 2, result
    assert "connection refused: is the server running?" in result.err


async def test_not_a_websocket_url_exits_2() -> None:
    result = await run_wsprobe("send", "http://127.0.0.1:1/", "ping")
    assert result.code == 2, result
    assert "not a ws:// or wss:// URL" in result.err


# --- watch -------------------------------------------------------------------------------------


async def test_watch_prints_pushes_as_json_lines(url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.wsprobe.cli", "watch", url, "--token", "dev:wanda",
        "--duration", "30",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            first = json.loads(await proc.stdout.readline())
            assert first["t"] == "wsprobe.mirror"
            assert first["in_sync"] is True
            # Another session of the same player changes something: watch sees the delta.
            async with await ProbeClient.connect(url) as other:
                welcome = await other.hello("dev:wanda")
                state = welcome["state"]
                assert isinstance(state, dict)
                cap = next(k for k, v in state["items"].items() if v["template"] == "cloth_cap")
                reply = await other.request(
                    {"t": "inventory.equip_item", "item_id": int(cap), "slot": "head"}
                )
                assert reply["t"] == "effects"
            lines = []
            while not any(m["t"] == "player.delta" for m in lines):
                lines.append(json.loads(await proc.stdout.readline()))
            status = json.loads(await proc.stdout.readline())
    finally:
        proc.terminate()
        await proc.wait()
    delta = next(m for m in lines if m["t"] == "player.delta")
    assert [e["e"] for e in delta["effects"]] == ["items_moved"]
    assert status["t"] == "wsprobe.mirror"
    assert status["in_sync"] is True
    assert status["version"] == reply["version"]


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
async def tls_app(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[tuple[App, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    server = App(make_settings(tls_cert_file=str(cert_file), tls_key_file=str(key_file)))
    await server.start()
    yield server, ca_file
    await server.stop()


async def test_wss_with_the_ca_works_and_without_it_says_what_to_do(
    tls_app: tuple[App, Path],
) -> None:
    app, ca_file = tls_app
    url = f"wss://127.0.0.1:{app.port}/"
    ok = await run_wsprobe("send", url, "ping", "--ca", str(ca_file), "--token", "dev:tls")
    assert ok.code == 0, ok
    assert json.loads(ok.out)["t"] == "pong"
    untrusted = await run_wsprobe("send", url, "ping")
    assert untrusted.code == 2, untrusted
    assert "TLS certificate not trusted" in untrusted.err
    assert "--ca FILE" in untrusted.err
    plain = await run_wsprobe("send", f"ws://127.0.0.1:{app.port}/", "ping")
    assert plain.code == 2, plain


async def test_ca_on_a_plain_url_is_a_usage_error(url: str, tmp_path: Path) -> None:
    result = await run_wsprobe("send", url, "ping", "--ca", str(tmp_path / "ca.pem"))
    assert result.code == 2, result
    assert "--ca only applies to wss://" in result.err


# --- refused handshakes and Origin -------------------------------------------------------------


ALLOWED_ORIGIN = "https://play.example"


@pytest.fixture
async def gatekeeper() -> AsyncIterator[standin.Gatekeeper]:
    """Refuses /auth (401), /busy (429) and any Origin but ``ALLOWED_ORIGIN`` (403); lets
    the rest through to a server that speaks no Gearhall subprotocol (400)."""
    async with standin.gatekeeper(allowed_origins={ALLOWED_ORIGIN}) as server:
        yield server


async def test_refused_handshakes_are_explained(
    gatekeeper: standin.Gatekeeper,
) -> None:
    base, _ = gatekeeper
    unauthorized = await run_wsprobe("send", f"{base}/auth", "ping")
    assert unauthorized.code == 2, unauthorized
    assert "wants authentication before the upgrade (401)" in unauthorized.err
    assert "token expired" in unauthorized.err

    busy = await run_wsprobe("send", f"{base}/busy", "ping")
    assert busy.code == 2, busy
    assert "too many connections or handshakes from this address (429); retry after 7 s" in (
        busy.err
    )

    wrong_protocol = await run_wsprobe("send", f"{base}/", "ping", "--msgpack")
    assert wrong_protocol.code == 2, wrong_protocol
    assert "speaks none of the offered subprotocols (gearhall.v1.msgpack)" in wrong_protocol.err


async def test_origin_is_sent_and_a_forbidden_one_is_explained(
    gatekeeper: standin.Gatekeeper,
) -> None:
    base, origins = gatekeeper
    forbidden = await run_wsprobe("send", f"{base}/", "ping", "--origin", "https://evil.example")
    assert forbidden.code == 2, forbidden
    assert "forbids this connection (403): the Origin https://evil.example" in forbidden.err
    allowed = await run_wsprobe("send", f"{base}/", "ping", "--origin", ALLOWED_ORIGIN)
    # Allowed through the Origin check, then refused for the subprotocol: a 400, not a 403.
    assert "(403)" not in allowed.err, allowed
    assert "subprotocols" in allowed.err
    assert origins == ["https://evil.example", ALLOWED_ORIGIN]


async def test_origin_reaches_a_real_gearhall_server(
    make_settings: Callable[..., Settings],
) -> None:
    app = App(make_settings(allowed_origins=[ALLOWED_ORIGIN]))
    await app.start()
    try:
        url = f"ws://127.0.0.1:{app.port}/"
        result = await run_wsprobe(
            "send", url, "ping", "--origin", ALLOWED_ORIGIN, "--token", "dev:o"
        )
        assert result.code == 0, result
        refused = await run_wsprobe(
            "send", url, "ping", "--origin", "https://elsewhere.example", "--token", "dev:o"
        )
        assert refused.code == 2, refused
        assert "(403)" in refused.err, refused
    finally:
        await app.stop()

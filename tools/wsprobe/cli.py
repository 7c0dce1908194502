"""``wsprobe``: talk to a Gearhall server the way a game client does.

    wsprobe connect ws://127.0.0.1:8765/ --token dev:alice      # interactive, with completion
    wsprobe send    ws://127.0.0.1:8765/ ping                   # one request, the reply as JSON
    wsprobe send    ws://127.0.0.1:8765/ equip item_id=@cloth_cap slot=head --token dev:alice
    wsprobe watch   ws://127.0.0.1:8765/ --token dev:alice      # pushes as JSON lines
    wsprobe run     docs/examples/tour.toml --url ws://127.0.0.1:8765/   # a scripted session
    wsprobe record  ws://127.0.0.1:8765/ --token dev:alice -o session.toml
    wsprobe bench   ws://127.0.0.1:8765/ --clients 100 --duration 10 --mix equip:50,move:30,ping:20
    wsprobe ops                                                 # every operation and its fields
    wsprobe equip   ws://127.0.0.1:8765/ --token dev:alice item_id=@cloth_cap slot=head

Requests are ``TAG field=value ...``: a full tag or a short name (``wsprobe ops``), fields
checked against the protocol's request Structs before anything is sent; ``@<template>`` and
``@me`` name the player's items and id (see ``tools/wsprobe/ops``). Every command takes
``--msgpack``, ``--ca FILE`` (wss://) and ``--origin``; ``--token`` defaults to
``$WSPROBE_TOKEN``. Exit codes: 0 a success reply, 1 an error reply (or an unmet
expectation in ``run``), 2 no connection, a refused handshake, a failed session or bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from websockets.exceptions import ConnectionClosed

from tools.wsprobe import load, ops, repl, script
from tools.wsprobe.client import ErrorReplyError, Message, ProbeClient, ProbeError
from tools.wsprobe.common import (
    EXIT_ERROR_REPLY,
    EXIT_FAILURE,
    EXIT_OK,
    add_connection_arguments,
    options_from_args,
    positive_float,
    print_json,
)
from tools.wsprobe.mirror import MirrorTracker, state_digest, typed_state


def _fail(text: str) -> int:
    print(f"wsprobe: {text}", file=sys.stderr)
    return EXIT_FAILURE


def _run(args: argparse.Namespace, work: Callable[[], Awaitable[int]]) -> int:
    """Run one exchange, turning transport failures into exit code 2 and a message."""
    try:
        return asyncio.run(_bounded(work(), args.timeout))
    except TimeoutError:
        return _fail(f"no answer within {args.timeout:g}s")
    except ErrorReplyError as exc:  # the hello was refused
        print_json(exc.reply)
        return EXIT_ERROR_REPLY
    except ops.OperationError as exc:
        return _fail(str(exc))
    except ProbeError as exc:  # includes HandshakeRefusedError, whose text explains itself
        return _fail(str(exc))
    except ConnectionClosed as exc:
        return _fail(f"connection closed: {exc}")
    except OSError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")


async def _bounded(work: Awaitable[int], seconds: float | None) -> int:
    async with asyncio.timeout(seconds):
        return await work


def _token(args: argparse.Namespace, *, required: bool) -> str | None:
    token: str | None = args.token or os.environ.get("WSPROBE_TOKEN") or None
    if token is None and required:
        raise ops.OperationError("this command needs --token (or $WSPROBE_TOKEN)")
    return token


async def _open(args: argparse.Namespace, token: str | None) -> tuple[ProbeClient, Message | None]:
    """Connect, and say hello when there is a token; returns the client and the welcome."""
    client = await options_from_args(args).open()
    if token is None:
        return client, None
    try:
        return client, await client.hello(token)
    except BaseException:
        await client.close()
        raise


def _send_message(args: argparse.Namespace, welcome: Message | None) -> Message:
    """The message ``send`` sends: TAG with validated ``field=value``s, plus ``--json``."""
    extra: dict[str, object] = {}
    if args.json is not None:
        try:
            decoded = msgspec.json.decode(args.json)
        except msgspec.DecodeError as exc:
            raise ops.OperationError(f"--json is not JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise ops.OperationError("--json must be a JSON object (the message's fields)")
        extra = decoded
    op = ops.find_message(args.tag)
    if op is None:
        return {**ops.loose_request(args.tag, args.fields), **extra}
    raw = ops.parse_args(op, args.fields)
    if args.json is not None and not raw:
        # Only a raw body: send it as given, unvalidated (the way to send what the server
        # must refuse).
        return {"t": op.tag, **extra}
    state = welcome.get("state") if welcome else None
    player = welcome.get("player_id") if welcome else None
    resolved = ops.resolve_refs(raw, state if isinstance(state, dict) else None, player)
    return {"t": op.tag, **ops.build_request(op, resolved), **extra}


async def _send(args: argparse.Namespace) -> int:
    token = _token(args, required=False)
    client, welcome = await _open(args, token)
    async with client:
        reply = await client.request(_send_message(args, welcome))
        print_json(reply)
        return EXIT_ERROR_REPLY if reply.get("t") == "error" else EXIT_OK


def _cmd_send(args: argparse.Namespace) -> int:
    return _run(args, lambda: _send(args))


async def _call(args: argparse.Namespace, op: ops.Operation, raw: dict[str, str]) -> int:
    client, welcome = await _open(args, _token(args, required=True))
    assert welcome is not None
    async with client:
        if args.welcome:
            print_json(welcome)
        tracker = MirrorTracker(welcome) if args.mirror else None
        state = welcome.get("state")
        resolved = ops.resolve_refs(
            raw, state if isinstance(state, dict) else None, welcome.get("player_id")
        )
        reply = await client.request(ops.build_request(op, resolved))
        # Everything that arrived before the reply came first: show (and mirror) it first.
        for msg in [*client.pushes, reply]:
            print_json(msg)
            status = tracker.observe(msg) if tracker else None
            if status is not None:
                print_json(status)
        client.pushes.clear()
        return EXIT_ERROR_REPLY if reply.get("t") == "error" else EXIT_OK


def _cmd_call(args: argparse.Namespace) -> int:
    try:
        op = ops.find(args.operation)
        raw = ops.parse_args(op, args.fields)
    except ops.OperationError as exc:
        return _fail(str(exc))
    return _run(args, lambda: _call(args, op, raw))


async def _state(args: argparse.Namespace) -> int:
    client, welcome = await _open(args, _token(args, required=True))
    assert welcome is not None
    async with client:
        if not args.digest:
            print_json(welcome)
            return EXIT_OK
        state = typed_state(welcome)
        assert state is not None  # a hello without resume always carries the full state
        print_json({"version": state.version, "digest": state_digest(state)})
        return EXIT_OK


def _cmd_state(args: argparse.Namespace) -> int:
    return _run(args, lambda: _state(args))


async def _watch(args: argparse.Namespace) -> int:
    """Print every push for the player, keeping a mirror; reconnect with ``resume`` when a
    delta does not continue the mirrored version (something was missed)."""
    token = _token(args, required=True)
    assert token is not None
    deadline = None if args.duration is None else time.monotonic() + args.duration
    client, welcome = await _open(args, token)
    assert welcome is not None
    try:
        tracker = MirrorTracker(welcome)
        print_json(tracker.status("session.welcome", 0))
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return EXIT_OK
            try:
                async with asyncio.timeout(left):
                    msg = client.pushes.popleft() if client.pushes else await client.receive()
            except TimeoutError:
                return EXIT_OK
            print_json(msg)
            status = tracker.observe(msg)
            if status is not None:
                print_json(status)
            if not tracker.in_sync:
                await client.close()
                client = await options_from_args(args).open()
                welcome = await client.hello(token, resume=tracker.version)
                print_json(tracker.resumed(welcome))
    finally:
        await client.close()


def _cmd_watch(args: argparse.Namespace) -> int:
    return _run(args, lambda: _watch(args))


def _cmd_ops(args: argparse.Namespace) -> int:
    print(ops.describe())
    return EXIT_OK


def _session_options(parser: argparse.ArgumentParser, *, timeout: float | None = 10.0) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--token", help="say session.hello with it first (default $WSPROBE_TOKEN)")
    parser.add_argument("--timeout", type=positive_float, default=timeout, help="seconds")


def _op_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "fields",
        nargs="*",
        metavar="FIELD=VALUE",
        help="request fields; plain values fill the fields in order",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="mirror the player and print its version after each change",
    )
    parser.add_argument("--welcome", action="store_true", help="also print the welcome")
    parser.set_defaults(func=_cmd_call)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsprobe",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("ops", help="list every operation and its fields").set_defaults(func=_cmd_ops)

    for name, op in ops.OPERATIONS.items():
        fields = " ".join(f.describe().replace(" ", "") for f in op.fields)
        cmd = sub.add_parser(
            name,
            help=f"{op.tag}: {op.summary}",
            description=f"{op.tag}: {op.summary}\nfields: {fields or 'none'}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _session_options(cmd)
        _op_options(cmd)
        cmd.set_defaults(operation=name)

    call = sub.add_parser("call", help="any operation by short name or full tag")
    _session_options(call)
    call.add_argument("operation", help="e.g. equip or inventory.equip_item (see `wsprobe ops`)")
    _op_options(call)

    state = sub.add_parser("state", help="say hello and print the welcome (the full state)")
    _session_options(state)
    state.add_argument("--digest", action="store_true",
                       help="print only the version and the state digest")  # fmt: skip
    state.set_defaults(func=_cmd_state)

    watch = sub.add_parser("watch", help="mirror the player and print every push")
    _session_options(watch, timeout=None)
    watch.add_argument("--duration", type=positive_float, help="seconds (default: forever)")
    watch.set_defaults(func=_cmd_watch)

    send = sub.add_parser(
        "send",
        help="send one request and print the reply as JSON",
        description="Send TAG with its fields and print the reply as one JSON document. "
        "Exit 0 on a success reply, 1 on an error reply, 2 when the session fails. "
        "--json BODY adds raw fields (sent unvalidated when it is the only body).",
    )
    _session_options(send)
    send.add_argument("tag", help="a full tag or a short name (see `wsprobe ops`)")
    send.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="request fields")
    send.add_argument("--json", metavar="BODY", help="raw fields as a JSON object: '{\"slot\": 1}'")
    send.set_defaults(func=_cmd_send)

    repl.register(sub)
    script.register(sub)
    load.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Request fields may come after the options (``equip URL --token t item_id=1 slot=head``);
    # argparse stops filling a "*" positional at the first option, so collect the rest here.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "fields") or any(a.startswith("--") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.fields = [*args.fields, *extra]
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""``wsprobe``: call any operation on a Gearhall server, watch a player, or put it under load.

    wsprobe ops                                            # every operation and its fields
    wsprobe state ws://127.0.0.1:8765/ --token dev:alice   # the welcome, with the full state
    wsprobe equip ws://127.0.0.1:8765/ --token dev:alice item_id=@cloth_cap slot=head
    wsprobe call  ws://127.0.0.1:8765/ --token dev:alice inventory.unequip_item slot=head
    wsprobe watch ws://127.0.0.1:8765/ --token dev:alice --duration 30
    wsprobe send  ws://127.0.0.1:8765/ '{"t": "ping"}' --token dev:alice
    wsprobe load  ws://127.0.0.1:8765/ --clients 100 --duration 10 --workload equip --procs 2

Operations (one subcommand each, or ``call`` with a short name or full tag) take
``field=value`` arguments checked against the protocol's request Structs before anything is
sent; ``@<template>`` and ``@me`` name the player's items and id (see ``tools/wsprobe/ops``).
Every command prints what it receives as JSON lines — pushes, then the reply — and exits 1
if the reply is an error, 2 if the exchange failed. ``--mirror`` keeps a client-side mirror
of the player (``protocol.mirror``) and prints its version and digest after each change;
``watch`` does that for everything other sessions do. ``load`` prints its report as JSON on
stdout and a human summary on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from tools.wsprobe import load, ops, repl, script
from tools.wsprobe.client import Encoding, ErrorReplyError, Message, ProbeClient, ProbeError
from tools.wsprobe.mirror import MirrorTracker, state_digest, typed_state

EXIT_OK, EXIT_ERROR_REPLY, EXIT_FAILURE = 0, 1, 2


def _print(msg: Message) -> None:
    # msgpack may carry bytes; msgspec's JSON encoder writes them as base64.
    sys.stdout.write(msgspec.json.encode(msg).decode() + "\n")
    sys.stdout.flush()


def _encoding(args: argparse.Namespace) -> Encoding:
    return "msgpack" if args.msgpack else "json"


def _run(args: argparse.Namespace, work: Callable[[], Awaitable[int]]) -> int:
    """Run one exchange, turning transport failures into exit code 2 and a message."""
    try:
        return asyncio.run(_bounded(work(), args.timeout))
    except TimeoutError:
        print(f"wsprobe: no answer within {args.timeout:g}s", file=sys.stderr)
    except ErrorReplyError as exc:  # the hello was refused
        _print(exc.reply)
        return EXIT_ERROR_REPLY
    except ops.OperationError as exc:
        print(f"wsprobe: {exc}", file=sys.stderr)
    except (OSError, InvalidHandshake, InvalidURI, ProbeError) as exc:
        print(f"wsprobe: {type(exc).__name__}: {exc}", file=sys.stderr)
    except ConnectionClosed as exc:
        print(f"wsprobe: connection closed: {exc}", file=sys.stderr)
    return EXIT_FAILURE


async def _bounded(work: Awaitable[int], seconds: float | None) -> int:
    async with asyncio.timeout(seconds):
        return await work


async def _send(url: str, raw: str, encoding: Encoding, token: str | None, wait: float) -> int:
    try:
        msg = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        print(f"wsprobe: the message is not JSON: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not isinstance(msg, dict):
        print("wsprobe: the message must be a JSON object", file=sys.stderr)
        return EXIT_FAILURE
    async with await ProbeClient.connect(url, encoding, open_timeout=wait) as client:
        if token is not None:
            _print(await client.hello(token))
        reply = await client.request(msg)
        while client.pushes:
            _print(client.pushes.popleft())
        _print(reply)
        return EXIT_ERROR_REPLY if reply.get("t") == "error" else EXIT_OK


def _cmd_send(args: argparse.Namespace) -> int:
    return _run(
        args, lambda: _send(args.url, args.message, _encoding(args), args.token, args.timeout)
    )


async def _call(args: argparse.Namespace, op: ops.Operation, raw: dict[str, str]) -> int:
    async with await ProbeClient.connect(args.url, _encoding(args)) as client:
        welcome = await client.hello(args.token)
        if args.welcome:
            _print(welcome)
        tracker = MirrorTracker(welcome) if args.mirror else None
        state = welcome.get("state")
        resolved = ops.resolve_refs(
            raw, state if isinstance(state, dict) else None, welcome.get("player_id")
        )
        reply = await client.request(ops.build_request(op, resolved))
        # Everything that arrived before the reply came first: show (and mirror) it first.
        for msg in [*client.pushes, reply]:
            _print(msg)
            status = tracker.observe(msg) if tracker else None
            if status is not None:
                _print(status)
        client.pushes.clear()
        return EXIT_ERROR_REPLY if reply.get("t") == "error" else EXIT_OK


def _cmd_call(args: argparse.Namespace) -> int:
    try:
        op = ops.find(args.operation)
        raw = ops.parse_args(op, args.fields)
    except ops.OperationError as exc:
        print(f"wsprobe: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return _run(args, lambda: _call(args, op, raw))


async def _state(args: argparse.Namespace) -> int:
    async with await ProbeClient.connect(args.url, _encoding(args)) as client:
        welcome = await client.hello(args.token)
        if not args.digest:
            _print(welcome)
            return EXIT_OK
        state = typed_state(welcome)
        assert state is not None  # a hello without resume always carries the full state
        _print({"version": state.version, "digest": state_digest(state)})
        return EXIT_OK


def _cmd_state(args: argparse.Namespace) -> int:
    return _run(args, lambda: _state(args))


async def _watch(args: argparse.Namespace) -> int:
    """Print every push for the player, keeping a mirror; reconnect with ``resume`` when a
    delta does not continue the mirrored version (something was missed)."""
    deadline = None if args.duration is None else time.monotonic() + args.duration
    client = await ProbeClient.connect(args.url, _encoding(args))
    try:
        welcome = await client.hello(args.token)
        tracker = MirrorTracker(welcome)
        _print(tracker.status("session.welcome", 0))
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return EXIT_OK
            try:
                async with asyncio.timeout(left):
                    msg = client.pushes.popleft() if client.pushes else await client.receive()
            except TimeoutError:
                return EXIT_OK
            _print(msg)
            status = tracker.observe(msg)
            if status is not None:
                _print(status)
            if not tracker.in_sync:
                await client.close()
                client = await ProbeClient.connect(args.url, _encoding(args))
                welcome = await client.hello(args.token, resume=tracker.version)
                _print(tracker.resumed(welcome))
    finally:
        await client.close()


def _cmd_watch(args: argparse.Namespace) -> int:
    return _run(args, lambda: _watch(args))


def _cmd_ops(args: argparse.Namespace) -> int:
    print(ops.describe())
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _session_options(parser: argparse.ArgumentParser, *, timeout: float | None = 10.0) -> None:
    parser.add_argument("url", help="ws://host:port/")
    parser.add_argument("--token", required=True, help="dev:<name> or dev-admin:<name>")
    parser.add_argument("--msgpack", action="store_true", help="use gearhall.v1.msgpack")
    parser.add_argument("--timeout", type=_positive_float, default=timeout, help="seconds")


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
    watch.add_argument("--duration", type=_positive_float, help="seconds (default: forever)")
    watch.set_defaults(func=_cmd_watch)

    send = sub.add_parser("send", help="send one raw JSON message and print what comes back")
    send.add_argument("url", help="ws://host:port/")
    send.add_argument("message", help='a JSON object, e.g. \'{"t": "ping"}\' (rid is added)')
    send.add_argument("--msgpack", action="store_true", help="use gearhall.v1.msgpack")
    send.add_argument("--token", help="say session.hello with this token first (dev:<name>)")
    send.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds")
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

"""``wsprobe``: send one message to a Gearhall server, or put it under load.

    wsprobe send ws://127.0.0.1:8765/ '{"t": "ping"}' --token dev:alice
    wsprobe load ws://127.0.0.1:8765/ --clients 100 --duration 10 --workload equip --procs 2

``send`` prints every message it receives as one JSON line (the welcome, pushes, the reply)
and exits 1 if the reply is an error. ``load`` prints the report as JSON on stdout and a
human summary on stderr. An interactive probe is a later issue.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import msgspec
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from tools.wsprobe.client import Encoding, ErrorReplyError, Message, ProbeClient, ProbeError
from tools.wsprobe.load import WORKLOADS, LoadConfig, LoadError, render_summary, run_load

EXIT_OK, EXIT_ERROR_REPLY, EXIT_FAILURE = 0, 1, 2


def _print(msg: Message) -> None:
    # msgpack may carry bytes; msgspec's JSON encoder writes them as base64.
    sys.stdout.write(msgspec.json.encode(msg).decode() + "\n")
    sys.stdout.flush()


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
            try:
                async with asyncio.timeout(wait):
                    _print(await client.hello(token))
            except ErrorReplyError as exc:
                _print(exc.reply)
                return EXIT_ERROR_REPLY
        async with asyncio.timeout(wait):
            reply = await client.request(msg)
        while client.pushes:
            _print(client.pushes.popleft())
        _print(reply)
        return EXIT_ERROR_REPLY if reply.get("t") == "error" else EXIT_OK


def _cmd_send(args: argparse.Namespace) -> int:
    encoding: Encoding = "msgpack" if args.msgpack else "json"
    try:
        return asyncio.run(_send(args.url, args.message, encoding, args.token, args.timeout))
    except TimeoutError:
        print(f"wsprobe: no answer within {args.timeout:g}s", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, InvalidHandshake, InvalidURI, ProbeError) as exc:
        print(f"wsprobe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ConnectionClosed as exc:
        print(f"wsprobe: connection closed: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_load(args: argparse.Namespace) -> int:
    config = LoadConfig(
        url=args.url,
        clients=args.clients,
        duration_s=args.duration,
        warmup_s=args.warmup,
        workload=args.workload,
        procs=args.procs,
        encoding="msgpack" if args.msgpack else "json",
        rate=args.rate,
        run_id=args.run_id or time.strftime("%H%M%S"),
    )
    try:
        report = run_load(config)
    except (LoadError, ValueError) as exc:
        print(f"wsprobe load: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    print(render_summary(report), file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsprobe",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    send = sub.add_parser("send", help="send one message and print what comes back")
    send.add_argument("url", help="ws://host:port/")
    send.add_argument("message", help='a JSON object, e.g. \'{"t": "ping"}\' (rid is added)')
    send.add_argument("--msgpack", action="store_true", help="use gearhall.v1.msgpack")
    send.add_argument("--token", help="say session.hello with this token first (dev:<name>)")
    send.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds")
    send.set_defaults(func=_cmd_send)

    load = sub.add_parser("load", help="run the load generator")
    load.add_argument("url", help="ws://host:port/")
    load.add_argument("--clients", type=_positive_int, required=True)
    load.add_argument("--duration", type=_positive_float, required=True, help="measured seconds")
    load.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    load.add_argument("--workload", choices=WORKLOADS, default="ping")
    load.add_argument("--procs", type=_positive_int, default=1, help="worker processes")
    load.add_argument("--msgpack", action="store_true", help="use gearhall.v1.msgpack")
    load.add_argument("--rate", type=_positive_float, help="open loop at this many ops/s in total")
    load.add_argument("--run-id", help="player names are bench-<run-id>-<i>")
    load.set_defaults(func=_cmd_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""What every wsprobe mode shares: connection options, exit codes, JSON output, recording,
argument types.

Every mode that opens a connection takes the same options (:func:`add_connection_arguments`)
and turns them into one :class:`ConnectOptions`, which can also cross a process boundary
(the load generator's workers receive it encoded).
"""

from __future__ import annotations

import argparse
import sys
from typing import Protocol

import msgspec

from tools.wsprobe.client import Encoding, Message, ProbeClient

EXIT_OK = 0
"""A success reply (or a script whose every expectation held)."""
EXIT_ERROR_REPLY = 1
"""An error reply (or an unmet expectation in a script)."""
EXIT_FAILURE = 2
"""No connection, a refused handshake, a closed session, a timeout or bad usage."""


class ConnectOptions(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    encoding: Encoding = "json"
    ca_file: str | None = None
    """Trust this CA (PEM) for ``wss://`` as well as the system's."""
    origin: str | None = None
    """Send this ``Origin`` header, as a browser client would."""
    open_timeout: float = 10.0

    async def open(self) -> ProbeClient:
        """Raises: :class:`tools.wsprobe.client.HandshakeRefusedError`."""
        return await ProbeClient.connect(
            self.url,
            self.encoding,
            open_timeout=self.open_timeout,
            ca_file=self.ca_file,
            origin=self.origin,
        )


def add_connection_arguments(parser: argparse.ArgumentParser, *, url: bool = True) -> None:
    """``URL --msgpack --ca FILE --origin ORIGIN`` (``url=False`` when the URL comes from
    elsewhere, e.g. a script file)."""
    if url:
        parser.add_argument("url", help="ws://host:port/ or wss://host:port/")
    parser.add_argument(
        "--msgpack", action="store_true", help="use gearhall.v1.msgpack (default: JSON)"
    )
    parser.add_argument("--ca", metavar="FILE", help="trust this CA certificate for wss://")
    parser.add_argument("--origin", help="send this Origin header (as a browser would)")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0 (not NaN)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def options_from_args(args: argparse.Namespace, url: str | None = None) -> ConnectOptions:
    return ConnectOptions(
        url=url if url is not None else args.url,
        encoding="msgpack" if args.msgpack else "json",
        ca_file=args.ca,
        origin=args.origin,
    )


def print_json(msg: Message) -> None:
    """One message as one JSON line on stdout (msgpack ``bytes`` come out as base64)."""
    sys.stdout.write(msgspec.json.encode(msg).decode() + "\n")
    sys.stdout.flush()


class Recorder(Protocol):
    """What an interactive session reports as it goes, so it can be saved as a script."""

    def request(self, msg: Message, reply: Message) -> None:
        """``msg`` was sent (without its ``rid``) and ``reply`` came back."""

    def push(self, msg: Message) -> None:
        """A push arrived."""

    def close(self) -> None:
        """The session ended: write out what was recorded."""

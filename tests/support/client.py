"""A small protocol client for tests: rid correlation, pushes kept aside, both encodings."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK

JSON = SUBPROTOCOL_JSON
MSGPACK = SUBPROTOCOL_MSGPACK


class Client:
    """Sends dicts, returns dicts. Pushes (messages without ``rid``) go to ``pushes``."""

    def __init__(self, ws: ClientConnection, subprotocol: str) -> None:
        self.ws = ws
        self.binary = subprotocol == MSGPACK
        self._rids = itertools.count(1)
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @classmethod
    async def open(cls, url: str, subprotocol: str = JSON, **kwargs: Any) -> Client:
        ws = await connect(url, subprotocols=[subprotocol], **kwargs)  # type: ignore[list-item]
        return cls(ws, subprotocol)

    def encode(self, msg: dict[str, Any]) -> bytes | str:
        if self.binary:
            return msgspec.msgpack.encode(msg)
        return msgspec.json.encode(msg).decode()

    def decode(self, frame: bytes | str) -> dict[str, Any]:
        if self.binary:
            assert isinstance(frame, bytes), "msgpack replies must be binary frames"
            result: dict[str, Any] = msgspec.msgpack.decode(frame)
        else:
            assert isinstance(frame, str), "json replies must be text frames"
            result = msgspec.json.decode(frame)
        return result

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def recv(self) -> dict[str, Any]:
        """The next message that is not a push."""
        while True:
            msg = self.decode(await self.ws.recv())
            if "rid" in msg:
                return msg
            await self.pushes.put(msg)

    async def request(self, t: str, **fields: Any) -> dict[str, Any]:
        rid = fields.pop("rid", None)
        rid = next(self._rids) if rid is None else rid
        await self.ws.send(self.encode({"t": t, "rid": rid, **fields}))
        reply = await self.recv()
        assert reply.get("rid") == rid, f"reply {reply} does not answer rid {rid}"
        return reply

    async def hello(self, name: str, resume: int | None = None) -> dict[str, Any]:
        return await self.request("session.hello", token=f"dev:{name}", resume=resume)

    async def close(self) -> None:
        await self.ws.close()

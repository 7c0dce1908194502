"""Encoders and decoders for both subprotocols, each built once.

This is the one decode boundary: every way a frame can be unreadable (bad JSON or
MessagePack, invalid UTF-8, wrong types, unknown tag or fields, nesting deep enough that
msgspec raises ``RecursionError``) becomes a :class:`BadRequestError` carrying the ``rid``
when one can still be read, so the client always gets an answer it can correlate.
"""

from __future__ import annotations

from typing import Final

import msgspec

from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from protocol.base import Request
from protocol.errors import BadRequestError
from protocol.messages import ClientMessage
from protocol.types import MAX_RID


class _RidOnly(msgspec.Struct):
    """A lenient view of a frame used only to recover ``rid`` from a bad message."""

    rid: int | None = None


class FrameDecodeError(BadRequestError):
    """A frame that is not a valid client message. ``rid`` is what could be read, or None."""

    def __init__(self, message: str, rid: int | None, **details: object) -> None:
        super().__init__(message, **details)
        self.rid = rid


class Codec:
    """Encode server messages and decode client messages for one subprotocol."""

    __slots__ = ("_decoder", "_rid_decoder", "binary", "encode", "name")

    def __init__(self, name: str) -> None:
        self.name: Final = name
        if name == SUBPROTOCOL_JSON:
            self._decoder: (
                msgspec.json.Decoder[ClientMessage] | msgspec.msgpack.Decoder[ClientMessage]
            ) = msgspec.json.Decoder(ClientMessage)
            self._rid_decoder: (
                msgspec.json.Decoder[_RidOnly] | msgspec.msgpack.Decoder[_RidOnly]
            ) = msgspec.json.Decoder(_RidOnly)
            self.encode = msgspec.json.Encoder().encode
            self.binary = False
        elif name == SUBPROTOCOL_MSGPACK:
            self._decoder = msgspec.msgpack.Decoder(ClientMessage)
            self._rid_decoder = msgspec.msgpack.Decoder(_RidOnly)
            self.encode = msgspec.msgpack.Encoder().encode
            self.binary = True
        else:
            raise ValueError(f"unknown subprotocol {name!r}")

    def decode(self, frame: bytes | str) -> Request:
        """Decode one client frame.

        Raises:
            FrameDecodeError: the frame is not a valid client message.
        """
        if isinstance(frame, str):  # adapters normally hand over raw bytes
            frame = frame.encode("utf-8", "surrogatepass")
        try:
            msg: Request = self._decoder.decode(frame)
            return msg
        except msgspec.ValidationError as exc:
            raise FrameDecodeError(
                "invalid message", self._recover_rid(frame), reason=str(exc)
            ) from None
        except msgspec.DecodeError as exc:
            raise FrameDecodeError(
                "malformed frame", self._recover_rid(frame), reason=str(exc)
            ) from None
        except UnicodeError as exc:  # invalid UTF-8 inside a string, or a lone surrogate
            raise FrameDecodeError(
                "malformed frame", self._recover_rid(frame), reason=f"invalid UTF-8: {exc}"
            ) from None
        except RecursionError:
            raise FrameDecodeError(
                "message nested too deeply", None, reason="maximum nesting depth exceeded"
            ) from None

    def _recover_rid(self, frame: bytes) -> int | None:
        try:
            rid = self._rid_decoder.decode(frame).rid
        except (msgspec.DecodeError, RecursionError, UnicodeError):
            return None
        # Echo only a rid a valid request could have carried.
        return rid if rid is not None and 0 <= rid <= MAX_RID else None


CODECS: Final = {name: Codec(name) for name in (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)}

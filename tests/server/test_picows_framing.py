"""The picows adapter writes batched frames itself (``frame_header`` + payload, one write):
every size class of the header must parse, with websockets' independent frame parser, back
to the payload it carries, as the opcode it was sent with, in order."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from server.transport_picows import frame_header

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70_000]


def _parse_all(data: bytes, count: int) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    for _ in range(count):
        gen: Generator[None, None, Frame] = Frame.parse(reader.read_exact, mask=False)
        try:
            next(gen)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("the parser wanted more bytes than were written")
    return frames


@pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
def test_batched_frames_parse_back_in_order(text: bool) -> None:
    payloads = [bytes([i % 251]) * size for i, size in enumerate(SIZES)]
    opcode = 0x1 if text else 0x2
    wire = b"".join(frame_header(opcode, len(p)) + p for p in payloads)
    frames = _parse_all(wire, len(payloads))
    assert [f.data for f in frames] == payloads
    assert all(f.fin for f in frames)
    assert {f.opcode for f in frames} == {Opcode.TEXT if text else Opcode.BINARY}


def test_header_lengths_use_the_shortest_encoding() -> None:
    assert len(frame_header(0x1, 125)) == 2
    assert len(frame_header(0x1, 126)) == 4
    assert len(frame_header(0x1, 65535)) == 4
    assert len(frame_header(0x1, 65536)) == 10

"""Plain HTTP/1.1 GET against the server's port, over a real socket."""

from __future__ import annotations

import asyncio


async def http_get(port: int, path: str) -> tuple[int, str]:
    """``GET path`` on 127.0.0.1:port; returns (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(5.0):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def http_status(port: int, path: str) -> int | None:
    """The status of ``GET path``, or None if nothing answers (used to poll readiness)."""
    try:
        status, _ = await http_get(port, path)
    except (OSError, TimeoutError, IndexError, ValueError):
        return None
    return status

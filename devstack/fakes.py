"""Tiny asyncio servers for the faults no real server produces: a stall, garbage, a flood,
or a scripted exchange (a server that says something specific and then misbehaves)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, then say nothing and never close."""
    await asyncio.sleep(3600)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer with bytes no protocol would send, then wait."""
    writer.write(b"\x00\xff\xfe garbage \x01\x02\x03\x80\x81" * 8)
    await writer.drain()
    await asyncio.sleep(3600)


async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Stream bytes without end (the probe must stop reading, not grow)."""
    chunk = b"A" * 65536
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(chunk)
            await writer.drain()


def scripted(*replies: bytes, then: str = "stall") -> Handler:
    """For each entry: read what the client sends (one read), answer with it. Afterwards
    `then` is "stall", "close" or "flood"."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            if not await reader.read(65536):
                return
            writer.write(reply)
            await writer.drain()
        if then == "close":
            writer.close()
        elif then == "flood":
            await flood(reader, writer)
        else:
            await stall(reader, writer)

    return handler


def greeting(data: bytes, then: str = "stall") -> Handler:
    """Send data as soon as the client connects (a banner), then behave as `then`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await scripted(then=then)(reader, writer)

    return handler


@contextlib.asynccontextmanager
async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Run handler on a free loopback port; yields the port. Connections are torn down on
    exit so a stalled handler never outlives its test."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

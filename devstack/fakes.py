"""Tiny asyncio servers for the faults no real server produces: a stall, garbage, a flood,
a scripted exchange (a server that says something specific and then misbehaves), a reset,
and proxies in front of a real server (one that closes late, one that moves its port)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
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


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the client's first bytes, then hang up with a reset (RST, not FIN)."""
    await reader.read(65536)
    sock = writer.get_extra_info("socket")
    # SO_LINGER 0: close sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def first_then(first: Handler, later: Handler) -> Handler:
    """The first connection gets `first`, every later one `later` (a port that answers an
    attempt one way and its follow-up another)."""
    seen = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        await (first if seen == 1 else later)(reader, writer)

    return handler


def recording(inner: Handler, log: list[bytearray]) -> Handler:
    """`inner`, with every byte each connection sent appended to log (one entry per
    connection, in the order they came): what a server saw, for the secret-leak tests."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = bytearray()
        log.append(seen)
        tap = asyncio.StreamReader()

        async def pump() -> None:
            while data := await reader.read(65536):
                seen.extend(data)
                tap.feed_data(data)
            tap.feed_eof()

        task = asyncio.create_task(pump())
        try:
            await inner(tap, writer)
        finally:
            task.cancel()

    return handler


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    hold: bytes = b"", delay: float = 0.0,
) -> None:
    """Copy reader to writer until EOF; data that contains `hold` waits `delay` first."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            if hold and hold in data:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def late_close(upstream_port: int, delay: float, client_tls: ssl.SSLContext | None = None,
               server_name: str | None = None) -> Handler:
    """A proxy in front of a real XMPP server that holds the server's closing
    </stream:stream> back for `delay` seconds: a server slow to end its stream. Serve it with
    TLS and give client_tls to stand in front of a direct-TLS port (it sees the plaintext)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", upstream_port, ssl=client_tls, server_hostname=server_name
        )
        try:
            await asyncio.gather(
                _pipe(reader, up_writer),
                _pipe(up_reader, writer, hold=b"</stream:stream>", delay=delay),
            )
        finally:
            up_writer.close()

    return handler


def forward(upstream_port: int) -> Handler:
    """A plain TCP forwarder to a real server's port: the same server on another port."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    return handler


def greeting(data: bytes, then: str = "stall") -> Handler:
    """Send data as soon as the client connects (a banner), then behave as `then`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await scripted(then=then)(reader, writer)

    return handler


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1", port: int = 0,
) -> AsyncIterator[int]:
    """Run handler on a loopback port (a free one unless given); yields the port.
    Connections are torn down on exit so a stalled handler never outlives its test."""
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

    server = await asyncio.start_server(wrapped, host, port, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def websocket(*frames: bytes, subprotocol: str = "mqtt", then: str = "stall") -> Handler:
    """Complete a WebSocket upgrade (echoing `subprotocol`), then for each entry read the
    client's next bytes and answer with it (raw frames: a close, a masked frame, ...)."""
    import base64
    import hashlib

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
                         usedforsecurity=False).digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n"
            + (f"Sec-WebSocket-Protocol: {subprotocol}\r\n".encode() if subprotocol else b"")
            + b"\r\n"
        )
        await writer.drain()
        await scripted(*frames, then=then)(reader, writer)

    return handler


def close_frame(code: int, reason: str = "") -> bytes:
    """A server's (unmasked) WebSocket close frame."""
    payload = code.to_bytes(2, "big") + reason.encode()
    return bytes([0x88, len(payload)]) + payload

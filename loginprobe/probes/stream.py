"""A connection's bytes on a non-blocking socket, TLS by ssl.SSLObject over memory BIOs, and
every departure and arrival stamped where it happens: the kernel's receive timestamp where
the platform gives one, the send call that puts our bytes on the wire, never the moment a
coroutine got round to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

# Linux's SO_TIMESTAMPNS (asm-generic/socket.h): the receive time of each packet, in
# recvmsg's ancillary data. Python 3.11 does not name it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")  # struct timespec: tv_sec, tv_nsec
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
# One read takes at most two full TLS records (2 x (16 KiB + overhead)): the buffer budget
# per connection. asyncio's own TLS transport zero-filled 256 KiB for every connection.
READ_BYTES = 2 * (16 * 1024 + 256)
# A kernel time this far behind the read that returned it is not trusted (a clock step).
_STALE_NS = 10_000_000_000
_CLOSE_READS = 4  # reads to empty the receive queue on close, so the close is a FIN not a RST

Clock = Callable[[], int]


def enable_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each received packet. False where it cannot: then arrivals
    are stamped when the read callback runs (`socket` clock)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except (OSError, AttributeError):
        return False
    return True


def kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The receive time (CLOCK_REALTIME, ns) in recvmsg's ancillary data, if there is one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return int(sec * 1_000_000_000 + nsec)
    return None


def to_clock(stamp: int, now: int, realtime: int) -> int | None:
    """A kernel realtime stamp on the attempt's clock, given both clocks read at one instant
    (now, realtime). None if it cannot be right: in the future, or far in the past."""
    at = stamp - (realtime - now)
    if at > now:
        # Both clocks are read after the packet arrived; a later stamp is rounding (a few ns
        # apart) or a clock step: keep the read's own time.
        return now if at - now < 1_000_000 else None
    return at if now - at < _STALE_NS else None


class Stream:
    """The socket's bytes, read into an asyncio.StreamReader as they arrive, written at once.
    After start_tls() both go through the TLS object. Timestamps are on `clock` (ns)."""

    def __init__(
        self, sock: socket.socket, clock: Clock = time.monotonic_ns,
        realtime: Clock = time.time_ns, limit: int = 2**16,
    ) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.clock = clock
        self.realtime = realtime
        self.kernel = enable_timestamps(sock)
        self.reader = asyncio.StreamReader(limit=limit, loop=self.loop)
        self.reader.set_transport(self)  # type: ignore[arg-type]  # pause/resume_reading only
        self.writer = StreamWriter(self)
        self.ssl_object: ssl.SSLObject | None = None
        self._incoming = self._outgoing = ssl.MemoryBIO()
        self._handshaking = False
        self._arrival: asyncio.Future[None] | None = None  # the handshake waits on it
        self._pending = bytearray()  # accepted from the caller, not yet by the kernel
        self._drained: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._reading = False
        self.closed = False
        # When our latest bytes left; the first arrival since (the answer to them); the
        # latest arrival handed to the reader, and whether the kernel stamped it.
        self.sent_ns: int | None = None
        self.answer_ns: int | None = None
        self.arrived_ns: int | None = None
        self.arrived_by_kernel = False
        self._sends = 0  # how many times our bytes left
        self._answered = 0  # the send whose answer was last counted
        self._resume_reading()

    # ---- reading ---------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._readable)
            self._reading = True

    def pause_reading(self) -> None:
        """The reader holds more than it may: stop reading until the probe takes some."""
        if self._reading and not self._handshaking:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def resume_reading(self) -> None:
        self._resume_reading()

    def _readable(self) -> None:
        try:
            if self.kernel:
                data, ancillary, _, _ = self.sock.recvmsg(READ_BYTES, _ANCILLARY)
            else:
                data, ancillary = self.sock.recv(READ_BYTES), []
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        now = self.clock()
        at, by_kernel = now, False
        stamp = kernel_stamp(ancillary) if ancillary else None
        if stamp is not None:
            converted = to_clock(stamp, now, self.realtime())
            if converted is not None:
                at, by_kernel = converted, True
        if not data:
            self._eof()
        elif self.ssl_object is None:
            self._deliver(data, at, by_kernel)
        else:
            self._incoming.write(data)
            if self._handshaking:
                self._arrived(at, by_kernel)
                if self._arrival is not None and not self._arrival.done():
                    self._arrival.set_result(None)
            else:
                self._decrypt(at, by_kernel)

    def _arrived(self, at: int, by_kernel: bool) -> None:
        if self.answer_ns is None and self.sent_ns is not None:
            self.answer_ns = at
        self.arrived_ns, self.arrived_by_kernel = at, by_kernel

    def _deliver(self, data: bytes, at: int, by_kernel: bool) -> None:
        self._arrived(at, by_kernel)
        self.reader.feed_data(data)

    def _decrypt(self, at: int, by_kernel: bool) -> None:
        assert self.ssl_object is not None
        chunks, eof = [], False
        while True:
            try:
                chunk = self.ssl_object.read(READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the server's close_notify
                eof = True
                break
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        if self._outgoing.pending:  # a post-handshake message (key update) wants an answer
            self._send(self._outgoing.read(), stamp=False)
        # Session tickets and other TLS-only records carry no data: not an answer to us.
        if chunks:
            self._deliver(b"".join(chunks), at, by_kernel)
        if eof:
            self._eof()

    def _eof(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False
        self.reader.feed_eof()
        self._wake(ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False
        self.reader.set_exception(exc)
        self._wake(exc)

    def _wake(self, exc: BaseException) -> None:
        for waiter in (self._arrival, self._drained):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

    # ---- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            raise BrokenPipeError("the connection is closed")
        if self.ssl_object is not None:
            self.ssl_object.write(data)
            data = self._outgoing.read()
        self._send(data)

    def _send(self, data: bytes, stamp: bool = True) -> None:
        if self._error is not None:
            raise self._error
        if self._pending:  # still waiting for the kernel to take earlier bytes
            self._pending += data
            return
        # Stamped just before the call: on a connection with TCP_NODELAY and room in the
        # send buffer, the segment leaves within it.
        before = self.clock()
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(exc)
            raise
        if stamp:
            self._sent(before)
        if sent < len(data):
            self._pending = bytearray(data[sent:])
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _sent(self, at: int) -> None:
        self.sent_ns, self.answer_ns = at, None
        self._sends += 1

    def exchange_ns(self) -> int | None:
        """The server's time for our latest request, counted once: our last byte out -> the
        first bytes of its answer in. None before an answer, or when already counted."""
        if self.sent_ns is None or self.answer_ns is None or self._answered == self._sends:
            return None
        self._answered = self._sends
        return self.answer_ns - self.sent_ns

    def _writable(self) -> None:
        before = self.clock()
        try:
            sent = self.sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.loop.remove_writer(self.sock.fileno())
            self._fail(exc)
            return
        del self._pending[:sent]
        if not self._pending:
            # The last of our bytes left now, not when we asked.
            self._sent(before)
            self.loop.remove_writer(self.sock.fileno())
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if self._pending:
            self._drained = self.loop.create_future()
            await self._drained

    # ---- TLS -------------------------------------------------------------------------------

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str) -> Handshake:
        """The TLS handshake on this connection; raises what the handshake raised (ssl.SSLError,
        ConnectionResetError). Returns when its flights left and arrived."""
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl_object = ctx.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        shake = Handshake()
        self._handshaking = True
        self._resume_reading()  # the handshake needs every byte, whatever the reader holds
        try:
            while not self._handshake_step():
                if self._outgoing.pending:
                    self._send(self._outgoing.read())
                    shake.sent(self)
                if self._error is not None:
                    raise self._error
                self._arrival = self.loop.create_future()
                await self._arrival
                shake.arrived(self)
            if self._outgoing.pending:  # the client Finished (and certificate, if asked)
                self._send(self._outgoing.read())
                shake.sent(self)
            await self.drain()
        finally:
            self._handshaking = False
            self._arrival = None
        if self._incoming.pending:  # the server spoke first, in the same read as its Finished
            self._decrypt(self.arrived_ns or self.clock(), self.arrived_by_kernel)
        return shake

    def _handshake_step(self) -> bool:
        """True once the handshake is complete; False when it waits for the server."""
        assert self.ssl_object is not None
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError:
            # Tell the server why we stop (the alert OpenSSL wrote), as any client would.
            if self._outgoing.pending and not self._pending and self._error is None:
                with contextlib.suppress(OSError):
                    self.sock.send(self._outgoing.read())
            raise
        return True

    # ---- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        if self._reading:
            self.loop.remove_reader(fd)
            self._reading = False
        if self._pending:
            self.loop.remove_writer(fd)
        try:
            if self.ssl_object is not None and self._error is None and not self._handshaking:
                with contextlib.suppress(ssl.SSLError):
                    self.ssl_object.unwrap()  # our close_notify; we do not wait for theirs
                if self._outgoing.pending and not self._pending:
                    self.sock.send(self._outgoing.read())
            for _ in range(_CLOSE_READS):
                if not self.sock.recv(READ_BYTES):
                    break
        except OSError:
            pass
        self.sock.close()
        self.reader.feed_eof()
        self._wake(ConnectionResetError("the connection is closed"))


class Handshake:
    """When the TLS handshake's flights left and arrived, on the stream's clock."""

    def __init__(self) -> None:
        self.first_sent_ns: int | None = None  # the ClientHello
        self.last_sent_ns: int | None = None  # the client's Finished
        self.first_answer_ns: int | None = None  # the server's first flight, first bytes
        self.last_arrived_ns: int | None = None  # the server's last handshake record
        self.server_ns: int | None = None  # our flights out -> the server's answers in, summed
        self.by_kernel = True

    def sent(self, stream: Stream) -> None:
        if self.first_sent_ns is None:
            self.first_sent_ns = stream.sent_ns
        self.last_sent_ns = stream.sent_ns

    def arrived(self, stream: Stream) -> None:
        if self.first_answer_ns is None:
            self.first_answer_ns = stream.answer_ns
        self.last_arrived_ns = stream.arrived_ns
        self.by_kernel = self.by_kernel and stream.arrived_by_kernel
        exchange = stream.exchange_ns()
        if exchange is not None:
            self.server_ns = (self.server_ns or 0) + exchange


class StreamWriter:
    """The writing half, shaped like asyncio.StreamWriter for the calls a probe makes."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    async def drain(self) -> None:
        await self._stream.drain()

    def close(self) -> None:
        self._stream.close()

    def is_closing(self) -> bool:
        return self._stream.closed

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        stream = self._stream
        if name == "ssl_object":
            return stream.ssl_object
        if name == "socket":
            return stream.sock
        if name == "peername":
            try:
                return stream.sock.getpeername()
            except OSError:
                return default
        if name == "sockname":
            try:
                return stream.sock.getsockname()
            except OSError:
                return default
        return default

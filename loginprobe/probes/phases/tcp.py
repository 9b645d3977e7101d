"""The tcp phase: connect, optionally bound to an interface or source address, timed by the
kernel's own measurement of the handshake where it has one."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from functools import lru_cache

from loginprobe.contract import Reason
from loginprobe.probes.attempt import Attempt, Conn, ProbeFailure
from loginprobe.probes.stream import Stream

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}
_TCPI_RTT = struct.Struct("=I")
_TCPI_RTT_OFFSET = 68  # struct tcp_info: 8 bytes of u8 fields, then 15 u32 before tcpi_rtt


def handshake_rtt_ns(sock: socket.socket) -> int | None:
    """SYN to SYN/ACK as the kernel measured it (tcpi_rtt, µs): free of the scheduling delay
    between the SYN/ACK arriving and this process being told, which grows with load."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return None
    if len(raw) < _TCPI_RTT_OFFSET + 4:
        return None
    (rtt_us,) = _TCPI_RTT.unpack_from(raw, _TCPI_RTT_OFFSET)
    return rtt_us * 1000 if rtt_us else None


@lru_cache(maxsize=1024)
def address_family(host: str) -> socket.AddressFamily | None:
    """The family of an IP address literal, None for a name. Cached: an agent probes the
    same few targets over and over, and parsing one is a tenth of a tcp:// probe's CPU."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def socket_for(attempt: Attempt, address: str) -> socket.socket:
    sock = socket.socket(address_family(address) or socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Login exchanges are small request/response turns: Nagle would add delay we'd
        # then misreport as server latency.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opts = attempt.options
        if opts.interface:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, opts.interface.encode() + b"\0"
            )
        if opts.source_address:
            sock.bind((opts.source_address, 0))
    except OSError as exc:
        sock.close()
        where = opts.interface or opts.source_address
        raise ProbeFailure(
            Reason.TCP_UNREACHABLE, f"cannot bind to {where}: {exc.strerror or exc}"
        ) from None
    return sock


async def connect_socket(attempt: Attempt, address: str, port: int) -> socket.socket:
    """The tcp phase. Returns the connected socket; failures become ProbeFailure with the
    errno's reason."""
    loop = asyncio.get_running_loop()
    attempt.resolved_address = address
    attempt.port = port
    with attempt.phase("tcp") as phase:
        sock = socket_for(attempt, address)
        try:
            await loop.sock_connect(sock, (address, port))
        except BaseException as exc:
            sock.close()
            if isinstance(exc, ConnectionRefusedError):
                raise ProbeFailure(
                    Reason.TCP_REFUSED, f"connection to {address} port {port} refused"
                ) from None
            if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
                raise ProbeFailure(
                    Reason.TCP_UNREACHABLE, f"{address} port {port}: {exc.strerror}"
                ) from None
            if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
                raise ProbeFailure(
                    Reason.TCP_TIMEOUT, f"{address} port {port}: no answer to the SYN"
                ) from None
            raise
        phase.measured_ns = handshake_rtt_ns(sock)
        # The local port lets an operator find this very connection in a packet capture.
        local = sock.getsockname()
        attempt.note("*", f"TCP connected to {address} port {port} from {local[0]} port {local[1]}")
    return sock


async def connect(attempt: Attempt, address: str, port: int) -> Conn:
    """The tcp phase, then a stream on the connection for the protocol to talk over."""
    return await stream(attempt, await connect_socket(attempt, address, port))


async def stream(attempt: Attempt, sock: socket.socket) -> Conn:
    """A stream on a connected socket, for the protocol to talk over, its bytes stamped as
    they leave and arrive (probes/stream.py)."""
    wire = Stream(sock, attempt.clock, limit=2**16)
    return Conn(attempt, wire.reader, wire.writer, wire)

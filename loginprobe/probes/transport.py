"""The transport a login runs over: (ping), dns, tcp and, for direct TLS, tls, each timed."""

from __future__ import annotations

from loginprobe.probes.attempt import Attempt, Conn
from loginprobe.probes.phases import dns, tcp, tls
from loginprobe.probes.phases.ping import ping


async def establish(attempt: Attempt, alpn: tuple[str, ...] = ()) -> Conn:
    """Resolve the target (SRV first where it has one), connect, and for direct TLS complete
    the handshake. Every step is its own timed phase."""
    address, port = await _address(attempt)
    conn = await tcp.connect(attempt, address, port)
    if attempt.target.tls_mode == "direct":
        with attempt.phase("tls"):
            await tls.handshake(attempt, conn, attempt.target.tls_server_name, alpn)
    return conn


async def connect_only(attempt: Attempt) -> None:
    """Resolve and connect, then close: for targets whose check is the TCP handshake alone.
    No stream is built on the socket, since nothing will be said over it; that is half
    the CPU of such a probe."""
    address, port = await _address(attempt)
    sock = await tcp.connect_socket(attempt, address, port)
    sock.close()


async def _address(attempt: Attempt) -> tuple[str, int]:
    """The dns (and ping) phases: the address and port to connect to."""
    target = attempt.target
    host, port = target.host, target.port
    if tcp.address_family(host) is not None and not target.srv:
        addresses = [host]  # nothing to look up: the dns phase is absent, not zero
    else:
        with attempt.phase("dns"):
            if target.srv:
                found = await dns.resolve_srv(attempt, target.srv)
                if found:
                    host, port = found
            addresses = await dns.resolve_addresses(attempt, host)
            if attempt.dns and target.srv and found:
                attempt.dns.srv = f"{host}:{port}"
    if attempt.options.ping:
        await ping(attempt, addresses[0])
    return addresses[0], port

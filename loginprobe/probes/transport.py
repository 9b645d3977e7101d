"""The transport a login runs over: (ping), dns, tcp and, for direct TLS, tls, each timed."""

from __future__ import annotations

import socket

from loginprobe.contract import Reason
from loginprobe.probes.attempt import Attempt, Conn, ProbeFailure
from loginprobe.probes.phases import dns, tcp, tls
from loginprobe.probes.phases.ping import ping

# Connection failures after which a client moves on to the next SRV target (RFC 2782).
_NEXT_TARGET = (Reason.TCP_REFUSED, Reason.TCP_UNREACHABLE, Reason.TCP_TIMEOUT)


async def establish(attempt: Attempt, alpn: tuple[str, ...] = ()) -> Conn:
    """Resolve the target (SRV first where it has one), connect, and for direct TLS complete
    the handshake. Every step is its own timed phase."""
    sock = await _connect(attempt)
    conn = await tcp.stream(attempt, sock)
    if attempt.target.tls_mode == "direct":
        with attempt.phase("tls"):
            await tls.handshake(attempt, conn, attempt.target.tls_server_name, alpn)
    return conn


async def connect_only(attempt: Attempt) -> None:
    """Resolve and connect, then close: for targets whose check is the TCP handshake alone.
    No stream is built on the socket, since nothing will be said over it; that is half
    the CPU of such a probe."""
    sock = await _connect(attempt)
    sock.close()


async def _connect(attempt: Attempt) -> socket.socket:
    """The dns (and ping) and tcp phases. With SRV, the targets are tried in their order
    until one accepts; each refused one is in the transcript, the one that answered in the
    DNS facts, and only the connection that counts is the tcp phase."""
    targets, addresses = await _targets(attempt)
    if attempt.options.ping:
        await ping(attempt, addresses[0])
    for i, (host, port) in enumerate(targets):
        if i:
            # Not a phase of its own: the dns phase was the lookup of the first choice.
            addresses = await dns.resolve_addresses(attempt, host)
        try:
            sock = await tcp.connect_socket(attempt, addresses[0], port)
        except ProbeFailure as failure:
            if failure.reason not in _NEXT_TARGET or i == len(targets) - 1:
                raise
            attempt.note("*", f"SRV target {host}:{port}: {failure.message}; trying the next")
            attempt.phases.pop()  # the tcp phase of a target given up on
            continue
        if attempt.dns is not None and attempt.target.srv and len(targets) > 1:
            attempt.dns.srv = f"{host}:{port}"
            attempt.note("*", f"SRV target {host}:{port} answered")
        return sock
    raise AssertionError("unreachable: the last target's failure is raised")


async def _targets(attempt: Attempt) -> tuple[list[tuple[str, int]], list[str]]:
    """The dns phase: the (host, port) targets in the order to try them, and the first
    one's addresses."""
    target = attempt.target
    host, port = target.host, target.port
    if tcp.address_family(host) is not None and not target.srv:
        return [(host, port)], [host]  # nothing to look up: the dns phase is absent
    targets = [(host, port)]
    with attempt.phase("dns"):
        found = await dns.resolve_srv(attempt, target.srv) if target.srv else None
        if found:
            targets = found
        addresses = await dns.resolve_addresses(attempt, targets[0][0])
        if attempt.dns and found:
            attempt.dns.srv = "{}:{}".format(*targets[0])
    return targets, addresses

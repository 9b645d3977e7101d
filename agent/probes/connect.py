"""The phases every probe starts with: (ping), dns, tcp and, for direct TLS, tls."""

from __future__ import annotations

import ipaddress

from agent.probes import dns, tcp, tls
from agent.probes.base import Attempt, Conn
from agent.probes.ping import ping


async def open_connection(attempt: Attempt, alpn: tuple[str, ...] = ()) -> Conn:
    """Resolve the target (SRV first where it has one), connect, and for direct TLS complete
    the handshake. Every step is its own timed phase."""
    target = attempt.target
    host, port = target.host, target.port
    if _is_address(host) and not target.srv:
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
    conn = await tcp.connect(attempt, addresses[0], port)
    if target.tls_mode == "direct":
        with attempt.phase("tls"):
            await tls.handshake(attempt, conn, target.tls_server_name, alpn)
    return conn


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

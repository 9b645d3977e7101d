"""Addresses written by users: a DNS resolver (IP[:PORT]) and a listener (HOST:PORT)."""

from __future__ import annotations

import ipaddress


def parse_resolver(text: str) -> tuple[str, int]:
    """IP, IP:PORT, [IPv6] or [IPv6]:PORT; raises ValueError saying what was expected."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(rest.removeprefix(":"), text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(
            f"{text!r}: expected an IP address with an optional port, "
            "e.g. 192.0.2.53 or 192.0.2.53:5353 or [2001:db8::53]:53"
        ) from None


def _port(text: str, whole: str) -> int:
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise ValueError(f"{whole!r}: {text!r} is not a port number (1-65535)")


def split_host_port(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT, for addresses in config files."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:7443")
    return host, int(port)

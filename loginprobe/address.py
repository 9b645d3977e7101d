"""Addresses written by users: a DNS resolver (IP[:PORT]) and a listener (HOST:PORT)."""

from __future__ import annotations

import ipaddress
import socket


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


def check_interface(name: str) -> str:
    """A network interface of this machine, or ValueError listing the ones there are."""
    names = sorted(n for _, n in socket.if_nameindex())
    if name not in names:
        raise ValueError(f"{name!r}: no such network interface on this machine; "
                         f"it has {', '.join(names) or 'none'}")
    return name


def check_source_address(text: str) -> str:
    """An IP address this machine has, to bind connections to; ValueError otherwise."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(address), 0))
        except OSError:
            raise ValueError(
                f"{address} is not an address of this machine (`ip -brief address` lists them)"
            ) from None
    return str(address)

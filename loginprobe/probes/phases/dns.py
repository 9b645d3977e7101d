"""The dns phase: A/AAAA (and SRV for XMPP) through dnspython, with the address and TTL kept."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import dns.rrset

from loginprobe.contract import Reason
from loginprobe.probes.attempt import Attempt, ProbeFailure
from loginprobe.result import DNSInfo

T = TypeVar("T")

HOSTS_FILE = Path("/etc/hosts")


def _hosts_lookup(name: str) -> list[str]:
    """The system resolver reads /etc/hosts before DNS (nsswitch 'files dns'); so do we,
    when no explicit resolver was asked for."""
    try:
        lines = HOSTS_FILE.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name.lower() in (f.lower() for f in fields[1:]):
            found.append(fields[0])
    return found


async def _within(awaitable: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (dnspython's signature)
    """dnspython's contract for its sockets: a timeout is dns.exception.Timeout."""
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise dns.exception.Timeout(timeout=timeout) from None  # type: ignore[no-untyped-call]


class _OwnSocket:
    """What dnspython asks of any of its sockets, answered by the socket we made."""

    sock: socket.socket

    async def close(self) -> None:
        self.sock.close()

    async def getpeername(self) -> Any:
        return self.sock.getpeername()

    async def getsockname(self) -> Any:
        return self.sock.getsockname()


class _BoundDatagram(_OwnSocket, dns.asyncbackend.DatagramSocket):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.family, socket.SOCK_DGRAM)
        self.sock = sock

    async def sendto(self, what: bytes, destination: Any, timeout: float | None) -> int:  # noqa: ASYNC109 (dnspython's signature)
        loop = asyncio.get_running_loop()
        await _within(loop.sock_sendto(self.sock, what, destination), timeout)
        return len(what)

    async def recvfrom(self, size: int, timeout: float | None) -> tuple[bytes, Any]:  # noqa: ASYNC109 (dnspython's signature)
        loop = asyncio.get_running_loop()
        return await _within(loop.sock_recvfrom(self.sock, size), timeout)


class _BoundStream(_OwnSocket, dns.asyncbackend.StreamSocket):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.family, socket.SOCK_STREAM)
        self.sock = sock

    async def sendall(self, what: bytes, timeout: float | None) -> None:  # noqa: ASYNC109 (dnspython's signature)
        await _within(asyncio.get_running_loop().sock_sendall(self.sock, what), timeout)

    async def recv(self, size: int, timeout: float | None) -> bytes:  # noqa: ASYNC109 (dnspython's signature)
        return await _within(asyncio.get_running_loop().sock_recv(self.sock, size), timeout)


class _BoundBackend(dns.asyncbackend.Backend):
    """dnspython's async I/O on sockets bound to one interface: a path's DNS queries (a
    carrier's resolver often answers its own customers only) must leave by that path too,
    not by the default route. dnspython has no option for this; its public Backend and
    socket classes let the sockets be ours."""

    def __init__(self, interface: str) -> None:
        self.interface = interface

    def name(self) -> str:
        return "asyncio"

    async def make_socket(
        self, af: int, socktype: int, proto: int = 0, source: Any = None,
        destination: Any = None, timeout: float | None = None,  # noqa: ASYNC109 (dnspython's)
        *_: Any, **__: Any,
    ) -> dns.asyncbackend.Socket:
        sock = socket.socket(af, socktype, proto)
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0"
            )
            sock.setblocking(False)
            if source:
                sock.bind(source)
            if socktype == socket.SOCK_DGRAM:
                return _BoundDatagram(sock)
            await _within(asyncio.get_running_loop().sock_connect(sock, destination), timeout)
            return _BoundStream(sock)
        except BaseException:
            sock.close()
            raise

    def datagram_connection_required(self) -> bool:
        return False

    async def sleep(self, interval: float) -> None:
        await asyncio.sleep(interval)

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:  # noqa: ASYNC109
        return await _within(awaitable, timeout)


def _backend(attempt: Attempt) -> dns.asyncbackend.Backend | None:
    interface = attempt.options.interface
    return _BoundBackend(interface) if interface else None


def _resolver(attempt: Attempt) -> dns.asyncresolver.Resolver:
    if attempt.options.resolver is None:
        try:
            return dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise ProbeFailure(
                Reason.DNS_SERVFAIL, f"no system resolver is configured (/etc/resolv.conf): {exc}"
            ) from None
    ip, port = attempt.options.resolver
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = [ip]
    res.port = port
    return res


async def _query(
    attempt: Attempt, res: dns.asyncresolver.Resolver, name: str, rdtype: str, lifetime: float
) -> dns.rrset.RRset | None:
    """One query on the attempt's path, its failure turned into a reason; None for 'exists
    but no such record'."""
    servers = ", ".join(f"{ns}:{res.port}" for ns in res.nameservers)
    if attempt.options.resolver is None:
        servers = f"the system resolver ({servers or 'none'} in /etc/resolv.conf)"
    asked = f"{name} {rdtype} to {servers} over UDP (TCP only for a truncated answer)"
    attempt.note("*", f"DNS query {asked}")
    attempt.waiting_for = f"an answer to {asked}"
    try:
        answer = await res.resolve(
            name, rdtype, lifetime=lifetime, search=False,
            source=attempt.options.source_address, backend=_backend(attempt),
        )
    except dns.resolver.NXDOMAIN:
        raise ProbeFailure(
            Reason.DNS_NXDOMAIN, f"{name}: NXDOMAIN (the name does not exist)"
        ) from None
    except dns.resolver.NoAnswer:
        return None
    except dns.resolver.NoNameservers as exc:
        raise ProbeFailure(Reason.DNS_SERVFAIL, f"{name} {rdtype}: {exc}") from None
    except dns.exception.Timeout:
        raise ProbeFailure(
            Reason.DNS_TIMEOUT, f"no answer to {asked} within {lifetime:.1f}s"
        ) from None
    attempt.waiting_for = None
    return answer.rrset


def _lifetime(attempt: Attempt) -> float:
    # The caller's deadline governs; dnspython just must not give up sooner than it.
    return max(0.05, attempt.options.timeout - attempt.now() / 1e9)


def srv_order(
    records: list[tuple[int, int, str, int]], rng: random.Random | None = None
) -> list[tuple[str, int]]:
    """(priority, weight, host, port) records in the order RFC 2782 has a client try them:
    lowest priority first; within one priority, a weighted random draw (weight 0 records
    get a small chance), record by record."""
    rng = rng or random.Random()
    ordered: list[tuple[str, int]] = []
    for priority in sorted({r[0] for r in records}):
        # Zero weights first, as RFC 2782 asks, so they get their small chance.
        left = sorted((r for r in records if r[0] == priority), key=lambda r: r[1])
        while left:
            total = sum(r[1] for r in left)
            pick = rng.randint(0, total)
            running = 0
            for i, record in enumerate(left):
                running += record[1]
                if running >= pick:
                    ordered.append((record[2], record[3]))
                    del left[i]
                    break
    return ordered


async def resolve_srv(attempt: Attempt, srv_name: str) -> list[tuple[str, int]] | None:
    """The SRV targets as (host, port) in the order to try them (RFC 2782, RFC 6120 3.2),
    or None when there is no SRV record to follow."""
    res = _resolver(attempt)
    try:
        rrset = await _query(attempt, res, srv_name, "SRV", _lifetime(attempt))
    except ProbeFailure as failure:
        if failure.reason is Reason.DNS_NXDOMAIN:
            attempt.note("*", f"DNS {srv_name} SRV: NXDOMAIN, falling back to the domain")
            return None
        raise
    if not rrset:
        attempt.note("*", f"DNS {srv_name} SRV: no records, falling back to the domain")
        return None
    records = [
        (int(r.priority), int(r.weight), r.target.to_text(omit_final_dot=True), int(r.port))
        for r in rrset
    ]
    targets = [(host, port) for host, port in srv_order(records) if host not in ("", ".")]
    if not targets:
        raise ProbeFailure(
            Reason.DNS_NO_ANSWER, f"{srv_name}: SRV target '.' (service decidedly not available)"
        )
    shown = ", ".join(f"{host}:{port}" for host, port in targets)
    attempt.note("*", f"DNS {srv_name} SRV -> {shown} (ttl {rrset.ttl})")
    return targets


async def resolve_addresses(attempt: Attempt, host: str) -> list[str]:
    """Addresses for host, IPv4 first; an IP literal needs no lookup."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    resolver_name = (
        "system" if attempt.options.resolver is None else "{}:{}".format(*attempt.options.resolver)
    )
    info = attempt.dns or DNSInfo(name=host, resolver=resolver_name)
    info.name = host
    attempt.dns = info
    if attempt.options.resolver is None:
        from_hosts = _hosts_lookup(host)
        if from_hosts:
            attempt.note("*", f"{host} found in {HOSTS_FILE}: {', '.join(from_hosts)}")
            info.addresses = from_hosts
            info.resolver = str(HOSTS_FILE)
            return from_hosts
    res = _resolver(attempt)
    lifetime = _lifetime(attempt)
    results = await asyncio.gather(
        _query(attempt, res, host, "A", lifetime),
        _query(attempt, res, host, "AAAA", lifetime),
        return_exceptions=True,
    )
    addresses: list[str] = []
    ttls: list[int] = []
    failures: list[ProbeFailure] = []
    for rrset in results:
        if isinstance(rrset, ProbeFailure):
            failures.append(rrset)
        elif isinstance(rrset, BaseException):
            raise rrset
        elif rrset is not None:
            addresses.extend(r.to_text() for r in rrset)
            ttls.append(rrset.ttl)
    if not addresses:
        if failures:
            # NXDOMAIN says more than a timeout of the other query
            failures.sort(key=lambda f: f.reason is not Reason.DNS_NXDOMAIN)
            raise failures[0]
        raise ProbeFailure(
            Reason.DNS_NO_ANSWER, f"{host}: the name exists but has no A or AAAA record"
        )
    info.addresses = addresses
    info.ttl = min(ttls)
    attempt.note("*", f"DNS {host} -> {', '.join(addresses)} (ttl {info.ttl})")
    return addresses

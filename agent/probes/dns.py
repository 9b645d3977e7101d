"""The dns phase: A/AAAA (and SRV for XMPP) through dnspython, with the address and TTL kept."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import dns.rrset

from agent.probes.base import Attempt, ProbeFailure
from loginprobe.reasons import Reason
from loginprobe.result import DNSInfo

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
    res: dns.asyncresolver.Resolver, name: str, rdtype: str, lifetime: float
) -> dns.rrset.RRset | None:
    """One query, its failure turned into a reason; None for 'exists but no such record'."""
    try:
        answer = await res.resolve(name, rdtype, lifetime=lifetime, search=False)
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
            Reason.DNS_TIMEOUT, f"{name} {rdtype}: no answer within {lifetime:.1f}s"
        ) from None
    return answer.rrset


def _lifetime(attempt: Attempt) -> float:
    # The caller's deadline governs; dnspython just must not give up sooner than it.
    return max(0.05, attempt.options.timeout - attempt.now() / 1e9)


async def resolve_srv(attempt: Attempt, srv_name: str) -> tuple[str, int] | None:
    """The preferred (host, port) of an SRV record, or None when there is none to follow."""
    res = _resolver(attempt)
    try:
        rrset = await _query(res, srv_name, "SRV", _lifetime(attempt))
    except ProbeFailure as failure:
        if failure.reason is Reason.DNS_NXDOMAIN:
            attempt.note("*", f"DNS {srv_name} SRV: NXDOMAIN, falling back to the domain")
            return None
        raise
    if not rrset:
        attempt.note("*", f"DNS {srv_name} SRV: no records, falling back to the domain")
        return None
    # RFC 2782: lowest priority first, then the heaviest weight (deterministic for a probe).
    best = min(rrset, key=lambda r: (r.priority, -r.weight))
    host = best.target.to_text(omit_final_dot=True)
    if host in ("", "."):
        raise ProbeFailure(
            Reason.DNS_NO_ANSWER, f"{srv_name}: SRV target '.' (service decidedly not available)"
        )
    attempt.note("*", f"DNS {srv_name} SRV -> {host}:{best.port} (ttl {rrset.ttl})")
    return host, int(best.port)


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
        _query(res, host, "A", lifetime),
        _query(res, host, "AAAA", lifetime),
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

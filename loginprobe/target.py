"""Target URLs (CONTRACT.md section 1): one URL names one login check."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from loginprobe.protocols import BY_NAME, SCHEMES


class TargetError(ValueError):
    """A target URL that cannot be probed; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Target:
    url: str  # as given, never with a password
    scheme: str
    protocol: str  # xmpp, mqtt, http, tls, tcp
    tls_mode: str  # none, starttls, direct
    host: str  # the name (or address) to resolve and connect to
    port: int
    user: str = ""
    domain: str = ""  # XMPP: the JID's domain, sent in the stream header
    path: str = "/"  # "" for xmpp+ws:// without a path: discovered (XEP-0156)
    srv: str | None = None  # SRV name to try first (XMPP without an explicit port)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def tls_server_name(self) -> str:
        """The name the certificate must cover: the XMPP domain, else the host."""
        return self.domain or self.host

    @property
    def needs_password(self) -> bool:
        return BY_NAME[self.protocol].logs_in


# What a DNS name or an IP literal may hold: letters (IDN too), digits, '-', '_', '.', ':'
# (IPv6) and '%' (a zone index).
_HOST = re.compile(r"[\w.:%-]+")


def _check_host(host: str, url: str) -> None:
    if not _HOST.fullmatch(host):
        bad = next(c for c in host if not _HOST.fullmatch(c))
        raise TargetError(
            f"host {host!r} in {url!r} holds {bad!r}, which no host name has: "
            "check the URL for a typo"
        )


def parse_target(url: str) -> Target:
    """Parse and validate a target URL, raising TargetError with a fix-it message."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise TargetError(f"invalid target URL {url!r}: {exc}") from None
    try:
        explicit_port = parts.port
    except ValueError:  # urllib's words are "Port could not be cast to integer value"
        port_text = parts.netloc.rpartition(":")[2]
        raise TargetError(
            f"port {port_text!r} in {url!r} is not a port number: use 1 to 65535"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TargetError(
            f"unsupported scheme {parts.scheme!r} in {url!r}: use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if parts.password is not None:
        raise TargetError(
            "a password must never be part of the URL: pass it with --password-env NAME "
            "or --password-file PATH"
        )
    proto, spec = SCHEMES[scheme]
    protocol = proto.name
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetError(f"no host in {url!r}: expected {scheme}://[USER@]HOST[:PORT]")
    _check_host(host, url)
    user = unquote(parts.username) if parts.username is not None else ""
    if proto.needs_user and not user:
        raise TargetError(f"no user in {url!r}: expected {scheme}://USER@DOMAIN")
    if spec.default_port is None and explicit_port is None:
        raise TargetError(f"no port in {url!r}: expected {scheme}://HOST:PORT")
    if explicit_port == 0:
        raise TargetError(f"port 0 in {url!r} cannot be connected to")

    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - set(proto.query))
    if unknown:
        allowed = ", ".join(sorted(proto.query)) or "none"
        raise TargetError(
            f"unknown query parameter {unknown[0]!r} in {url!r} (allowed for {scheme}: {allowed})"
        )
    for key, values in proto.query.items():
        if values is None:
            continue
        value = params.setdefault(key, values[0])
        if value not in values:
            raise TargetError(
                f"unsupported {proto.query_names.get(key, key)} {value!r} in {url!r}: "
                f"use {' or '.join(values)}"
            )

    domain = ""
    srv = None
    if proto.domain_is_host:
        domain = host
        host = params.get("host", "").rstrip(".") or domain
    if spec.srv and explicit_port is None and "host" not in params:
        srv = f"{spec.srv}.{domain or host}"
    port = explicit_port if explicit_port is not None else spec.default_port
    assert port is not None
    return Target(
        url=url.strip(),
        scheme=scheme,
        protocol=protocol,
        tls_mode=spec.tls_mode,
        host=host,
        port=port,
        user=user,
        domain=domain,
        path=parts.path or proto.default_path,
        srv=srv,
        params=params,
    )

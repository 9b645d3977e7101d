"""Target URLs (CONTRACT.md section 1): one URL names one login check."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

# scheme -> (protocol, TLS mode, default port)
_SCHEMES: dict[str, tuple[str, str, int | None]] = {
    "xmpp": ("xmpp", "starttls", 5222),
    "xmpps": ("xmpp", "direct", 5223),
    "mqtt": ("mqtt", "none", 1883),
    "mqtts": ("mqtt", "direct", 8883),
    "http": ("http", "none", 80),
    "https": ("http", "direct", 443),
    "tcp": ("tcp", "none", None),
    "tls": ("tls", "direct", None),
}
_QUERY_KEYS: dict[str, frozenset[str]] = {
    "xmpp": frozenset({"host"}),
    "mqtt": frozenset({"version", "client_id"}),
    "http": frozenset({"auth"}),
    "tcp": frozenset(),
    "tls": frozenset(),
}
_SRV = {"xmpp": "_xmpp-client._tcp", "xmpps": "_xmpps-client._tcp"}


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
    path: str = "/"
    srv: str | None = None  # SRV name to try first (XMPP without an explicit port)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def tls_server_name(self) -> str:
        """The name the certificate must cover: the XMPP domain, else the host."""
        return self.domain or self.host

    @property
    def needs_password(self) -> bool:
        return self.protocol in ("xmpp", "mqtt", "http")


def parse_target(url: str) -> Target:
    """Parse and validate a target URL, raising TargetError with a fix-it message."""
    try:
        parts = urlsplit(url.strip())
        explicit_port = parts.port
    except ValueError as exc:
        raise TargetError(f"invalid target URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise TargetError(
            f"unsupported scheme {parts.scheme!r} in {url!r}: use one of "
            + ", ".join(f"{s}://" for s in _SCHEMES)
        )
    if parts.password is not None:
        raise TargetError(
            "a password must never be part of the URL: pass it with --password-env NAME "
            "or --password-file PATH"
        )
    protocol, tls_mode, default_port = _SCHEMES[scheme]
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetError(f"no host in {url!r}: expected {scheme}://[USER@]HOST[:PORT]")
    user = unquote(parts.username) if parts.username is not None else ""
    if protocol == "xmpp" and not user:
        raise TargetError(f"no user in {url!r}: expected {scheme}://USER@DOMAIN")
    if protocol in ("tcp", "tls") and explicit_port is None:
        raise TargetError(f"no port in {url!r}: expected {scheme}://HOST:PORT")
    if explicit_port == 0:
        raise TargetError(f"port 0 in {url!r} cannot be connected to")

    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - _QUERY_KEYS[protocol])
    if unknown:
        allowed = ", ".join(sorted(_QUERY_KEYS[protocol])) or "none"
        raise TargetError(
            f"unknown query parameter {unknown[0]!r} in {url!r} (allowed for {scheme}: {allowed})"
        )
    if protocol == "mqtt":
        version = params.setdefault("version", "3.1.1")
        if version not in ("3.1.1", "5"):
            raise TargetError(f"unsupported MQTT version {version!r} in {url!r}: use 3.1.1 or 5")
    if protocol == "http":
        auth = params.setdefault("auth", "basic")
        if auth not in ("basic", "json"):
            raise TargetError(f"unsupported auth {auth!r} in {url!r}: use basic or json")

    domain = ""
    srv = None
    if protocol == "xmpp":
        domain = host
        host = params.get("host", "").rstrip(".") or domain
        if explicit_port is None and "host" not in params:
            srv = f"{_SRV[scheme]}.{domain}"
    port = explicit_port if explicit_port is not None else default_port
    assert port is not None
    return Target(
        url=url.strip(),
        scheme=scheme,
        protocol=protocol,
        tls_mode=tls_mode,
        host=host,
        port=port,
        user=user,
        domain=domain,
        path=parts.path or "/",
        srv=srv,
        params=params,
    )

"""One record per login protocol: its URL schemes, default ports, SRV names and URL options.

Adding a protocol means adding its record here, its probe module under loginprobe/probes/
(named by `probe`, with an `async def probe(attempt)`), and its tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scheme:
    name: str  # as written in a URL, e.g. "xmpps"
    tls_mode: str  # none, starttls, direct
    default_port: int | None  # None: the URL must name a port
    srv: str | None = None  # SRV prefix tried first when the URL names no port


@dataclass(frozen=True)
class Protocol:
    name: str  # the `protocol` label and JSON field
    schemes: tuple[Scheme, ...]
    probe: str  # module under loginprobe.probes
    # Query keys a URL may carry: the allowed values, the first the default; None for free text.
    query: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    # How a message names a key, e.g. "MQTT version".
    query_names: Mapping[str, str] = field(default_factory=dict)
    needs_user: bool = False  # the URL must have USER@
    logs_in: bool = True  # sends credentials (so needs a password)
    domain_is_host: bool = False  # XMPP: the host part is the JID's domain; ?host= overrides
    done: str = "logged in"  # what a success did, in the result's message
    # Ports the protocol is commonly served on, in the order a follow-up tries them when the
    # URL's port refuses connections (probes/mismatch.py).
    well_known_ports: tuple[int, ...] = ()
    # The path a URL without one gets; "" where the protocol discovers it (XEP-0156).
    default_path: str = "/"
    # A held session (`loginprobe session`, checks with mode: session) can keep its login with
    # the protocol's own keepalive.
    holds: bool = False


PROTOCOLS: tuple[Protocol, ...] = (
    Protocol(
        "xmpp",
        (Scheme("xmpp", "starttls", 5222, "_xmpp-client._tcp"),
         Scheme("xmpps", "direct", 5223, "_xmpps-client._tcp")),
        probe="xmpp", query={"host": None}, needs_user=True, domain_is_host=True,
        well_known_ports=(5222, 5223, 443), holds=True,
    ),
    Protocol(
        "mqtt",
        (Scheme("mqtt", "none", 1883), Scheme("mqtts", "direct", 8883)),
        probe="mqtt", query={"version": ("3.1.1", "5"), "client_id": None},
        query_names={"version": "MQTT version"}, well_known_ports=(1883, 8883, 443),
        holds=True,
    ),
    Protocol(
        "http",
        (Scheme("http", "none", 80), Scheme("https", "direct", 443)),
        probe="http", query={"auth": ("basic", "json")},
        well_known_ports=(443, 80, 8443, 8080),
    ),
    Protocol("tcp", (Scheme("tcp", "none", None),), probe="handshake", logs_in=False,
             done="connected"),
    Protocol("tls", (Scheme("tls", "direct", None),), probe="handshake", logs_in=False,
             done="TLS established"),
    Protocol(
        "matrix",
        (Scheme("matrix", "direct", 443),),
        probe="matrix", needs_user=True, well_known_ports=(443, 8448),
    ),
    # XMPP over WebSocket (RFC 7395): the host part is the JID's domain; without a path the
    # endpoint is discovered from the domain's host-meta (XEP-0156).
    Protocol(
        "xmpp+ws",
        (Scheme("xmpp+ws", "none", 80), Scheme("xmpp+wss", "direct", 443)),
        probe="xmpp_ws", needs_user=True, domain_is_host=True, default_path="", holds=True,
    ),
    # MQTT over WebSocket (subprotocol "mqtt"), with mqtt://'s options.
    Protocol(
        "mqtt+ws",
        (Scheme("mqtt+ws", "none", 80), Scheme("mqtt+wss", "direct", 443)),
        probe="mqtt_ws", query={"version": ("3.1.1", "5"), "client_id": None},
        query_names={"version": "MQTT version"}, default_path="/mqtt", holds=True,
    ),
)

BY_NAME: dict[str, Protocol] = {p.name: p for p in PROTOCOLS}
# scheme -> (its protocol, the scheme)
SCHEMES: dict[str, tuple[Protocol, Scheme]] = {
    s.name: (p, s) for p in PROTOCOLS for s in p.schemes
}

# What a refused held session says: the protocols that keep a connection.
HOLDS_ONLY = ("XMPP and MQTT logins, also over WebSocket ("
              + ", ".join(s.name + "://" for p in PROTOCOLS if p.holds for s in p.schemes) + ")")

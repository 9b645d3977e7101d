"""The contract's closed vocabularies, in one place: reason codes with their step and hint,
phase names, network types and result values (CONTRACT.md sections 2-4 and 6)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

# Phase names in the order an attempt runs them; `upgrade` only on WebSocket transports and
# `ping` only where ICMP is enabled and permitted.
PHASES: tuple[str, ...] = ("ping", "dns", "tcp", "tls", "upgrade", "login")

NetworkType = Literal["wifi", "cellular", "wired", "unknown"]
NETWORK_TYPES: tuple[NetworkType, ...] = get_args(NetworkType)

# The `result` label of loginprobe_attempts_total.
RESULTS: tuple[str, ...] = ("success", "failure")


class Step(StrEnum):
    """The troubleshooting step a reason belongs to."""

    NONE = "none"
    NETWORK = "network"
    ACCOUNT = "account"
    CONFIG = "config"
    SERVER = "server"


class Reason(StrEnum):
    OK = "ok"
    DNS_NXDOMAIN = "dns_nxdomain"
    DNS_NO_ANSWER = "dns_no_answer"
    DNS_SERVFAIL = "dns_servfail"
    DNS_TIMEOUT = "dns_timeout"
    TCP_REFUSED = "tcp_refused"
    TCP_TIMEOUT = "tcp_timeout"
    TCP_UNREACHABLE = "tcp_unreachable"
    TCP_RESET = "tcp_reset"
    TLS_TIMEOUT = "tls_timeout"
    TLS_CERT_UNTRUSTED = "tls_cert_untrusted"
    TLS_CERT_EXPIRED = "tls_cert_expired"
    TLS_HOSTNAME_MISMATCH = "tls_hostname_mismatch"
    TLS_VERSION_MISMATCH = "tls_version_mismatch"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    STARTTLS_UNAVAILABLE = "starttls_unavailable"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    AUTH_REJECTED = "auth_rejected"
    AUTH_NOT_AUTHORIZED = "auth_not_authorized"
    AUTH_MECHANISM_UNSUPPORTED = "auth_mechanism_unsupported"
    SERVER_UNAVAILABLE = "server_unavailable"
    SERVER_ERROR = "server_error"
    LOGIN_TIMEOUT = "login_timeout"
    PROTOCOL_ERROR = "protocol_error"
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    SESSION_CLOSED = "session_closed"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"

    @property
    def step(self) -> Step:
        return _INFO[self][0]

    @property
    def hint(self) -> str:
        return _INFO[self][1]

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_INFO: dict[Reason, tuple[Step, str]] = {
    Reason.OK: (Step.NONE, "The login worked; nothing to check."),
    Reason.DNS_NXDOMAIN: (
        Step.NETWORK,
        "The name does not exist: check the spelling of the domain and that its DNS zone "
        "is published (dig NAME).",
    ),
    Reason.DNS_NO_ANSWER: (
        Step.NETWORK,
        "The name exists but has no A/AAAA (or SRV) record: add the address record, or "
        "check the SRV target.",
    ),
    Reason.DNS_SERVFAIL: (
        Step.NETWORK,
        "The resolver failed or refused: check the resolver's health and the zone's "
        "authoritative servers (DNSSEC, lame delegation).",
    ),
    Reason.DNS_TIMEOUT: (
        Step.NETWORK,
        "No DNS answer in time: check that the resolver is reachable from this network "
        "(UDP/TCP port 53) and answering.",
    ),
    Reason.TCP_REFUSED: (
        Step.NETWORK,
        "Connection refused: check that the server process is running and listening on "
        "this port, and firewall REJECT rules.",
    ),
    Reason.TCP_TIMEOUT: (
        Step.NETWORK,
        "No answer to the connection attempt: a firewall or security group probably drops "
        "packets to this port, or the host is down.",
    ),
    Reason.TCP_UNREACHABLE: (
        Step.NETWORK,
        "No route to the host: check routing, the VPN or carrier APN, and ICMP-reject "
        "firewall rules on the path.",
    ),
    Reason.TCP_RESET: (
        Step.NETWORK,
        "The connection was reset after it was set up: check load balancers, proxies, "
        "connection limits and the server's logs.",
    ),
    Reason.TLS_TIMEOUT: (
        Step.NETWORK,
        "The TLS handshake stalled: check for middleboxes that block TLS, an overloaded "
        "server, or a port that does not speak TLS.",
    ),
    Reason.TLS_CERT_UNTRUSTED: (
        Step.CONFIG,
        "The certificate chain does not lead to a trusted CA: install the full chain "
        "(intermediates) on the server, or pass the right --ca-file.",
    ),
    Reason.TLS_CERT_EXPIRED: (
        Step.CONFIG,
        "The certificate is expired or not yet valid: renew it and check the server's "
        "and this machine's clock.",
    ),
    Reason.TLS_HOSTNAME_MISMATCH: (
        Step.CONFIG,
        "The certificate does not cover the name that was asked for: add the name to its "
        "subjectAltName, or connect with the name it was issued for.",
    ),
    Reason.TLS_VERSION_MISMATCH: (
        Step.CONFIG,
        "Client and server share no TLS version or cipher: enable TLS 1.2/1.3 and modern "
        "ciphers on the server.",
    ),
    Reason.TLS_HANDSHAKE_FAILED: (
        Step.CONFIG,
        "The TLS handshake failed: read the message, then check the server's TLS "
        "configuration (openssl s_client -connect HOST:PORT).",
    ),
    Reason.STARTTLS_UNAVAILABLE: (
        Step.CONFIG,
        "The server did not offer STARTTLS: enable TLS on this port and check that its "
        "certificate and key are loaded.",
    ),
    Reason.PROTOCOL_MISMATCH: (
        Step.CONFIG,
        "This port speaks another protocol: check the port number (defaults often change "
        "in upgrades) and the URL scheme.",
    ),
    Reason.AUTH_REJECTED: (
        Step.ACCOUNT,
        "Check the account name and password; the server refused them.",
    ),
    Reason.AUTH_NOT_AUTHORIZED: (
        Step.ACCOUNT,
        "The credentials were accepted but the account may not log in: check that it is "
        "not banned, disabled or missing a permission.",
    ),
    Reason.AUTH_MECHANISM_UNSUPPORTED: (
        Step.ACCOUNT,
        "Client and server share no authentication mechanism: enable SCRAM-SHA-256, "
        "SCRAM-SHA-1 or PLAIN (over TLS) on the server.",
    ),
    Reason.SERVER_UNAVAILABLE: (
        Step.SERVER,
        "The server said it cannot serve now: check its health, backends and maintenance "
        "mode, then its logs.",
    ),
    Reason.SERVER_ERROR: (
        Step.SERVER,
        "The server failed while handling the login: read its error log around this time.",
    ),
    Reason.LOGIN_TIMEOUT: (
        Step.SERVER,
        "Connected, but the login did not finish in time: check the server's load and its "
        "authentication backend (database, LDAP).",
    ),
    Reason.PROTOCOL_ERROR: (
        Step.SERVER,
        "The server sent something malformed or unexpected: run with --verbose and read "
        "the transcript.",
    ),
    Reason.KEEPALIVE_TIMEOUT: (
        Step.NETWORK,
        "The held session's keepalives went unanswered: the path dropped packets or a NAT or "
        "load balancer forgot the connection; compare the network paths and their idle timeouts.",
    ),
    Reason.SESSION_CLOSED: (
        Step.SERVER,
        "The server closed an established session without a reason: check its logs for a "
        "restart, an idle timeout or a connection limit.",
    ),
    Reason.TIMEOUT: (
        Step.NETWORK,
        "The deadline passed before any phase could be blamed: raise --timeout or check "
        "this machine's load.",
    ),
    Reason.INTERNAL_ERROR: (
        Step.NONE,
        "A bug in loginprobe: please report it with the traceback from the log.",
    ),
}


# What each reason means (CONTRACT.md section 3), as docs/CONTRACT.md shows it.
_MEANINGS: dict[Reason, str] = {
    Reason.OK: "logged in",
    Reason.DNS_NXDOMAIN: "the name does not exist",
    Reason.DNS_NO_ANSWER: "the name exists but has no usable address record",
    Reason.DNS_SERVFAIL: "the resolver answered SERVFAIL or REFUSED",
    Reason.DNS_TIMEOUT: "no DNS answer before the deadline",
    Reason.TCP_REFUSED: "connection refused (RST): nothing listens, or a firewall rejects",
    Reason.TCP_TIMEOUT: "no answer to the SYN: packets dropped, filtered port",
    Reason.TCP_UNREACHABLE: "ICMP unreachable / no route",
    Reason.TCP_RESET: "the connection was reset after it was established",
    Reason.TLS_TIMEOUT: "the TLS handshake did not finish before the deadline",
    Reason.TLS_CERT_UNTRUSTED: "the chain does not lead to a trusted CA (self-signed, unknown CA)",
    Reason.TLS_CERT_EXPIRED: "the certificate is expired or not yet valid",
    Reason.TLS_HOSTNAME_MISMATCH: "the certificate does not cover the name that was asked for",
    Reason.TLS_VERSION_MISMATCH: "no common TLS version or cipher",
    Reason.TLS_HANDSHAKE_FAILED: "any other TLS failure",
    Reason.STARTTLS_UNAVAILABLE: "the server did not offer STARTTLS where it is required",
    Reason.PROTOCOL_MISMATCH: (
        "the port speaks another protocol (e.g. HTTP where XMPP was expected)"
    ),
    Reason.AUTH_REJECTED: "the server refused the credentials",
    Reason.AUTH_NOT_AUTHORIZED: (
        "credentials accepted but the account may not log in (banned, no permission)"
    ),
    Reason.AUTH_MECHANISM_UNSUPPORTED: "no common authentication mechanism",
    Reason.SERVER_UNAVAILABLE: (
        "the server said it cannot serve now (MQTT 3/0x88, HTTP 503, XMPP stream error)"
    ),
    Reason.SERVER_ERROR: "the server failed (HTTP 5xx other than 503, internal-server-error)",
    Reason.LOGIN_TIMEOUT: "connected, but the login exchange did not finish before the deadline",
    Reason.PROTOCOL_ERROR: "the server sent something malformed or unexpected",
    Reason.KEEPALIVE_TIMEOUT: "a held session's keepalives went unanswered (sessions only)",
    Reason.SESSION_CLOSED: (
        "the server closed an established session without giving a reason (sessions only)"
    ),
    Reason.TIMEOUT: "the deadline passed and no single phase is to blame",
    Reason.INTERNAL_ERROR: "a bug in the prober: always logged with a traceback",
}


@dataclass(frozen=True)
class Metric:
    """A metric of the contract: its name, type (with what it measures) and labels."""

    name: str
    kind: str
    section: int  # of the contract: 4 the results and the fleet, 6 sessions
    labels: tuple[str, ...]


# The collector"s metrics (CONTRACT.md sections 4 and 6): names and label sets are closed.
METRICS: tuple[Metric, ...] = (
    Metric("loginprobe_attempts_total", "counter", 4,
           ("check", "protocol", "target", "agent", "region", "carrier", "network_type", "result",
            "reason")),
    Metric("loginprobe_success", "gauge, 1/0 for the latest attempt", 4,
           ("check", "protocol", "target", "agent", "region", "carrier", "network_type")),
    Metric("loginprobe_phase_duration_seconds", "histogram", 4,
           ("check", "protocol", "target", "region", "carrier", "network_type", "phase")),
    Metric("loginprobe_duration_seconds", "histogram, whole attempt", 4,
           ("check", "protocol", "target", "region", "carrier", "network_type")),
    Metric("loginprobe_tls_cert_not_after_timestamp_seconds", "gauge", 4,
           ("check", "target", "agent")),
    Metric("loginprobe_agent_connected", "gauge 1/0", 4,
           ("agent", "region", "carrier", "network_type")),
    Metric("loginprobe_agent_last_result_timestamp_seconds", "gauge", 4,
           ("agent",)),
    Metric("loginprobe_collector_results_received_total", "counter", 4,
           ("agent",)),
    Metric("loginprobe_collector_results_duplicate_total", "counter", 4,
           ("agent",)),
    Metric("loginprobe_collector_results_rejected_total", "counter", 4,
           ("reason",)),
    Metric("loginprobe_session_up", "gauge 1/0", 6,
           ("check", "protocol", "target", "agent", "region", "carrier", "network_type")),
    Metric("loginprobe_session_drops_total", "counter", 6,
           ("check", "protocol", "target", "agent", "region", "carrier", "network_type", "reason")),
    Metric("loginprobe_session_reconnect_duration_seconds", "histogram, drop to logged in again", 6,
           ("check", "protocol", "target", "region", "carrier", "network_type")),
    Metric("loginprobe_keepalive_rtt_seconds", "histogram", 6,
           ("check", "protocol", "target", "region", "carrier", "network_type")),
)

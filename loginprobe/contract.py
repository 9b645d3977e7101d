"""The contract's closed vocabularies, in one place: reason codes with their step and hint,
phase names, network types and result values (CONTRACT.md sections 2-4 and 6)."""

from __future__ import annotations

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

"""The tls phase: the handshake on an open connection, and what the certificate says."""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime
from functools import lru_cache

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from loginprobe.contract import Reason
from loginprobe.probes.attempt import Attempt, Conn, ProbeFailure
from loginprobe.result import TLSInfo

_ISO = "%Y-%m-%dT%H:%M:%SZ"
_DER = 2  # _ssl.ENCODING_DER, for the 3.11/3.12 Certificate objects of the chain

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) that name a cause the operator can act on.
_VERIFY_REASONS = {
    9: Reason.TLS_CERT_EXPIRED,  # certificate is not yet valid
    10: Reason.TLS_CERT_EXPIRED,  # certificate has expired
    62: Reason.TLS_HOSTNAME_MISMATCH,
    2: Reason.TLS_CERT_UNTRUSTED,  # unable to get issuer certificate
    18: Reason.TLS_CERT_UNTRUSTED,  # self-signed certificate
    19: Reason.TLS_CERT_UNTRUSTED,  # self-signed certificate in chain
    20: Reason.TLS_CERT_UNTRUSTED,  # unable to get local issuer certificate
    21: Reason.TLS_CERT_UNTRUSTED,  # unable to verify the first certificate
}
# OpenSSL reason strings for "we share no version or cipher".
_VERSION_ERRORS = (
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
    "NO_SUITABLE_SIGNATURE_ALGORITHM",
)


@lru_cache(maxsize=16)
def client_context(ca_file: str | None, insecure: bool, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@lru_cache(maxsize=16)
def _trust_store(ca_file: str | None) -> Store:
    path = ca_file or ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    with open(path, "rb") as f:
        return Store(x509.load_pem_x509_certificates(f.read()))


def _verify_offline(chain: list[x509.Certificate], name: str, ca_file: str | None) -> str | None:
    """With --insecure the handshake does not verify; verify the chain ourselves so the
    result still says whether, and why not, it would have been trusted — in the words
    OpenSSL would have used."""
    leaf, now = chain[0], datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        return f"certificate has expired (not after {leaf.not_valid_after_utc:{_ISO}})"
    if leaf.not_valid_before_utc > now:
        return f"certificate is not yet valid (not before {leaf.not_valid_before_utc:{_ISO}})"
    try:
        verifier = (
            PolicyBuilder().store(_trust_store(ca_file)).build_server_verifier(_subject(name))
        )
        verifier.verify(leaf, chain[1:])
    except VerificationError as exc:
        if "subjectAltName" in str(exc):
            return (
                f"hostname mismatch: the certificate covers {', '.join(_names(leaf))}, not {name}"
            )
        if leaf.issuer == leaf.subject:
            return "self-signed certificate"
        return f"unable to get local issuer certificate ({str(exc).split(' (encountered')[0]})"
    except (ValueError, OSError) as exc:
        return f"could not verify: {exc}"
    return None


def _subject(name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names: list[str] = ext.value.get_values_for_type(x509.DNSName)
    names += [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]
    return names


@lru_cache(maxsize=64)
def _leaf_facts(der: bytes) -> tuple[str, str, tuple[str, ...], datetime]:
    """Subject, issuer, SANs and expiry of a certificate. Cached by its bytes: parsing costs
    about 140 µs, more than the rest of a login's Python, and a prober sees the same
    certificate attempt after attempt."""
    cert = x509.load_der_x509_certificate(der)
    return (
        cert.subject.rfc4514_string(),
        cert.issuer.rfc4514_string(),
        tuple(_names(cert)),
        cert.not_valid_after_utc,
    )


def _describe(ssl_object: ssl.SSLObject, verified: bool, verify_error: str | None) -> TLSInfo:
    info = TLSInfo(
        version=ssl_object.version() or "",
        cipher=(ssl_object.cipher() or ("",))[0],
        alpn=ssl_object.selected_alpn_protocol(),
        verified=verified,
        verify_error=verify_error,
    )
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        info.subject, info.issuer, sans, info.not_after = _leaf_facts(der)
        info.sans = list(sans)
        info.days_left = round((info.not_after - datetime.now(UTC)).total_seconds() / 86400, 2)
    return info


def _chain(ssl_object: ssl.SSLObject) -> list[x509.Certificate]:
    # Python 3.13 made this public; 3.11 and 3.12 have it on the C object.
    getter = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    certs = getter() if getter else None
    if certs:
        return [
            x509.load_der_x509_certificate(c if isinstance(c, bytes) else c.public_bytes(_DER))
            for c in certs
        ]
    der = ssl_object.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def classify(exc: Exception) -> tuple[Reason, str]:
    """A handshake exception as (reason, message in OpenSSL's own words)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code, Reason.TLS_HANDSHAKE_FAILED)
        return reason, f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        code = exc.reason or ""
        # Some alerts come without a reason code, only in the text: normalise both.
        said = f"{code} {exc.strerror or exc}".upper().replace(" ", "_")
        if code in _VERSION_ERRORS:
            return Reason.TLS_VERSION_MISMATCH, f"TLS handshake failed: {code}"
        if code in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            # The first bytes back were not a TLS record: the port speaks something else.
            return Reason.PROTOCOL_MISMATCH, f"the server did not answer with TLS ({code})"
        if "TLSV1_ALERT_NO_APPLICATION_PROTOCOL" in said:
            # TLS works, but the server serves none of the protocols we named in ALPN.
            return Reason.PROTOCOL_MISMATCH, (
                "the server serves another protocol here (TLS alert NO_APPLICATION_PROTOCOL "
                "for our ALPN)"
            )
        return Reason.TLS_HANDSHAKE_FAILED, f"TLS handshake failed: {code or exc}"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Reason.TCP_RESET, (
            "connection reset during the TLS handshake (does this port speak TLS? a firewall "
            "that filters on the server name resets here too)"
        )
    return Reason.TLS_HANDSHAKE_FAILED, f"TLS handshake failed: {exc}"


async def handshake(
    attempt: Attempt, conn: Conn, server_name: str, alpn: tuple[str, ...] = ()
) -> None:
    """Upgrade conn to TLS. The caller holds the tls phase open (STARTTLS negotiation is
    part of it); this records what the handshake learned or raises why it failed."""
    opts = attempt.options
    ctx = client_context(opts.ca_file, opts.insecure, alpn)
    stream = conn.stream
    if stream is None:
        raise TypeError("a TLS handshake needs a connection from tcp.stream()")
    attempt.note("*", f"TLS handshake, SNI {server_name}")
    try:
        shake = await stream.start_tls(ctx, server_name)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        reason, message = classify(exc)
        attempt.note("*", message)
        raise ProbeFailure(reason, message) from None
    except (ConnectionError, EOFError, OSError) as exc:
        attempt.note("*", f"connection lost during the TLS handshake: {exc}")
        raise ProbeFailure(
            Reason.TLS_HANDSHAKE_FAILED,
            "the server closed the connection during the TLS handshake",
        ) from None
    # The phase's boundaries are the handshake's flights: ClientHello out, the client's
    # Finished out (TLS 1.3) or the server's Finished in (TLS 1.2).
    attempt.sent(shake.first_sent_ns)
    attempt.sent(shake.last_sent_ns)
    attempt.arrived(shake.last_arrived_ns, shake.by_kernel, shake.server_ns)
    ssl_object = stream.ssl_object
    assert ssl_object is not None
    verify_error = None
    if opts.insecure:
        chain = _chain(ssl_object)
        verify_error = (
            _verify_offline(chain, server_name, opts.ca_file) if chain else "no certificate"
        )
    attempt.tls = _describe(ssl_object, verified=verify_error is None, verify_error=verify_error)
    attempt.note(
        "*",
        f"TLS {attempt.tls.version} {attempt.tls.cipher} subject {attempt.tls.subject!r} "
        f"issuer {attempt.tls.issuer!r} verified={attempt.tls.verified}",
    )

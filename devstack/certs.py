"""Test PKI for the ground: one CA, a valid server certificate and three broken ones."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "loginprobe Test CA"
# Every name a probe may ask for on the ground; "localhost" and 127.0.0.1 let a test
# connect by address and still verify.
SERVER_NAMES = ("xmpp.test", "mqtt.test", "http.test", "localhost")
SERVER_IPS = ("127.0.0.1",)
WRONG_NAME = "other.test"


@dataclass(frozen=True)
class CertPair:
    """A certificate and its key as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPKI:
    """Where each generated PEM file was written."""

    __test__ = False  # not a test class, whatever its name says to pytest

    ca_file: Path
    valid: CertPair
    expired: CertPair
    wrong_host: CertPair
    self_signed: CertPair


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> ec.EllipticCurvePrivateKey:
    # EC keys are generated in microseconds where RSA takes ~100 ms each; every TLS
    # stack on the ground (OpenSSL via nginx, mosquitto, LuaSec) handles P-256.
    return ec.generate_private_key(ec.SECP256R1())


def _leaf(
    *,
    subject: str,
    names: tuple[str, ...],
    ips: tuple[str, ...],
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    # The extensions a strict verifier (Python 3.13's VERIFY_X509_STRICT) insists on.
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair


def make_pki(directory: Path) -> TestPKI:
    """Writes the CA and the four server certificates into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)

    ca_key = _new_key()
    ca_subject = _name(CA_NAME)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + 3650 * day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def signed(
        stem: str,
        subject: str,
        names: tuple[str, ...],
        ips: tuple[str, ...],
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> CertPair:
        key = _new_key()
        cert = _leaf(
            subject=subject,
            names=names,
            ips=ips,
            key=key,
            issuer=ca_subject,
            issuer_key=ca_key,
            not_before=not_before,
            not_after=not_after,
        )
        return _write(directory, stem, cert, key)

    valid = signed("valid", SERVER_NAMES[0], SERVER_NAMES, SERVER_IPS, now - day, now + 365 * day)
    expired = signed(
        "expired", SERVER_NAMES[0], SERVER_NAMES, SERVER_IPS, now - 60 * day, now - day
    )
    wrong_host = signed("wrong-host", WRONG_NAME, (WRONG_NAME,), (), now - day, now + 365 * day)

    # Issued by its own key, so a verifier reports "self-signed" rather than "unknown CA".
    own_key = _new_key()
    own_cert = _leaf(
        subject=SERVER_NAMES[0],
        names=SERVER_NAMES,
        ips=SERVER_IPS,
        key=own_key,
        issuer=_name(SERVER_NAMES[0]),
        issuer_key=own_key,
        not_before=now - day,
        not_after=now + 365 * day,
    )
    self_signed = _write(directory, "self-signed", own_cert, own_key)

    return TestPKI(ca_file, valid, expired, wrong_host, self_signed)

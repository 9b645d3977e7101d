"""The test PKI: a CA that issues server and client certificates (EC keys), and the servers'
set of one valid server certificate and three broken ones."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "loginprobe Test CA"
LOOPBACK = "127.0.0.1"
# Every name a probe may ask for on the servers; "localhost" and 127.0.0.1 let a test
# connect by address and still verify.
SERVER_NAMES = ("xmpp.test", "mqtt.test", "http.test", "localhost", "matrix.test")
SERVER_IPS = (LOOPBACK,)
WRONG_NAME = "other.test"
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class CertPair:
    """A certificate and its key as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPKI:
    """The servers' certificates: where each PEM file was written."""

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
    # stack on the servers (OpenSSL via nginx, mosquitto, LuaSec, grpc) handles P-256.
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def _write(folder: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> CertPair:
    pair = CertPair(folder / f"{stem}.crt", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return pair


class PKI:
    """A CA in `folder` (ca.pem), with a server certificate for localhost / 127.0.0.1 and
    further certificates issued on demand."""

    def __init__(self, folder: Path, ca_name: str = CA_NAME) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = _new_key()
        self._ca_name = _name(ca_name)
        now = dt.datetime.now(dt.UTC)
        ca = (
            x509.CertificateBuilder()
            .subject_name(self._ca_name)
            .issuer_name(self._ca_name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server = self.issue("localhost", dns=("localhost",), ips=(LOOPBACK, "::1"),
                                 server=True)

    def issue(
        self,
        cn: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        server: bool = False,
        valid: tuple[dt.datetime, dt.datetime] | None = None,
        stem: str | None = None,
        self_signed: bool = False,
    ) -> CertPair:
        """A leaf certificate: a server's, or an agent's client certificate; signed by this
        CA, or by its own key when self_signed (a verifier then says "self-signed")."""
        key = _new_key()
        issuer, issuer_key = (_name(cn), key) if self_signed else (self._ca_name, self._key)
        now = dt.datetime.now(dt.UTC)
        not_before, not_after = valid or (now - DAY, now + 365 * DAY)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        # The extensions a strict verifier (Python 3.13's VERIFY_X509_STRICT) insists on.
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        return _write(self.folder, stem or re.sub(r"[^A-Za-z0-9_.-]", "_", cn), cert, key)

    def channel_credentials(self, client: CertPair | None = None) -> grpc.ChannelCredentials:
        """What an agent (or a raw test client) uses to reach a collector of this PKI."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=client.key.read_bytes() if client else None,
            certificate_chain=client.cert.read_bytes() if client else None,
        )


def make_pki(directory: Path) -> TestPKI:
    """The servers' CA and its four server certificates, written into `directory`."""
    pki = PKI(directory)
    now = dt.datetime.now(dt.UTC)
    served = functools.partial(pki.issue, SERVER_NAMES[0], dns=SERVER_NAMES, ips=SERVER_IPS,
                               server=True)
    return TestPKI(
        pki.ca_file,
        valid=served(stem="valid"),
        expired=served(stem="expired", valid=(now - 60 * DAY, now - DAY)),
        wrong_host=pki.issue(WRONG_NAME, dns=(WRONG_NAME,), server=True, stem="wrong-host"),
        self_signed=served(stem="self-signed", self_signed=True),
    )

"""Who is on the other end of a stream: the agent's identity from its credential alone (a
client certificate's CN/SAN or a bearer token's SHA-256), checked against the registry."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loginprobe.collector.config import Agent


class AuthError(Exception):
    """The credential is refused. `unknown` tells UNAUTHENTICATED (we do not know you) from
    PERMISSION_DENIED (we know you, and you may not); the message never holds the token."""

    def __init__(self, message: str, *, unknown: bool) -> None:
        super().__init__(message)
        self.unknown = unknown


@dataclass(frozen=True)
class Credential:
    """What a stream presented, kept so a registry reload can check it again. Only the
    token's hash is kept, never the token."""

    token_sha256: str | None
    cert_cn: str | None
    cert_sans: tuple[str, ...]


def credential(metadata: Sequence[tuple[str, str | bytes]], auth: Mapping[str, Sequence[bytes]]
               ) -> Credential:
    """The credential from gRPC invocation metadata and the TLS auth context."""
    token_sha256 = None
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                token_sha256 = hashlib.sha256(token.strip().encode()).hexdigest()
    cns = auth.get("x509_common_name", ())
    sans = auth.get("x509_subject_alternative_name", ())
    return Credential(
        token_sha256=token_sha256,
        cert_cn=cns[0].decode(errors="replace") if cns else None,
        cert_sans=tuple(s.decode(errors="replace") for s in sans),
    )


def identify(cred: Credential, agents: Sequence[Agent]) -> Agent:
    """The registry entry the credential belongs to, or AuthError. A client certificate is
    only present when the listener has a client CA, and then it was verified by TLS."""
    found = None
    if cred.cert_cn is not None or cred.cert_sans:
        for agent in agents:
            if (agent.cert_cn is not None and agent.cert_cn == cred.cert_cn) or (
                agent.cert_san is not None and agent.cert_san in cred.cert_sans
            ):
                found = agent
                break
    if found is None and cred.token_sha256 is not None:
        # Compare every entry in constant time, so the time taken says nothing about how
        # close a guess came, nor which entry matched.
        for agent in agents:
            if agent.token_sha256 is not None and hmac.compare_digest(
                agent.token_sha256, cred.token_sha256
            ):
                found = agent
    if found is None:
        if cred.token_sha256 is None and cred.cert_cn is None and not cred.cert_sans:
            raise AuthError(
                "no credential: send an 'authorization: Bearer TOKEN' header or connect with "
                "a client certificate",
                unknown=True,
            )
        raise AuthError("unknown credential: it matches no agent in the collector's registry",
                        unknown=True)
    if found.revoked:
        raise AuthError(f"agent {found.id} is revoked", unknown=False)
    return found

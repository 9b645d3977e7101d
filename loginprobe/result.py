"""The Result of one login attempt and its JSON form (CONTRACT.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loginprobe.contract import Reason


def iso_utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Phase:
    name: str  # ping, dns, tcp, tls, login
    ok: bool
    start_ns: int  # offset from the attempt's start
    duration_ns: int
    skipped: bool = False
    message: str = ""
    # Where the duration comes from: kernel, socket or process (probes/attempt.py); empty
    # when not said (a result from an older agent).
    clock: str = ""
    # tls and login: how long the server took to answer, our last request byte out -> its
    # answer in, summed over the phase's exchanges.
    server_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "ok": self.ok,
            "duration_seconds": round(self.duration_ns / 1e9, 7),
            "start_offset_seconds": round(self.start_ns / 1e9, 7),
        }
        if self.clock:
            out["clock"] = self.clock
        if self.server_ns is not None:
            out["server_duration_seconds"] = round(self.server_ns / 1e9, 7)
        if self.skipped:
            out["skipped"] = True
        if self.message:
            out["message"] = self.message
        return out


@dataclass
class TLSInfo:
    version: str = ""
    cipher: str = ""
    alpn: str | None = None
    verified: bool = False
    verify_error: str | None = None
    subject: str = ""
    issuer: str = ""
    sans: list[str] = field(default_factory=list)
    not_after: datetime | None = None
    days_left: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "cipher": self.cipher,
            "alpn": self.alpn,
            "verified": self.verified,
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": self.sans,
            "not_after": (
                self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ") if self.not_after else None
            ),
            "days_left": self.days_left,
        }
        if self.verify_error is not None:
            out["verify_error"] = self.verify_error
        return out


@dataclass
class DNSInfo:
    name: str  # the name that was resolved for the connection
    addresses: list[str] = field(default_factory=list)
    ttl: int | None = None
    srv: str | None = None  # "target:port" chosen from an SRV record
    resolver: str = "system"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "addresses": self.addresses,
            "ttl": self.ttl,
            "srv": self.srv,
            "resolver": self.resolver,
        }


@dataclass(frozen=True)
class NetworkContext:
    """The network path an attempt ran on, as the agent knew it (agent/netinfo.py learns it)."""

    network_type: str  # wifi, cellular, wired, unknown
    ssid: str | None = None
    signal_dbm: float | None = None
    source_address: str | None = None  # the local address; behind NAT not the public one
    carrier: str = ""
    asn: int | None = None
    path: str = ""  # the path's name in the agent's config
    interface: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "interface": self.interface,
            "network_type": self.network_type,
            "ssid": self.ssid,
            "signal_dbm": self.signal_dbm,
            "source_address": self.source_address,
            "carrier": self.carrier,
            "asn": self.asn,
        }


@dataclass
class TranscriptLine:
    offset_ns: int
    direction: str  # ">" sent, "<" received, "*" an event
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.offset_ns / 1e9, 7), "dir": self.direction, "data": self.text}


@dataclass
class Result:
    url: str
    protocol: str
    success: bool
    reason: Reason
    message: str
    started_at: datetime
    duration_ns: int
    phases: list[Phase]
    resolved_address: str | None = None
    tls: TLSInfo | None = None
    dns: DNSInfo | None = None
    transcript: list[TranscriptLine] = field(default_factory=list)
    network: NetworkContext | None = None  # set by the agent, per path
    # What a follow-up found the port to speak, the headline first (probes/mismatch.py).
    findings: list[str] = field(default_factory=list)

    @property
    def hint(self) -> str:
        """The reason's hint, led by what the follow-up found to be true."""
        if self.findings:
            return f"{self.findings[0][:1].upper()}{self.findings[0][1:]}. {self.reason.hint}"
        return self.reason.hint

    def to_dict(self, transcript: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": self.url,
            "protocol": self.protocol,
            "success": self.success,
            "reason": str(self.reason),
            "step": str(self.reason.step),
            "message": self.message,
            "hint": self.hint,
            "started_at": iso_utc(self.started_at),
            "duration_seconds": round(self.duration_ns / 1e9, 7),
            "resolved_address": self.resolved_address,
            "phases": [p.to_dict() for p in self.phases],
            "tls": self.tls.to_dict() if self.tls else None,
            "dns": self.dns.to_dict() if self.dns else None,
        }
        if self.findings:
            out["findings"] = self.findings
        if self.network is not None:
            out["network"] = self.network.to_dict()
        if transcript:
            out["transcript"] = [line.to_dict() for line in self.transcript]
        return out

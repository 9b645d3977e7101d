"""Results to and from the wire: the one place (with the uplink and ingest that call it)
where plain dataclasses meet the generated protobuf types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from loginprobe.contract import Reason
from loginprobe.result import DNSInfo, NetworkContext, Phase, Result, TLSInfo, TranscriptLine
from loginprobe.wire import collector_pb2 as pb


@dataclass
class SessionInfo:
    """What makes a Report an event of a held session (wire: SessionEvent)."""

    kind: str  # login, keepalive, drop, reconnect
    segment: int = 1
    session_ns: int = 0
    phase: str = ""
    attempts: int = 0
    delay_ns: int = 0
    downtime_ns: int = 0
    keepalive_rtt_ns: list[int] = field(default_factory=list)
    resumed: bool = False
    resume_ns: int = 0


# Session events that are not login attempts: the attempt metrics, traces and pages skip them.
NOT_ATTEMPTS = frozenset({"keepalive", "drop"})


@dataclass
class Report:
    """A Result as the collector sees it: who measured it, for which check, in which order."""

    result: Result
    seq: int
    check: str
    trace_id: bytes
    clock_offset_ns: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    agent: str = ""  # filled in by the collector from the credential, never by the agent
    session: SessionInfo | None = None  # set for the events of a held session


class PhaseView(Protocol):
    """A phase as received, read in place (see ResultView)."""

    @property
    def name(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def skipped(self) -> bool: ...
    @property
    def message(self) -> str: ...
    @property
    def start_offset_ns(self) -> int: ...
    @property
    def duration_ns(self) -> int: ...
    @property
    def clock(self) -> str: ...
    @property
    def server_duration_ns(self) -> int: ...


class TLSView(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def cipher(self) -> str: ...
    @property
    def not_after_unix(self) -> int: ...


class SessionView(Protocol):
    """A received session event read in place (an absent one reads as empty)."""

    @property
    def kind(self) -> str: ...
    @property
    def segment(self) -> int: ...
    @property
    def session_ns(self) -> int: ...
    @property
    def phase(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def delay_ns(self) -> int: ...
    @property
    def downtime_ns(self) -> int: ...
    @property
    def keepalive_rtt_ns(self) -> Sequence[int]: ...
    @property
    def resumed(self) -> bool: ...
    @property
    def resume_ns(self) -> int: ...


class TranscriptView(Protocol):
    """A transcript line as received."""

    @property
    def offset_ns(self) -> int: ...
    @property
    def direction(self) -> str: ...
    @property
    def text(self) -> str: ...


# A failed attempt's transcript on the wire, at most this many lines and characters (a
# hostile server that talks forever must not make results large).
MAX_TRANSCRIPT_LINES = 200
MAX_TRANSCRIPT_CHARS = 8192


class ResultView(Protocol):
    """A received result read in place, without decoding it into a Report (~30 µs a result):
    the exporters' hot path. The wire messages are one implementation; the exporters see
    only these fields, and scrubbed strings (the probe scrubbed them before sending)."""

    @property
    def seq(self) -> int: ...
    @property
    def check(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def protocol(self) -> str: ...
    @property
    def success(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def step(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def hint(self) -> str: ...
    @property
    def resolved_address(self) -> str: ...
    @property
    def trace_id(self) -> bytes: ...
    @property
    def started_at_unix_nano(self) -> int: ...
    @property
    def duration_ns(self) -> int: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def phases(self) -> Sequence[PhaseView]: ...
    @property
    def tls(self) -> TLSView: ...
    @property
    def clock_offset_ns(self) -> int: ...
    @property
    def session(self) -> SessionView: ...
    @property
    def transcript(self) -> Sequence[TranscriptView]: ...


def is_attempt(view: ResultView) -> bool:
    """Whether a received message is a login attempt: every result, and the login and
    reconnect events of a held session (not its keepalives and drops)."""
    return view.session.kind not in NOT_ATTEMPTS


def view_bytes(view: ResultView) -> bytes:
    """A received result kept compactly (its wire bytes), for a page that shows it later."""
    assert isinstance(view, pb.ProbeResult)
    return view.SerializeToString()


def view_from_bytes(data: bytes) -> ResultView:
    return pb.ProbeResult.FromString(data)


def view_without_transcript(data: bytes) -> bytes:
    """A kept result's wire bytes with its transcript dropped (for an older attempt)."""
    msg = pb.ProbeResult.FromString(data)
    del msg.transcript[:]
    return msg.SerializeToString()


def _transcript(lines: Sequence[TranscriptLine]) -> list[pb.TranscriptLine]:
    """The transcript as sent: the first lines up to the limits, then one line saying so."""
    out: list[pb.TranscriptLine] = []
    left = MAX_TRANSCRIPT_CHARS
    for t in lines:
        if len(out) == MAX_TRANSCRIPT_LINES or len(t.text) > left:
            out.append(pb.TranscriptLine(offset_ns=t.offset_ns, direction="*",
                                         text=f"... ({len(lines) - len(out)} more lines)"))
            break
        out.append(pb.TranscriptLine(offset_ns=t.offset_ns, direction=t.direction, text=t.text))
        left -= len(t.text)
    return out


def to_wire(report: Report) -> pb.ProbeResult:
    r = report.result
    msg = pb.ProbeResult(
        seq=report.seq,
        check=report.check,
        url=r.url,
        protocol=r.protocol,
        success=r.success,
        reason=str(r.reason),
        step=str(r.reason.step),
        message=r.message,
        hint=r.hint,
        started_at_unix_nano=int(r.started_at.timestamp() * 1e9) + report.clock_offset_ns,
        duration_ns=r.duration_ns,
        resolved_address=r.resolved_address or "",
        phases=[
            pb.Phase(
                name=p.name,
                ok=p.ok,
                start_offset_ns=p.start_ns,
                duration_ns=p.duration_ns,
                skipped=p.skipped,
                message=p.message,
                clock=p.clock,
                server_duration_ns=p.server_ns or 0,
            )
            for p in r.phases
        ],
        trace_id=report.trace_id,
        clock_offset_ns=report.clock_offset_ns,
        labels=report.labels,
        findings=r.findings,
        transcript=[] if r.success else _transcript(r.transcript),
    )
    if r.tls:
        t = r.tls
        msg.tls.CopyFrom(
            pb.TLSInfo(
                version=t.version,
                cipher=t.cipher,
                alpn=t.alpn or "",
                verified=t.verified,
                verify_error=t.verify_error or "",
                subject=t.subject,
                issuer=t.issuer,
                sans=t.sans,
                not_after_unix=int(t.not_after.timestamp()) if t.not_after else 0,
                days_left=t.days_left or 0.0,
            )
        )
    if r.dns:
        d = r.dns
        msg.dns.CopyFrom(
            pb.DNSInfo(
                name=d.name,
                addresses=d.addresses,
                ttl=-1 if d.ttl is None else d.ttl,
                srv=d.srv or "",
                resolver=d.resolver,
            )
        )
    if report.session is not None:
        e = report.session
        msg.session.CopyFrom(
            pb.SessionEvent(
                kind=e.kind, segment=e.segment, session_ns=e.session_ns, phase=e.phase,
                attempts=e.attempts, delay_ns=e.delay_ns, downtime_ns=e.downtime_ns,
                keepalive_rtt_ns=e.keepalive_rtt_ns, resumed=e.resumed, resume_ns=e.resume_ns,
            )
        )
    if r.network:
        n = r.network
        msg.network.CopyFrom(
            pb.NetworkContext(
                path=n.path,
                interface=n.interface or "",
                network_type=n.network_type,
                ssid=n.ssid or "",
                signal_dbm=n.signal_dbm,
                source_address=n.source_address or "",
                carrier=n.carrier,
                asn=n.asn,
            )
        )
    return msg


_REASONS = {str(r): r for r in Reason}
# Every valid (reason, step, success); step may be left empty. One set lookup is the
# cheapest check upb allows, and ingest makes it for every result.
_VALID = {(str(r), s, r is Reason.OK) for r in Reason for s in (str(r.step), "")}
_SESSION_KINDS = frozenset({"", "login", "keepalive", "drop", "reconnect"})
# The range of datetime: a certificate date outside it cannot become a Result.
_MIN_UNIX, _MAX_UNIX = -62135596800, 253402300799


def check_wire(msg: pb.ProbeResult) -> None:
    """Everything from_wire checks, without building anything: ingest calls it for every
    result at tens of thousands a second, and decodes (from_wire) only what a sink needs.
    Raises ValueError for a message that is not a valid result."""
    if (msg.reason, msg.step, msg.success) not in _VALID:
        reason = _REASONS.get(msg.reason)
        if reason is None:
            raise ValueError(f"unknown reason code {msg.reason[:64]!r}")
        if msg.step and msg.step != reason.step:
            raise ValueError(
                f"reason {reason} belongs to step {reason.step}, not {msg.step[:64]!r}"
            )
        raise ValueError("success and reason disagree")
    if not _MIN_UNIX <= msg.tls.not_after_unix <= _MAX_UNIX:
        raise ValueError("tls.not_after_unix is out of range")
    if msg.session.kind not in _SESSION_KINDS:
        raise ValueError(f"unknown session event {msg.session.kind[:64]!r}")


def from_wire(msg: pb.ProbeResult) -> Report:
    """The inverse of to_wire. Raises ValueError for a message that is not a valid result
    (see check_wire), which ingest refuses with a counted reason."""
    check_wire(msg)
    reason = _REASONS[msg.reason]
    tls = None
    if msg.HasField("tls"):
        t = msg.tls
        tls = TLSInfo(
            version=t.version,
            cipher=t.cipher,
            alpn=t.alpn or None,
            verified=t.verified,
            verify_error=t.verify_error or None,
            subject=t.subject,
            issuer=t.issuer,
            sans=list(t.sans),
            not_after=datetime.fromtimestamp(t.not_after_unix, UTC) if t.not_after_unix else None,
            days_left=t.days_left if t.not_after_unix else None,
        )
    dns = None
    if msg.HasField("dns"):
        d = msg.dns
        dns = DNSInfo(
            name=d.name,
            addresses=list(d.addresses),
            ttl=None if d.ttl < 0 else d.ttl,
            srv=d.srv or None,
            resolver=d.resolver,
        )
    network = None
    if msg.HasField("network"):
        n = msg.network
        network = NetworkContext(
            network_type=n.network_type,
            ssid=n.ssid or None,
            signal_dbm=n.signal_dbm if n.HasField("signal_dbm") else None,
            source_address=n.source_address or None,
            carrier=n.carrier,
            asn=n.asn if n.HasField("asn") else None,
            path=n.path,
            interface=n.interface or None,
        )
    result = Result(
        url=msg.url,
        protocol=msg.protocol,
        success=msg.success,
        reason=reason,
        message=msg.message,
        started_at=datetime.fromtimestamp(msg.started_at_unix_nano / 1e9, UTC),
        duration_ns=msg.duration_ns,
        phases=[
            Phase(
                name=p.name,
                ok=p.ok,
                start_ns=p.start_offset_ns,
                duration_ns=p.duration_ns,
                skipped=p.skipped,
                message=p.message,
                clock=p.clock,
                server_ns=p.server_duration_ns or None,
            )
            for p in msg.phases
        ],
        resolved_address=msg.resolved_address or None,
        tls=tls,
        dns=dns,
        network=network,
        findings=list(msg.findings),
        transcript=[TranscriptLine(t.offset_ns, t.direction, t.text) for t in msg.transcript],
    )
    session = None
    if msg.HasField("session"):
        e = msg.session
        session = SessionInfo(
            kind=e.kind, segment=e.segment, session_ns=e.session_ns, phase=e.phase,
            attempts=e.attempts, delay_ns=e.delay_ns, downtime_ns=e.downtime_ns,
            keepalive_rtt_ns=list(e.keepalive_rtt_ns), resumed=e.resumed, resume_ns=e.resume_ns,
        )
    return Report(
        result=result,
        seq=msg.seq,
        check=msg.check,
        trace_id=bytes(msg.trace_id),
        clock_offset_ns=msg.clock_offset_ns,
        labels=dict(msg.labels),
        session=session,
    )

"""What every probe shares: the options, the phase timer, the failure type and a bounded,
transcribed connection."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loginprobe.contract import PHASES, Reason
from loginprobe.probes.stream import Stream, StreamWriter
from loginprobe.result import DNSInfo, Phase, Result, TLSInfo, TranscriptLine
from loginprobe.target import Target

Clock = Callable[[], int]

# Where a phase's duration comes from (Phase.clock). kernel: the kernel's own stamps (the
# TCP handshake's RTT; arrivals stamped on receipt, departures at the send call that put
# them on the wire); socket: the same events, arrivals stamped when our read callback ran
# (no kernel timestamps here); process: when our code began and ended the phase.
CLOCK_KERNEL, CLOCK_SOCKET, CLOCK_PROCESS = "kernel", "socket", "process"

# A server may not make a probe read more than this, in one message or in total: a hostile
# or broken server that streams endlessly must not grow our memory.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_TOTAL_BYTES = 1024 * 1024
REDACTED = "<redacted>"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class ProbeFailure(Exception):
    """Raised inside a probe to end the attempt with one reason; the runner turns it into a
    Result. Messages carry the server's own words, never a secret."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ProbeOptions:
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    insecure: bool = False
    resolver: tuple[str, int] | None = None  # (ip, port); None: the system resolver
    timeout: float = 10.0
    interface: str | None = None  # SO_BINDTODEVICE
    source_address: str | None = None
    ping: bool = False
    # After a failure that suggests the wrong protocol, TLS mode or port, find out what the
    # port speaks (probes/mismatch.py). The gate, when given, is asked each time first: the
    # agent's allows one follow-up per check per interval.
    follow_up: bool = True
    follow_up_gate: Callable[[], bool] | None = field(default=None, compare=False)
    # A held XMPP session's reconnect: resume this one (XEP-0198 id, stanzas handled)
    # where the server offers stream management, before falling back to a full login.
    resume: tuple[str, int] | None = None
    # Use XEP-0198 stream management in held XMPP sessions where the server offers it.
    stream_management: bool = True


class PhaseHandle:
    """What a probe may tell the timer about the phase in flight."""

    def __init__(self) -> None:
        # A more exact duration than the wall-clock span, e.g. the kernel's own
        # measurement of the TCP handshake, which excludes our scheduling delay.
        self.measured_ns: int | None = None
        self.skipped = False
        self.ok: bool | None = None  # set to False to record a non-fatal failure
        self.message = ""
        # The phase's traffic, on the attempt's clock: its first and last event (bytes out
        # or in), whether the last was an arrival, whether every arrival was stamped by the
        # kernel, and the server's answer time summed over its exchanges.
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.last_arrival = False
        self.by_kernel = True
        self.server_ns: int | None = None

    def event(self, at: int, arrival: bool = False, by_kernel: bool = True) -> None:
        if self.first_ns is None or at < self.first_ns:
            self.first_ns = at
        if self.last_ns is None or at >= self.last_ns:
            self.last_ns, self.last_arrival = at, arrival
        if arrival:
            self.by_kernel = self.by_kernel and by_kernel

    def exchange(self, server_ns: int | None) -> None:
        if server_ns is not None:
            self.server_ns = (self.server_ns or 0) + max(0, server_ns)

    def timing(self, ok: bool, wall: int) -> tuple[int, str]:
        """(duration, clock): the kernel's measurement; else the span between the phase's
        first and last bytes on the wire (if it ended on its answer when it failed: a phase
        that timed out waited the whole wall-clock time); else the wall clock."""
        if ok and self.measured_ns is not None:
            return self.measured_ns, CLOCK_KERNEL
        if self.first_ns is not None and self.last_ns is not None and (ok or self.last_arrival):
            return self.last_ns - self.first_ns, CLOCK_KERNEL if self.by_kernel else CLOCK_SOCKET
        return wall, CLOCK_PROCESS


class Attempt:
    """One login attempt in progress: phases, transcript and what was learned."""

    def __init__(self, target: Target, options: ProbeOptions, clock: Clock = time.monotonic_ns):
        self.target = target
        self.options = options
        self.clock = clock
        self.started_at = datetime.now(UTC)
        self.t0 = clock()
        self.phases: list[Phase] = []
        self.current: str | None = None
        self.handle: PhaseHandle | None = None  # the phase in flight's
        self.failed_phase: str | None = None
        # What the phase in flight is waiting for, for a deadline's message (e.g. the DNS
        # query and its server); None when the phase name says it all.
        self.waiting_for: str | None = None
        self.transcript: list[TranscriptLine] = []
        self.tls: TLSInfo | None = None
        self.dns: DNSInfo | None = None
        self.resolved_address: str | None = None
        self.port: int | None = None  # the port connected to (SRV may change the URL's)
        self.findings: list[str] = []  # what the follow-up learned
        self.bytes_read = 0
        self.ended_ns: int | None = None
        self.conns: list[Conn] = []  # closed by the runner, whatever happened
        # Set by a session holder: a probe that logged in hands its live connection over
        # (as `held`) instead of closing it.
        self.keep = False
        self.held: object | None = None
        # Secrets learned during the attempt (an access token), scrubbed like the password.
        self.secrets: list[str] = []

    def verdict(self) -> None:
        """The verdict is in: the attempt's duration ends here, whatever the polite close
        after it costs."""
        if self.ended_ns is None:
            self.ended_ns = self.now()

    def now(self) -> int:
        """Nanoseconds since the attempt started."""
        return self.clock() - self.t0

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseHandle]:
        handle = PhaseHandle()
        start = self.now()
        self.current, self.handle = name, handle
        ok = False
        try:
            yield handle
            ok = True
        except BaseException:
            self.failed_phase = name
            raise
        finally:
            self.current, self.handle = None, None
            duration, clock = handle.timing(ok, self.now() - start)
            self.phases.append(
                Phase(
                    name=name,
                    ok=ok if handle.ok is None else handle.ok and ok,
                    start_ns=start,
                    duration_ns=duration,
                    skipped=handle.skipped,
                    message=handle.message,
                    clock=clock,
                    server_ns=handle.server_ns,
                )
            )

    def sent(self, at: int | None) -> None:
        """Our bytes left at `at` (on the attempt's clock, not relative to its start)."""
        if self.handle is not None and at is not None:
            self.handle.event(at - self.t0)

    def arrived(self, at: int | None, by_kernel: bool, server_ns: int | None = None) -> None:
        """The bytes the phase just read arrived at `at`; server_ns: the server's time for
        the request they answer, if they are its first answer."""
        if self.handle is not None and at is not None:
            self.handle.event(at - self.t0, arrival=True, by_kernel=by_kernel)
            self.handle.exchange(server_ns)

    def note(self, direction: str, text: str) -> None:
        self.transcript.append(TranscriptLine(self.now(), direction, text))

    def result(self, reason: Reason, message: str) -> Result:
        return Result(
            url=self.target.url,
            protocol=self.target.protocol,
            success=reason is Reason.OK,
            reason=reason,
            message=self.scrub(message),
            started_at=self.started_at,
            duration_ns=self.now() if self.ended_ns is None else self.ended_ns,
            phases=sorted(self.phases, key=lambda p: PHASES.index(p.name)),
            resolved_address=self.resolved_address,
            tls=self.tls,
            dns=self.dns,
            findings=[self.scrub(f) for f in self.findings],
            transcript=[
                TranscriptLine(t.offset_ns, t.direction, self.scrub(t.text))
                for t in self.transcript
            ],
        )

    def scrub(self, text: str) -> str:
        """Last line of defence for every text we produce: the password never leaves, and
        a hostile server's control characters (terminal escapes, fake new lines) are shown
        escaped instead of reaching a terminal or a log line."""
        pw = self.options.password
        if pw:
            text = text.replace(pw, REDACTED)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\r": "\\r", "\n": "\\n"}.get(char) or f"\\x{ord(char):02x}"


def printable(data: bytes, limit: int = 2048) -> str:
    """Bytes as transcript text: decoded where possible, escaped where not, cut at limit."""
    text = data[:limit].decode("utf-8", "backslashreplace")
    if len(data) > limit:
        text += f"... ({len(data) - limit} more bytes)"
    return text


def hexdump(data: bytes, limit: int = 512) -> str:
    """Bytes of a binary protocol as transcript text: hex, cut at limit."""
    text = data[:limit].hex(" ")
    if len(data) > limit:
        text += f" ... ({len(data) - limit} more bytes)"
    return text


class Conn:
    """A connection (probes/stream.py, or any asyncio stream) with bounded reads, a transcript
    stamped when bytes left and arrived, and failures mapped to reasons."""

    def __init__(
        self, attempt: Attempt, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | StreamWriter, stream: Stream | None = None,
    ) -> None:
        self.attempt = attempt
        self.reader = reader
        self.writer = writer
        # Where the bytes are stamped as they leave and arrive; None for an asyncio stream
        # (its phases then keep the process clock).
        self.stream = stream
        # Binary protocols (MQTT) read better in the transcript as hex than as text.
        self.binary = False
        # While set, received bytes are counted but not transcribed (they carry a token that
        # a read may split, beyond what scrub() can find); the probe notes a redacted form.
        self.redact_received = False
        attempt.conns.append(self)

    async def send(self, data: bytes, shown: str | None = None) -> None:
        """Send data; `shown` replaces it in the transcript (for credentials)."""
        line = len(self.attempt.transcript)
        self.attempt.note(">", shown if shown is not None else printable(data))
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ProbeFailure(Reason.TCP_RESET, f"connection reset while sending: {exc}") from None
        stream = self.stream
        if stream is not None and stream.sent_ns is not None:
            self.attempt.sent(stream.sent_ns)
            # The transcript says when the bytes left, not when we decided to send them.
            self.attempt.transcript[line].offset_ns = stream.sent_ns - self.attempt.t0

    def _account(self, data: bytes) -> bytes:
        stream = self.stream
        if stream is not None and data:
            self.attempt.arrived(stream.arrived_ns, stream.arrived_by_kernel, stream.exchange_ns())
        self.attempt.bytes_read += len(data)
        if data and self.redact_received:
            self.attempt.note("<", f"({len(data)} bytes, shown redacted below)")
        elif data:
            self.attempt.note("<", hexdump(data) if self.binary else printable(data))
            if stream is not None and stream.arrived_ns is not None:
                # When the bytes arrived, not when we got round to reading them.
                self.attempt.transcript[-1].offset_ns = stream.arrived_ns - self.attempt.t0
        if self.attempt.bytes_read > MAX_TOTAL_BYTES:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"the server sent more than {MAX_TOTAL_BYTES} bytes without completing the login",
            )
        return data

    async def recv(self, max_bytes: int = 65536) -> bytes:
        """Whatever has arrived (at least one byte); EOF raises ProbeFailure."""
        try:
            data = await self.reader.read(max_bytes)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ProbeFailure(Reason.TCP_RESET, f"connection reset by the server: {exc}") from None
        except ssl.SSLError as exc:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"TLS error from the server: {exc}") from None
        if not data:
            self.attempt.note("*", "connection closed by the server")
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, "the server closed the connection during the login"
            )
        return self._account(data)

    async def recv_exactly(self, n: int) -> bytes:
        if n > MAX_MESSAGE_BYTES:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"the server announced a {n}-byte message; refused"
            )
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            self._account(exc.partial)
            self.attempt.note("*", "connection closed by the server")
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, "the server closed the connection during the login"
            ) from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ProbeFailure(Reason.TCP_RESET, f"connection reset by the server: {exc}") from None
        except ssl.SSLError as exc:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"TLS error from the server: {exc}") from None
        return self._account(data)

    async def close(self) -> None:
        self.writer.close()
        # The peer's manners on close do not change the verdict.
        # asyncio.timeout rather than wait_for: no extra task per close (~30 µs of CPU).
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(0.5):
                await self.writer.wait_closed()

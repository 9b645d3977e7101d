"""Held sessions: log in, keep the connection with the protocol's keepalive, and on a drop
reconnect with backoff the way an IM SDK does, reporting each step as an event."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from loginprobe.contract import Reason
from loginprobe.probes.attempt import Conn, ProbeFailure, ProbeOptions
from loginprobe.probes.run import run_login
from loginprobe.probes.websocket import WsConn
from loginprobe.result import Result
from loginprobe.target import Target

Event = dict[str, Any]
NS_PING = "urn:xmpp:ping"
NS_SM = "urn:xmpp:sm:3"


class Delays(Protocol):
    """What the holder needs of a backoff (loginprobe.agent.backoff.Backoff fits)."""

    def delay(self) -> float: ...
    def reset(self) -> None: ...


@dataclass(frozen=True)
class SessionOptions:
    keepalive: float = 30.0
    # How long an unanswered keepalive is given before the session counts as dropped.
    keepalive_timeout: float = 10.0
    hold: float | None = None  # None: until cancelled


class Drop(Exception):
    """The session ended: one reason, when the evidence arrived (monotonic seconds), and
    what the session was doing: idle, or keepalive (waiting for an answer)."""

    def __init__(self, reason: Reason, message: str, at: float, phase: str = "idle") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.at = at
        self.phase = phase


class LoginEvent(dict[str, Any]):
    """A login or reconnect event (JSON-ready like any event), with its Result kept beside
    it for whoever sends it on (the agent)."""

    def __init__(self, data: dict[str, Any], result: Result) -> None:
        super().__init__(data)
        self.result = result


class Keeper(Protocol):
    """A held login: the protocol's keepalive, and an idle read that sees the server hang up.
    Any transport with a Conn-like recv/send (TCP, TLS, WebSocket) plugs in here."""

    async def ping(self) -> None: ...
    async def idle(self, seconds: float) -> None: ...
    async def close(self) -> None: ...
    async def abort(self) -> None: ...
    def resume_token(self) -> tuple[str, int] | None: ...


def _closed(conn: Conn, failure: ProbeFailure) -> Reason:
    """A clean close from the server reads as protocol_error during a login; held, it is
    session_closed."""
    if failure.reason is Reason.PROTOCOL_ERROR and conn.reader.at_eof():
        return Reason.SESSION_CLOSED
    if isinstance(conn, WsConn) and conn.close_code in (1000, 1005):
        return Reason.SESSION_CLOSED  # a WebSocket closed normally, without a reason
    return failure.reason


class XmppKeeper:
    """XEP-0199 ping; a server without it answers with an error iq, which is a round trip
    all the same."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.conn: Conn = session.conn
        self._n = 0

    async def _read(self) -> Any:
        while True:
            try:
                stanza = await self.session.stream.next()
            except ProbeFailure as failure:
                raise Drop(_closed(self.conn, failure), failure.message,
                           time.monotonic()) from None
            # The size limit is per exchange, not per session. Not 0: to the stream reader,
            # no byte read yet means the port never spoke XMPP.
            self.conn.attempt.bytes_read = 1
            if stanza.ns == NS_SM:
                if stanza.name == "r":  # XEP-0198: say how many stanzas we have handled
                    await _send(self.conn, f"<a xmlns='{NS_SM}' h='{self.session.sm_handled}'/>")
                continue
            if stanza.name in ("iq", "message", "presence"):
                self.session.sm_handled += 1
            return stanza

    async def ping(self) -> None:
        self._n += 1
        ident = f"ka{self._n}"
        # The namespace spelled out: over WebSocket every stanza must carry it (RFC 7395).
        await _send(
            self.conn,
            f"<iq xmlns='jabber:client' type='get' id='{ident}'><ping xmlns='{NS_PING}'/></iq>",
        )
        while True:
            stanza = await self._read()
            if stanza.name == "iq" and stanza.attrs.get("id") == ident:
                return

    async def idle(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                while True:
                    await self._read()  # pushed stanzas are read and dropped
        except TimeoutError:
            return

    async def close(self) -> None:
        await self.session.close()
        await self.conn.close()

    async def abort(self) -> None:
        """After a drop: the connection goes without a closing </stream:stream>, which
        would end a resumable session on the server for good."""
        await self.conn.close()

    def resume_token(self) -> tuple[str, int] | None:
        """What a reconnect resumes this session by (XEP-0198), if the server allows it."""
        s = self.session
        return (s.sm_id, s.sm_handled) if s.sm_id else None


class MqttKeeper:
    """PINGREQ/PINGRESP; a DISCONNECT from the server ends the session."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def _packet(self) -> int:
        """Read one whole packet (bounded by the probe's size limits); its type nibble."""
        try:
            head = await self.conn.recv_exactly(2)
            length, shift, byte = 0, 0, head[1]
            for _ in range(4):
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                byte = (await self.conn.recv_exactly(1))[0]
            body = await self.conn.recv_exactly(length) if length else b""
        except ProbeFailure as failure:
            raise Drop(_closed(self.conn, failure), failure.message, time.monotonic()) from None
        kind = head[0] >> 4
        if kind == 14:  # DISCONNECT (MQTT 5 carries a reason code)
            code = f" 0x{body[0]:02X}" if body else ""
            raise Drop(
                Reason.SESSION_CLOSED if not body or body[0] == 0 else Reason.SERVER_UNAVAILABLE,
                f"the server sent DISCONNECT{code}",
                time.monotonic(),
            )
        return kind

    async def ping(self) -> None:
        await _send(self.conn, b"\xc0\x00", "PINGREQ")
        while await self._packet() != 13:  # PINGRESP
            pass
        self.conn.attempt.bytes_read = 0

    async def idle(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                while True:
                    await self._packet()
        except TimeoutError:
            return

    async def close(self) -> None:
        await _send(self.conn, b"\xe0\x00", "DISCONNECT")
        await self.conn.close()

    async def abort(self) -> None:
        await self.conn.close()

    def resume_token(self) -> tuple[str, int] | None:
        return None


async def _send(conn: Conn, data: str | bytes, shown: str | None = None) -> None:
    try:
        await conn.send(data.encode() if isinstance(data, str) else data, shown)
    except ProbeFailure as failure:
        raise Drop(failure.reason, failure.message, time.monotonic()) from None


def keeper_for(held: object) -> Keeper:
    """The keeper for what a probe handed over (an MQTT Conn, an XMPP Session)."""
    if isinstance(held, Conn):
        return MqttKeeper(held)
    return XmppKeeper(held)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Summary:
    sessions: int = 0
    drops: int = 0
    up_seconds: float = 0.0
    total_seconds: float = 0.0
    rtts: list[float] = field(default_factory=list)

    def to_event(self) -> Event:
        rtts = sorted(self.rtts)

        def q(p: float) -> float | None:
            return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))], 6) if rtts else None

        return {
            "event": "summary",
            "at": _now(),
            "sessions": self.sessions,
            "drops": self.drops,
            "uptime_ratio": round(self.up_seconds / self.total_seconds, 4)
            if self.total_seconds
            else 0.0,
            "keepalives": len(rtts),
            "keepalive_rtt_seconds": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)},
        }


async def _hold(keeper: Keeper, opts: SessionOptions, emit: Callable[[Event], None],
                summary: Summary) -> None:
    """Keepalives until a Drop is raised (or the caller cancels)."""
    while True:
        await keeper.idle(opts.keepalive)
        sent = time.monotonic()
        try:
            async with asyncio.timeout(opts.keepalive_timeout):
                await keeper.ping()
        except TimeoutError:
            raise Drop(
                Reason.KEEPALIVE_TIMEOUT,
                f"no answer to a keepalive within {opts.keepalive_timeout:g}s",
                time.monotonic(), "keepalive",
            ) from None
        except Drop as drop:
            drop.phase = "keepalive"
            raise
        rtt = time.monotonic() - sent
        summary.rtts.append(rtt)
        emit({"event": "keepalive", "at": _now(), "rtt_seconds": round(rtt, 6)})


def _login_event(kind: str, result: Result) -> LoginEvent:
    return LoginEvent({"event": kind, "at": _now(), **result.to_dict()}, result)


def wall(monotonic: float) -> datetime:
    """A monotonic instant of this process as wall-clock time."""
    return datetime.fromtimestamp(time.time() - (time.monotonic() - monotonic), UTC)


async def hold_session(
    target: Target,
    options: ProbeOptions,
    opts: SessionOptions,
    backoff: Delays,
    emit: Callable[[Event], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    summary: Summary | None = None,
) -> Summary:
    """Log in, hold, reconnect after each drop until opts.hold passes; the summary (filled
    in as it goes, so a caller that cancels still has it). A failed first login ends it,
    like an app showing the login error."""
    summary = summary if summary is not None else Summary()
    start = time.monotonic()
    try:
        await _run(target, options, opts, backoff, emit, sleep, summary)
    finally:
        summary.total_seconds = time.monotonic() - start
    return summary


async def _run(
    target: Target,
    options: ProbeOptions,
    opts: SessionOptions,
    backoff: Delays,
    emit: Callable[[Event], None],
    sleep: Callable[[float], Awaitable[None]],
    summary: Summary,
) -> None:
    result, held = await run_login(target, options, keep=True)
    emit(_login_event("login", result))
    if held is None:
        return
    try:
        async with asyncio.timeout(opts.hold):
            while True:
                summary.sessions += 1
                keeper = keeper_for(held)
                up_since = time.monotonic()
                try:
                    await _hold(keeper, opts, emit, summary)
                except Drop as drop:
                    summary.drops += 1
                    summary.up_seconds += drop.at - up_since
                    await keeper_close_quietly(keeper, abort=True)
                    # Stamped when the evidence arrived, not when the drop was noticed.
                    at = wall(drop.at).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    emit({
                        "event": "drop", "at": at, "reason": drop.reason.value,
                        "step": drop.reason.step.value, "message": drop.message,
                        "hint": drop.reason.hint, "phase": drop.phase,
                        "session_seconds": round(drop.at - up_since, 3),
                    })
                    options = dataclasses.replace(options, resume=keeper.resume_token())
                    held = await _reconnect(target, options, backoff, emit, sleep, drop.at)
                except BaseException:
                    summary.up_seconds += time.monotonic() - up_since
                    await keeper_close_quietly(keeper)
                    raise
    except TimeoutError:
        pass


async def keeper_close_quietly(keeper: Keeper, abort: bool = False) -> None:
    try:
        async with asyncio.timeout(1.0):
            await (keeper.abort() if abort else keeper.close())
    except (ProbeFailure, Drop, TimeoutError, OSError):
        pass


async def _reconnect(
    target: Target,
    options: ProbeOptions,
    backoff: Delays,
    emit: Callable[[Event], None],
    sleep: Callable[[float], Awaitable[None]],
    dropped_at: float,
) -> object:
    """Full timed logins after backoff delays until one works; its live connection."""
    attempts = 0
    while True:
        delay = backoff.delay()
        await sleep(delay)
        attempts += 1
        result, held = await run_login(target, options, keep=True)
        event = _login_event("reconnect", result)
        event.update(attempts=attempts, delay_seconds=round(delay, 3))
        if held is not None:
            backoff.reset()
            event["downtime_seconds"] = round(time.monotonic() - dropped_at, 3)
            # XEP-0198: whether the session was resumed rather than logged in anew, and
            # what the resume exchange took when it was tried.
            event["resumed"] = bool(getattr(held, "resumed", False))
            resume_ns = getattr(held, "resume_ns", None)
            if resume_ns is not None:
                event["resume_seconds"] = round(resume_ns / 1e9, 6)
            emit(event)
            return held
        emit(event)

"""A check with `mode: session` on one network path: the held session of
loginprobe.probes.session for as long as the agent runs, its events turned into Reports and
handed to the spool in the order they happened (so they share the results' sequence numbers
and reach the collector exactly once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from loginprobe.agent.network_paths import ProbePath
from loginprobe.agent.sessions import keepalive_timeout, sdk_backoff
from loginprobe.codec import Report, SessionInfo
from loginprobe.contract import Reason
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.session import Delays, Event, LoginEvent, SessionOptions, hold_session
from loginprobe.result import NetworkContext, Result
from loginprobe.target import Target

log = logging.getLogger(__name__)

Sink = Callable[[Report], Awaitable[object]]
# One keepalive event carries the round trips of this long (or of the stretch up to a
# drop): a held session costs the spool one message a minute while nothing happens.
KEEPALIVE_REPORT_SECONDS = 60.0
# ... or of this many round trips, whichever comes first: a short keepalive (0.1 s) makes
# no message larger than this, and a session that runs on still reports its round trips.
KEEPALIVE_REPORT_MAX = 100


class Spec(Protocol):
    """What a held session needs of its check (the scheduler's CheckSpec)."""

    @property
    def name(self) -> str: ...
    @property
    def target(self) -> Target: ...
    @property
    def keepalive(self) -> float: ...
    def options(self) -> ProbeOptions: ...


@dataclass
class _Pending:
    """Keepalive round trips not yet reported: (wall-clock time, rtt seconds)."""

    rtts: list[tuple[datetime, float]] = field(default_factory=list)
    since: float = 0.0  # monotonic time of the first


class HeldSession:
    """One check's session on one path. run() holds it until cancelled; a first login that
    fails is tried again after the backoff, as an app retries until it is logged in."""

    def __init__(
        self, spec: Spec, path: ProbePath, sink: Sink, clock_offset: Callable[[], int],
        backoff: Delays | None = None, report_every: float = KEEPALIVE_REPORT_SECONDS,
    ) -> None:
        self.spec = spec
        self.path = path
        self.sink = sink
        self.clock_offset = clock_offset
        self.backoff = backoff or sdk_backoff()
        self.report_every = report_every
        self.segment = 0
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._pending = _Pending()
        self._network: NetworkContext | None = None

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            await self._hold()
        finally:
            # Cancelled (the agent stops, the check changed): what was measured is still
            # reported, keepalives included, before the task ends.
            self._flush_keepalives()
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(writer)

    async def _hold(self) -> None:
        opts = SessionOptions(self.spec.keepalive, keepalive_timeout(self.spec.keepalive))
        while True:
            options = self.path.options(self.spec.options())
            await hold_session(self.spec.target, options, opts, self.backoff, self._emit)
            # Returned: the first login failed (a held session runs until cancelled).
            await asyncio.sleep(self.backoff.delay())

    def _emit(self, event: Event) -> None:
        """Called by the holder as things happen; never blocks it."""
        kind = event["event"]
        if kind == "keepalive":
            p = self._pending
            if not p.rtts:
                p.since = time.monotonic()
            p.rtts.append((_parse(event["at"]), event["rtt_seconds"]))
            if (len(p.rtts) >= KEEPALIVE_REPORT_MAX
                    or time.monotonic() - p.since >= self.report_every):
                self._flush_keepalives()
            return
        if kind in ("drop", "reconnect", "login"):
            self._flush_keepalives()
        if isinstance(event, LoginEvent) and event.result.success:
            self.backoff.reset()
        self._queue.put_nowait(event)

    def _flush_keepalives(self) -> None:
        if self._pending.rtts:
            self._queue.put_nowait({"event": "keepalive", "rtts": self._pending.rtts})
            self._pending = _Pending()

    async def _write(self) -> None:
        while (event := await self._queue.get()) is not None:
            try:
                await self.sink(await self._report(event))
            except Exception:  # a spool failure must not end the session
                log.exception("check %s on path %s: could not store a session event",
                              self.spec.name, self.path.name)

    async def _report(self, event: Event) -> Report:
        kind = event["event"]
        info = SessionInfo(kind=kind)
        if isinstance(event, LoginEvent):
            result = event.result
            result.network = self._network = await self.path.context(result.resolved_address)
            if result.success:
                self.segment += 1
            if kind == "reconnect":
                info.attempts = event["attempts"]
                info.delay_ns = round(event["delay_seconds"] * 1e9)
                if "downtime_seconds" in event:
                    info.downtime_ns = round(event["downtime_seconds"] * 1e9)
                info.resumed = event.get("resumed", False)
                info.resume_ns = round(event.get("resume_seconds", 0.0) * 1e9)
        elif kind == "drop":
            reason = Reason(event["reason"])
            result = self._bare(False, reason, event["message"], _parse(event["at"]), 0)
            info.session_ns = round(event["session_seconds"] * 1e9)
            info.phase = event["phase"]
        else:  # keepalive: the round trips since the last event
            rtts: list[tuple[datetime, float]] = event["rtts"]
            first, last = rtts[0][0], rtts[-1][0]
            span = round((last - first).total_seconds() * 1e9) + round(rtts[-1][1] * 1e9)
            result = self._bare(True, Reason.OK, f"{len(rtts)} keepalive(s)", first, span)
            info.keepalive_rtt_ns = [round(rtt * 1e9) for _, rtt in rtts]
        info.segment = max(self.segment, 1)
        if self._network is None:
            self._network = await self.path.context(None)
        return Report(
            result=result, seq=0, check=self.spec.name, trace_id=os.urandom(16),
            clock_offset_ns=self.clock_offset(), labels=self.path.result_labels(self._network),
            session=info,
        )

    def _bare(self, success: bool, reason: Reason, message: str, at: datetime,
              duration_ns: int) -> Result:
        """A Result for an event that is not a login: no phases, the session's network."""
        t = self.spec.target
        return Result(url=t.url, protocol=t.protocol, success=success, reason=reason,
                      message=message, started_at=at, duration_ns=duration_ns, phases=[],
                      network=self._network)


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at).astimezone(UTC)

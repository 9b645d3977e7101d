"""Held sessions for the `session` command: an SDK-like backoff around the holder in
loginprobe.probes.session, and its events printed as text or JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable

from loginprobe.agent.backoff import Backoff
from loginprobe.agent.config import MAX_KEEPALIVE as MAX_KEEPALIVE
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.session import Event, SessionOptions, Summary, hold_session
from loginprobe.target import Target

# Defaults like common IM SDKs' reconnect policies (Smack, Paho, Android XMPP clients): a
# first retry within a second, doubling, capped at a minute.
INITIAL_DELAY, MULTIPLIER, MAX_DELAY = 1.0, 2.0, 60.0


def sdk_backoff(
    initial: float = INITIAL_DELAY,
    multiplier: float = MULTIPLIER,
    cap: float = MAX_DELAY,
    rand: Callable[[], float] = random.random,
) -> Backoff:
    """Exponential backoff with full jitter, as an SDK reconnects."""
    return Backoff(base=initial, cap=cap, rand=rand, multiplier=multiplier)


def keepalive_timeout(keepalive: float) -> float:
    """How long a keepalive may go unanswered: as long as the interval, at most 30 s, since
    the probes' own deadline for a whole login is of that order."""
    return min(keepalive, 30.0)


def describe(event: Event) -> str:
    """One line of text per event."""
    kind, at = event["event"], event["at"]
    if kind in ("login", "reconnect"):
        head = "logged in" if event["success"] else f"login failed: {event['reason']}"
        if kind == "reconnect":
            head = (
                f"reconnect attempt {event['attempts']} after {event['delay_seconds']}s: {head}"
            )
            if "downtime_seconds" in event:
                how = "resumed" if event.get("resumed") else "logged in again"
                head += f", {how} {event['downtime_seconds']}s after the drop"
        return f"{at} {head} ({event['duration_seconds'] * 1000:.0f} ms: {event['message']})"
    if kind == "keepalive":
        return f"{at} keepalive round trip {event['rtt_seconds'] * 1000:.1f} ms"
    if kind == "drop":
        return (
            f"{at} dropped after {event['session_seconds']}s: {event['reason']} "
            f"({event['step']}): {event['message']}\n  hint: {event['hint']}"
        )
    rtt = event["keepalive_rtt_seconds"]
    ms = {k: ("-" if v is None else f"{v * 1000:.1f}") for k, v in rtt.items()}
    return (
        f"{at} summary: {event['sessions']} session(s), {event['drops']} drop(s), "
        f"up {event['uptime_ratio'] * 100:.1f}% of the time; {event['keepalives']} keepalives, "
        f"round trip p50 {ms['p50']} ms, p90 {ms['p90']} ms, p99 {ms['p99']} ms"
    )


def run_session(
    target: Target, options: ProbeOptions, hold: float | None, keepalive: float, as_json: bool
) -> int:
    """Hold the session until `hold` passes (or Ctrl-C); 0 when nothing dropped."""

    def emit(event: Event) -> None:
        print(json.dumps(event) if as_json else describe(event), flush=True)

    opts = SessionOptions(keepalive, keepalive_timeout(keepalive), hold)
    summary = Summary()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(hold_session(target, options, opts, sdk_backoff(), emit, summary=summary))
    emit(summary.to_event())
    return 0 if summary.sessions and not summary.drops else 1

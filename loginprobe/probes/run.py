"""The runner: each protocol's `async def probe(attempt) -> None` inside a deadline; run_check
owns the deadline and turns whatever happened into exactly one Result."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from collections.abc import Awaitable, Callable

from loginprobe.contract import Reason
from loginprobe.probes import mismatch
from loginprobe.probes.attempt import Attempt, Clock, ProbeFailure, ProbeOptions
from loginprobe.protocols import BY_NAME
from loginprobe.result import Result
from loginprobe.target import Target

log = logging.getLogger(__name__)

Probe = Callable[[Attempt], Awaitable[None]]


@functools.cache
def probe_for(protocol: str) -> Probe:
    """The protocol's probe, from the module its record names (imported on first use)."""
    module = importlib.import_module(f"loginprobe.probes.{BY_NAME[protocol].probe}")
    probe: Probe = module.probe
    return probe

# When the deadline passes, the phase in flight is blamed.
_TIMEOUT_REASONS = {
    "dns": Reason.DNS_TIMEOUT,
    "tcp": Reason.TCP_TIMEOUT,
    "tls": Reason.TLS_TIMEOUT,
    "login": Reason.LOGIN_TIMEOUT,
    # Connected, and the server does not finish the WebSocket upgrade: the HTTP probe's
    # stalled answer is a login timeout too.
    "upgrade": Reason.LOGIN_TIMEOUT,
}



def _may_follow_up(
    attempt: Attempt, reason: Reason, message: str, options: ProbeOptions
) -> bool:
    if not options.follow_up or not mismatch.suspicious(attempt, reason, message):
        return False
    return options.follow_up_gate is None or options.follow_up_gate()


async def run_check(
    target: Target, options: ProbeOptions, clock: Clock = time.monotonic_ns
) -> Result:
    """One login attempt against target within options.timeout; never raises for a failing
    target."""
    result, _ = await run_login(target, options, clock)
    return result


async def run_login(
    target: Target, options: ProbeOptions, clock: Clock = time.monotonic_ns, keep: bool = False
) -> tuple[Result, object | None]:
    """run_check, and with keep=True the live connection of a successful login (the
    probe's own object: an XMPP Session, an MQTT Conn) instead of closing it."""
    try:
        probe = probe_for(target.protocol)  # imported before the clock starts, not inside it
    except Exception:  # a broken install must still yield Results that say so
        log.exception("cannot load the probe of %s", target.protocol)

        async def probe(attempt: Attempt) -> None:
            raise RuntimeError(f"the {target.protocol} probe cannot be loaded")
    attempt = Attempt(target, options, clock)
    attempt.keep = keep
    reason, message = Reason.OK, BY_NAME[target.protocol].done
    try:
        try:
            async with asyncio.timeout(options.timeout):
                await probe(attempt)
        except ProbeFailure as failure:
            reason, message = failure.reason, failure.message
        except TimeoutError:
            phase = attempt.failed_phase
            reason = _TIMEOUT_REASONS.get(phase or "", Reason.TIMEOUT)
            message = (
                f"no progress in the {phase} phase before the {options.timeout:g}s deadline"
                if phase
                else f"the {options.timeout:g}s deadline passed"
            )
            if attempt.waiting_for:
                message += f": waiting for {attempt.waiting_for}"
        except Exception as exc:  # a bug of ours must still yield a Result
            log.exception("internal error probing %s", target.url)
            reason, message = Reason.INTERNAL_ERROR, f"internal error: {type(exc).__name__}"
        # The verdict is in: closing politely afterwards is not part of the attempt.
        attempt.verdict()
        if _may_follow_up(attempt, reason, message, options):
            reason, message = await mismatch.investigate(attempt, reason, message)
    finally:
        if reason is not Reason.OK or attempt.held is None:
            attempt.held = None
            for conn in attempt.conns:
                await conn.close()
    if reason is not Reason.OK:
        attempt.note("*", f"failed: {reason}: {message}")
    return attempt.result(reason, message), attempt.held

"""The optional ping phase: ICMP echo with aioping; no permission means skipped, not failed."""

from __future__ import annotations

from loginprobe.probes.attempt import Attempt

PING_BUDGET_S = 1.0


async def ping(attempt: Attempt, address: str) -> None:
    """Record reachability; never fails the attempt: many networks drop ICMP on purpose."""
    budget = min(PING_BUDGET_S, attempt.options.timeout / 4)
    with attempt.phase("ping") as phase:
        try:
            # Imported here: aioping reads /etc/protocols at import, which a minimal image
            # may lack, and that must cost the ping phase only, never the probes.
            import aioping

            delay = await aioping.ping(address, timeout=budget)
        except PermissionError:
            phase.skipped = True
            phase.message = "no permission for ICMP (needs root or CAP_NET_RAW)"
        except (TimeoutError, OSError) as exc:
            phase.ok = False
            phase.message = f"no echo reply from {address}: {exc or 'timeout'}"
        else:
            phase.measured_ns = int(delay * 1e9)
        attempt.note("*", f"ping {address}: {phase.message or 'echo reply'}")

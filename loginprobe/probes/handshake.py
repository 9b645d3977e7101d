"""tcp:// and tls:// targets: the connection (and handshake) is the whole check."""

from __future__ import annotations

from loginprobe.probes.attempt import Attempt
from loginprobe.probes.transport import connect_only, establish


async def probe(attempt: Attempt) -> None:
    if attempt.target.tls_mode == "none":
        await connect_only(attempt)
    else:
        await establish(attempt)

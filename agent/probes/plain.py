"""tcp:// and tls:// targets: the connection (and handshake) is the whole check."""

from __future__ import annotations

from agent.probes.base import Attempt
from agent.probes.connect import connect_only, open_connection


async def probe(attempt: Attempt) -> None:
    if attempt.target.tls_mode == "none":
        await connect_only(attempt)
    else:
        await open_connection(attempt)

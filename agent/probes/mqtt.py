"""mqtt login probe (being written)."""

from __future__ import annotations

from agent.probes.base import Attempt
from agent.probes.connect import open_connection


async def probe(attempt: Attempt) -> None:
    await open_connection(attempt)

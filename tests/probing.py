"""What the probe tests share: options that trust the servers, a check that also proves the
password never leaks, and small views of a Result."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
from typing import Any

from devstack.servers import Servers
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.run import run_check
from loginprobe.result import Result
from loginprobe.target import parse_target


def options(servers: Servers, **overrides: Any) -> ProbeOptions:
    """Trust the servers' CA and ask its resolver; overrides as in dataclasses.replace."""
    base = ProbeOptions(
        password=servers.password,
        ca_file=str(servers.ca_file),
        resolver=("127.0.0.1", servers.dns_port),
        timeout=5.0,
    )
    return dataclasses.replace(base, **overrides)


async def check(url: str, opts: ProbeOptions) -> Result:
    """run_check, plus the promise every case keeps: neither the password nor a Basic token
    or SASL PLAIN payload that encodes it is anywhere in the output."""
    target = parse_target(url)
    result = await run_check(target, opts)
    dumped = json.dumps(result.to_dict(transcript=True))
    if opts.password:
        for plain in (
            opts.password,
            f"{target.user}:{opts.password}",
            f"\0{target.user}\0{opts.password}",
        ):
            assert plain not in dumped
            assert base64.b64encode(plain.encode()).decode() not in dumped
    return result


def phases(result: Result) -> list[tuple[str, bool]]:
    return [(p.name, p.ok) for p in result.phases]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

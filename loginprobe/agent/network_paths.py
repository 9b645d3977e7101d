"""The agent's network paths at run time: how an attempt leaves by a path, and the labels
and network context each of its results carries."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loginprobe.address import parse_resolver
from loginprobe.agent import netinfo
from loginprobe.agent.config import AgentConfig, NetworkPath
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.result import NetworkContext

DEFAULT = "default"
# How long what was learned of a path stands: a modem may come up, a laptop change SSID.
REFRESH_SECONDS = 30.0


@dataclass(eq=False)
class ProbePath:
    """One path: where its attempts leave from, and its labels."""

    name: str
    interface: str | None = None  # SO_BINDTODEVICE
    source_address: str | None = None
    resolver: tuple[str, int] | None = None
    labels: dict[str, str] = field(default_factory=dict)  # the agent's, then the path's
    network_type: str | None = None  # configured; None: detected from the interface
    learn: Callable[..., NetworkContext] = netinfo.network_context  # tests pass a fake
    _context: NetworkContext | None = field(default=None, init=False, repr=False)
    _learned_at: float = field(default=-REFRESH_SECONDS, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> list[ProbePath]:
        """The configured paths; none configured is one path the way the system routes."""
        paths = cfg.paths or [NetworkPath(name=DEFAULT)]
        out = []
        for p in paths:
            labels = {**cfg.labels.as_dict(), **p.labels.as_dict()}
            out.append(cls(
                name=p.name, interface=p.interface, source_address=p.source_address,
                resolver=parse_resolver(p.resolver) if p.resolver else None,
                network_type=labels.pop("network_type", None), labels=labels,
            ))
        return out

    def options(self, check: ProbeOptions) -> ProbeOptions:
        """A check's options on this path. A check's own resolver wins over the path's: it
        was set for that check on purpose (a split-horizon name, a resolver under test)."""
        return dataclasses.replace(
            check, interface=self.interface, source_address=self.source_address,
            resolver=check.resolver or self.resolver,
        )

    async def context(self, resolved_address: str | None) -> NetworkContext:
        """What is known of this path now, with the source address an attempt to
        resolved_address used. The slow part (sysfs, `iw`) runs in a thread at most every
        REFRESH_SECONDS, after the attempt: it never delays a probe."""
        async with self._lock:  # one look-up at a time, the others wait for its answer
            if self._context is None or time.monotonic() - self._learned_at > REFRESH_SECONDS:
                self._context = await asyncio.to_thread(
                    self.learn, self.interface, configured_type=self.network_type,
                    carrier=self.labels.get("carrier", ""), asn=_asn(self.labels),
                    path=self.name,
                )
                self._learned_at = time.monotonic()
            ctx = self._context
        source = None
        if resolved_address and _is_ip(resolved_address):
            # A UDP connect() picks the route and nothing is sent: microseconds.
            source = netinfo.source_address(
                resolved_address, self.interface, self.source_address
            )
        return dataclasses.replace(ctx, source_address=source or self.source_address)

    def result_labels(self, ctx: NetworkContext) -> dict[str, str]:
        """The labels of a result on this path: region and carrier always (the metrics of
        CONTRACT.md section 4 carry them), the path's name and its network type."""
        return {"region": "", "carrier": "", **self.labels, "path": self.name,
                "network_type": ctx.network_type}


def _asn(labels: dict[str, str]) -> int | None:
    asn = labels.get("asn")
    return int(asn) if asn else None  # validated as an integer by the config


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

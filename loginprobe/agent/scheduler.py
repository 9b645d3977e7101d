"""Runs every check on its interval, each at its own hashed offset so a thousand checks do not
fire at once, on every network path (the paths start together, then each keeps its own
schedule, so a slow path never costs another its samples), under one concurrency limit, and
hands each Result on as a Report."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from loginprobe.address import parse_resolver
from loginprobe.agent import config
from loginprobe.agent.held import HeldSession
from loginprobe.agent.network_paths import ProbePath
from loginprobe.codec import Report
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.run import run_check
from loginprobe.result import Result
from loginprobe.target import Target, parse_target

log = logging.getLogger(__name__)

Probe = Callable[[Target, ProbeOptions], Awaitable[Result]]
Sink = Callable[[Report], Awaitable[object]]
LOCAL, ASSIGNED = "local", "assigned"


@dataclass(frozen=True)
class CheckSpec:
    """One check as the scheduler runs it, whether from the config file or the collector."""

    name: str
    target: Target
    interval: float
    timeout: float
    password: config.PasswordSource | None = field(default=None, repr=False)
    ca_file: str | None = None
    insecure: bool = False
    resolver: tuple[str, int] | None = None
    follow_up: bool = True
    mode: str = "login"  # or "session": held, with a keepalive every `keepalive` seconds
    keepalive: float = 30.0

    @classmethod
    def build(
        cls, name: str, url: str, interval: float, timeout: float | None, *,
        password: config.PasswordSource | None = None, ca_file: str | None = None,
        insecure: bool = False, resolver: str | None = None, follow_up: bool = True,
        mode: str = "login", keepalive: float = 30.0,
    ) -> CheckSpec:
        """Raises ValueError (a TargetError, a bad resolver) saying what is wrong."""
        if not name or not interval > 0:
            raise ValueError("a check needs a name and an interval above zero")
        config.check_mode(url, mode or "login", keepalive)
        # A run may never outlast its interval, or runs of one check would pile up.
        timeout = min(timeout or 10.0, interval)
        address = parse_resolver(resolver) if resolver else None
        return cls(
            name, parse_target(url), interval, timeout, password, ca_file or None, insecure,
            address, follow_up, mode or "login", keepalive,
        )

    @classmethod
    def from_config(cls, c: config.Check) -> CheckSpec:
        return cls.build(
            c.name, c.url, c.interval, c.effective_timeout,
            password=c.password if c.password_env or c.password_file else None,
            ca_file=str(c.ca_file) if c.ca_file else None, insecure=c.insecure,
            resolver=c.resolver, follow_up=c.follow_up, mode=c.mode, keepalive=c.keepalive,
        )

    def options(self) -> ProbeOptions:
        password = None
        if self.password is not None:
            try:
                password = self.password.read()
            except OSError as exc:  # the attempt still runs and fails visibly at login
                log.error("check %s: cannot read its password file (%s)", self.name, exc.strerror)
        return ProbeOptions(
            password=password, ca_file=self.ca_file, insecure=self.insecure,
            resolver=self.resolver, timeout=self.timeout, follow_up=self.follow_up,
        )


class FollowUpGate:
    """Allows one follow-up per check per interval, however many paths or runs ask: the
    follow-up's extra connections must never multiply a check's load on a server."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last: float | None = None

    def __call__(self) -> bool:
        now = self.clock()
        # Half an interval, not a whole one: runs fall one interval apart, give or take the
        # loop's jitter, and each run may have one; the paths of one run share it.
        if self.last is not None and now - self.last < self.interval / 2:
            return False
        self.last = now
        return True


def first_offset(salt: bytes, name: str, interval: float) -> float:
    """Where in its interval a check runs: a hash spreads checks evenly and keeps each one's
    phase stable across reloads; the salt differs per agent, so agents sharing a check do
    not hit its server in the same instant."""
    digest = hashlib.sha256(salt + name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


class Scheduler:
    def __init__(
        self, sink: Sink, paths: Sequence[ProbePath], concurrency: int,
        probe: Probe = run_check, salt: bytes | None = None,
    ) -> None:
        if not paths:
            raise ValueError("the scheduler needs at least one network path")
        self._sink = sink
        self._paths = list(paths)
        self._probe = probe
        self._salt = os.urandom(8) if salt is None else salt
        self._slots = asyncio.Semaphore(concurrency)
        self._loops: dict[tuple[str, str], tuple[CheckSpec, asyncio.Task[None]]] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._gates: dict[str, FollowUpGate] = {}  # per check name
        self._epoch = asyncio.get_running_loop().time()
        self._stopping = False
        self.in_flight = 0  # probes holding a slot right now
        self.skipped_total = 0  # runs not started because the previous one still waited
        self.clock_offset_ns = 0  # collector clock - our clock, set by the uplink

    def count(self, source: str) -> int:
        """Checks scheduled from source. Safe from the metrics thread: list() copies the
        keys in one step under the GIL, where iterating the dict could see it change."""
        return sum(1 for src, _ in list(self._loops) if src == source)

    def replace(self, source: str, specs: Iterable[CheckSpec]) -> None:
        """Make specs the whole set for source (local or assigned)."""
        specs = list(specs)
        keep = {s.name for s in specs}
        gone = [name for (src, name) in self._loops if src == source and name not in keep]
        self.remove(source, gone)
        self.upsert(source, specs)

    def upsert(self, source: str, specs: Iterable[CheckSpec]) -> None:
        """Add or change checks. An unchanged check keeps running undisturbed, so the full
        set the collector re-sends on every reconnect costs nothing."""
        for spec in specs:
            key = (source, spec.name)
            old = self._loops.get(key)
            if old and old[0] == spec:
                continue
            if old:
                old[1].cancel()  # its run in flight, if any, finishes and is spooled
            if spec.mode == "session":
                log.info("%s check %s: %s held, keepalive every %gs",
                         "changed" if old else "added", spec.name, spec.target.url,
                         spec.keepalive)
                self._loops[key] = (spec, asyncio.create_task(self._hold(spec)))
                continue
            log.info("%s check %s: %s every %gs", "changed" if old else "added", spec.name,
                     spec.target.url, spec.interval)
            self._loops[key] = (spec, asyncio.create_task(self._every(spec)))

    def remove(self, source: str, names: Iterable[str]) -> None:
        for name in names:
            entry = self._loops.pop((source, name), None)
            self._gates.pop(name, None)
            if entry:
                entry[1].cancel()
                log.info("removed check %s", name)

    async def stop(self) -> None:
        """Schedule nothing more; let the probes in flight finish (each is bounded by its
        timeout) and hand on their results."""
        self._stopping = True
        loops = [task for _, task in self._loops.values()]
        self._loops.clear()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(*self._runs, return_exceptions=True)

    async def _hold(self, spec: CheckSpec) -> None:
        """A check with mode: session: its session held on every path until cancelled.
        Not under the concurrency limit: a held session would keep its slot for good."""
        def offset() -> int:
            return self.clock_offset_ns

        # return_exceptions: without it the gather ends as soon as one path's session ends
        # (cancelled at a stop, say), while another path may still be writing its last
        # events to the spool, and the stop's drain would not wait for them.
        ended = await asyncio.gather(*(
            HeldSession(spec, path, self._sink, offset).run() for path in self._paths),
            return_exceptions=True)
        for path, error in zip(self._paths, ended, strict=True):
            if isinstance(error, Exception):
                log.error("check %s on path %s: the held session ended: %r",
                          spec.name, path.name, error)

    async def _every(self, spec: CheckSpec) -> None:
        loop = asyncio.get_running_loop()
        # Runs fall at epoch + offset + k * interval: the same instants after a change or a
        # re-sent assignment as before it.
        phase = self._epoch + first_offset(self._salt, spec.name, spec.interval)
        next_at = phase + max(0, math.ceil((loop.time() - phase) / spec.interval)) * spec.interval
        # Each path keeps its own schedule: a path whose last attempt is still running (a
        # timeout on a slow cellular link) skips its turn, the others never do.
        previous: dict[int, asyncio.Task[None]] = {}
        while True:
            await asyncio.sleep(next_at - loop.time())
            self._start_round(spec, previous)
            next_at += spec.interval
            if next_at < loop.time():  # we were suspended or starved: skip, don't burst
                next_at += math.ceil((loop.time() - next_at) / spec.interval) * spec.interval

    def _start_round(self, spec: CheckSpec, previous: dict[int, asyncio.Task[None]]) -> None:
        """One round of a check: an attempt on every path whose last one has finished, all
        at once, so the paths' samples are paired (same moment, same server load). The order
        is shuffled on each round: the attempt started first on the event loop must not
        always be the same path's."""
        gate = self._gates.get(spec.name)
        if gate is None or gate.interval != spec.interval:
            gate = self._gates[spec.name] = FollowUpGate(spec.interval)
        options = dataclasses.replace(spec.options(), follow_up_gate=gate)
        for index in random.sample(range(len(self._paths)), len(self._paths)):
            last = previous.get(index)
            if last is not None and not last.done():
                # This path's last attempt has not finished (it waited long for a slot, or
                # its network is slow): starting another would only grow its queue.
                self.skipped_total += 1
                continue
            task = asyncio.create_task(self._attempt(spec, options, self._paths[index]))
            previous[index] = task
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _attempt(self, spec: CheckSpec, options: ProbeOptions, path: ProbePath) -> None:
        async with self._slots:
            if self._stopping:  # queued, not started: nothing is lost by not starting
                return
            self.in_flight += 1
            try:
                result = await self._probe(spec.target, path.options(options))
            finally:
                self.in_flight -= 1
        try:
            result.network = await path.context(result.resolved_address)
            report = Report(
                result=result, seq=0, check=spec.name, trace_id=os.urandom(16),
                clock_offset_ns=self.clock_offset_ns,
                labels=path.result_labels(result.network),
            )
            await self._sink(report)
        except Exception:  # a spool failure must not end the schedule
            log.exception("check %s on path %s: could not store its result", spec.name,
                          path.name)

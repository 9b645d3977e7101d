"""Result batches from the wire into the collector: validate each result, deduplicate by
(agent, seq) against a per-agent high-water mark, count, hand on to the sinks, and say
which sequence number to acknowledge."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from loginprobe.codec import Report, ResultView, check_wire, from_wire
from loginprobe.wire import collector_pb2 as pb

log = logging.getLogger(__name__)

# The closed set of `reason` values of loginprobe_collector_results_rejected_total.
REJECT_REASONS = (
    "unauthenticated",  # no credential, or one the registry does not know
    "permission_denied",  # a revoked agent
    "no_hello",  # the first message was not a Hello
    "second_hello",  # a Hello after the first
    "malformed",  # bytes that are not a ConnectRequest, or an empty one
    "oversized",  # a message over limits.max_message_bytes
    "batch_too_large",  # more results than limits.max_batch_results
    "out_of_order",  # seq not strictly increasing within a batch
    "invalid_result",  # a result the codec refuses (counted per result; the stream goes on)
    "credential_in_use",  # a second live stream of one agent's credential from another spool
)


class Refused(Exception):
    """A message (and with it the stream) refused with a gRPC status and a counted reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass
class FleetState:
    """What the collector knows of its fleet, in plain Python: which agents are connected
    with which labels, and its own counters; exporters render it. `received`
    counts each (agent, seq) once: a replayed result shows in `duplicates` instead."""

    received: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    connected: dict[str, dict[str, str]] = field(default_factory=dict)  # agent -> labels
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # last seen, kept
    last_result: dict[str, float] = field(default_factory=dict)  # agent -> unix time
    versions: dict[str, str] = field(default_factory=dict)  # agent -> its Hello's version
    connected_since: dict[str, float] = field(default_factory=dict)  # agent -> unix time
    # agent -> results two replicas both processed (shared state; see Ingest.batch_shared)
    doubled: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] += count


@dataclass
class Accepted:
    """One batch's new results for the sinks: read in place as ResultViews, or decoded to
    Reports (~30 µs a result), which happens only when a sink asks, and once."""

    agent: str
    fixed_labels: dict[str, str]  # the registry's labels win over what a result claims
    wire: list[pb.ProbeResult]
    _reports: list[Report] | None = None
    key: str = ""  # the mark's key (state.mark_key): the agent and its spool

    @property
    def results(self) -> Sequence[ResultView]:
        return self.wire

    def reports(self) -> list[Report]:
        if self._reports is None:
            self._reports = []
            for msg in self.wire:
                report = from_wire(msg)  # cannot fail: check_wire passed
                report.agent = self.agent
                report.labels.update(self.fixed_labels)
                self._reports.append(report)
        return self._reports


class Sink(Protocol):
    """Where accepted results go: the exporters and the results log (collector/sinks.py
    builds them from the config). write() runs on the event loop and must not block."""

    def write(self, batch: Accepted) -> None: ...

    def close(self) -> None: ...


class MarkStore(Protocol):
    """Where a local mark is persisted (collector/state.py's StateFile)."""

    def record(self, key: str, seq: int) -> None: ...


class SharedMarks(Protocol):
    """Marks shared by replicas (collector/state.py's RedisState). advance() stores
    max(mark, floor, seq) and returns max(mark, floor) as it was; it raises when the store
    cannot be reached, and until_available() retries it: fail closed, no ack meanwhile."""

    async def advance(self, key: str, seq: int, floor: int) -> int: ...

    async def until_available(self, key: str, seq: int, floor: int) -> int: ...


def last_seq(results: Sequence[pb.ProbeResult]) -> int:
    """The batch's last seq, or Refused if the seqs do not increase."""
    previous = 0
    for msg in results:
        if msg.seq <= previous:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, "out_of_order",
                f"seq {msg.seq} after {previous} in one batch: sequence numbers start at 1 "
                "and must increase",
            )
        previous = msg.seq
    return previous


class Ingest:
    """Per-agent high-water marks and the batch path. Results of one agent arrive in order
    (the agent replays its spool oldest first), so a seq at or below the mark was processed
    before: counted as a duplicate, acknowledged, not processed again. A mark belongs to a
    key, the agent and its spool (state.mark_key). Kept here (and in `store`, a state file,
    once per batch) or, with `shared`, in Redis, advanced there right after the sinks saw
    the batch."""

    def __init__(self, fleet: FleetState, sinks: Sequence[Sink] = (),
                 high_water: dict[str, int] | None = None, store: MarkStore | None = None,
                 shared: SharedMarks | None = None) -> None:
        self.fleet = fleet
        self.sinks = list(sinks)
        self.high_water = high_water or {}
        self.store = store
        self.shared = shared
        self._logged_invalid: set[str] = set()

    def hello(self, agent: str, last_acked_seq: int) -> int:
        """The highest seq of this agent known processed. What the agent says was acked was
        processed by some collector, so it raises the mark (this one may have restarted)."""
        mark = self.high_water.get(agent, 0)
        if last_acked_seq > mark:
            mark = self.high_water[agent] = last_acked_seq
            if self.store is not None:
                self.store.record(agent, mark)
        return mark

    async def hello_shared(self, key: str, last_acked_seq: int) -> int:
        """hello() against the shared marks. The agent's acknowledged seq and this replica's
        last known mark are floors: a Redis that lost its data cannot lower a mark below
        what either knows. Raises StateUnavailable."""
        assert self.shared is not None
        floor = self.high_water.get(key, 0)
        mark = max(await self.shared.until_available(key, last_acked_seq, floor),
                   last_acked_seq)
        self.high_water[key] = mark
        return mark

    def batch(self, agent: str, fixed_labels: dict[str, str],
              results: Sequence[pb.ProbeResult], key: str = "") -> int:
        """Process one batch and return the seq to acknowledge, or raise Refused with
        nothing changed. No await and no per-result logging here: this is the hot path."""
        key = key or agent
        mark = self.high_water.get(key, 0)
        last = self._process(agent, fixed_labels, results, mark, key)
        if last > mark:
            self.high_water[key] = mark = last
            if self.store is not None:
                self.store.record(key, last)
        return mark

    async def batch_shared(self, agent: str, fixed_labels: dict[str, str],
                           results: Sequence[pb.ProbeResult], key: str) -> int:
        """batch() with the mark advanced in the shared state (one round trip) right after
        the sinks. This replica's mark came from the shared state at hello and has been
        advanced by itself since: an agent streams to one replica at a time, so results
        above it are new. Sinks first: the advance leaves the process in the same step of
        the event loop, so a replica killed at any moment has either not processed a batch
        or has its advance on the wire (claiming first and dying before the sinks would
        lose the batch for good). Only a replica frozen past the agents' keepalive that
        then resumes a batch the agent meanwhile replayed elsewhere counts it twice: seen
        here, logged and counted. While the shared state is unreachable this waits: no
        ack, and the stream reads no further batch."""
        assert self.shared is not None
        floor = self.high_water.get(key, 0)
        last = self._process(agent, fixed_labels, results, floor, key)
        self.high_water[key] = max(floor, last)
        before = await self.shared.until_available(key, last, floor)
        if before > floor:
            twice = sum(1 for r in results if floor < r.seq <= before)
            self.fleet.doubled[agent] = self.fleet.doubled.get(agent, 0) + twice
            if twice:
                log.warning("agent %s: %d result(s) up to seq %d were also processed by "
                            "another replica (this one was frozen meanwhile): counted twice",
                            agent, twice, before)
        mark = self.high_water[key] = max(before, last)
        return mark

    def _process(self, agent: str, fixed_labels: dict[str, str],
                 results: Sequence[pb.ProbeResult], mark: int, key: str = "") -> int:
        """Hand the results above mark to the sinks and count; return the batch's last seq."""
        previous = 0
        fresh: list[pb.ProbeResult] = []
        invalid = 0
        first_error = ""
        for msg in results:
            seq = msg.seq
            if seq <= previous:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT, "out_of_order",
                    f"seq {seq} after {previous} in one batch: sequence numbers start at 1 "
                    "and must increase",
                )
            previous = seq
            if seq <= mark:
                continue
            try:
                check_wire(msg)
            except ValueError as exc:
                # Acknowledged all the same: resending a result that can never be valid
                # would block the agent's spool for good.
                invalid += 1
                first_error = first_error or f"seq {seq}: {exc}"
                continue
            fresh.append(msg)
        duplicates = len(results) - len(fresh) - invalid
        if fresh:
            batch = Accepted(agent, fixed_labels, fresh, key=key)
            for sink in self.sinks:
                sink.write(batch)
            self.fleet.received[agent] = self.fleet.received.get(agent, 0) + len(fresh)
            self.fleet.last_result[agent] = time.time()
        if duplicates:
            self.fleet.duplicates[agent] = self.fleet.duplicates.get(agent, 0) + duplicates
        if invalid:
            self.fleet.reject("invalid_result", invalid)
            if agent not in self._logged_invalid:  # once per agent, never per result
                self._logged_invalid.add(agent)
                log.warning("agent %s sent %d invalid result(s), dropped and counted; "
                            "the first: %s", agent, invalid, first_error)
        return previous

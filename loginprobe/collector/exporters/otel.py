"""Attempts as OpenTelemetry traces: one trace per attempt (the agent's trace id), a root
span and a child span per phase with the times the agent measured, exported over OTLP/gRPC
by one thread from a bounded queue that ingest never waits on.

The spans describe the past (the agent's clock, corrected by its offset), so they are not
made with a live Tracer: they are built as the SDK's ReadableSpans and handed straight to
the SDK's OTLP exporter. This is the collector process's export setup, not library code."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from loginprobe.codec import ResultView
from loginprobe.collector.ingest import Accepted, FleetState
from loginprobe.target import TargetError, parse_target

log = logging.getLogger(__name__)

_SCOPE = InstrumentationScope("loginprobe.collector", "0.1.0")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_BATCH = 512  # spans' attempts per export call
_DELAY = 1.0  # seconds a partial batch waits for company
_RESOURCE_LABELS = ("region", "carrier", "network_type", "path")
_Item = tuple[str, Mapping[str, str], Mapping[str, str], ResultView]


def _span_id() -> int:
    return random.getrandbits(64) or 1  # 0 is the invalid span id


class TraceExporter(Collector):
    """A sink: failed attempts always, successes when the trace id falls under the ratio
    (the same attempt always gets the same decision, like TraceIdRatioBased). When the
    queue is full a failure replaces the oldest queued success; only failures beyond a
    queue of failures are lost. Also a
    Prometheus collector of what it dropped or failed to send (beyond the contract)."""

    def __init__(self, fleet: FleetState, exporter: SpanExporter, success_sample_ratio: float,
                 queue_size: int = 10_000, max_sampled_per_second: float = 100.0) -> None:
        self.fleet = fleet
        self.exporter = exporter
        self.queue_size = queue_size
        # The SDK spends ~0.4 ms of CPU on each attempt it exports (building and encoding
        # five spans), in this process: a budget on sampled successes keeps a busy fleet's
        # traces from taking the CPU ingest needs. Failures are never held to it.
        self.max_sampled_per_second = max_sampled_per_second
        self._tokens = max_sampled_per_second
        self._refilled = time.monotonic()
        self.over_budget = 0
        # Compared with the trace id's low 64 bits, as the SDK's ratio sampler does.
        self._bound = round(success_sample_ratio * 2**64)
        self._queue: deque[_Item] = deque()  # sampled successes
        self._failures: deque[_Item] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resources: dict[tuple[str, ...], Resource] = {}
        self._targets: dict[str, tuple[str, int] | None] = {}
        self.dropped = 0  # attempts not exported: the queue was full
        self.failed = 0  # attempts the receiver did not take
        self.exported = 0
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    @classmethod
    def otlp(cls, fleet: FleetState, endpoint: str, insecure: bool, success_sample_ratio: float,
             queue_size: int, max_sampled_per_second: float) -> TraceExporter:
        return cls(fleet, OTLPSpanExporter(endpoint=endpoint, insecure=insecure),
                   success_sample_ratio, queue_size, max_sampled_per_second)

    def write(self, batch: Accepted) -> None:
        claimed = self.fleet.labels.get(batch.agent, {})
        queue, failures, bound = self._queue, self._failures, self._bound
        now = time.monotonic()
        rate = self.max_sampled_per_second
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        for msg in batch.results:
            kind = msg.session.kind
            if kind == "keepalive":
                continue
            # A held session's drop and its recovery are rare and what its trace is opened
            # for: exported like failures, whatever the sampling of successes.
            ok = msg.success and not (kind == "reconnect" and msg.session.downtime_ns)
            if ok:
                if int.from_bytes(msg.trace_id[8:16]) >= bound:
                    continue
                if self._tokens < 1:
                    self.over_budget += 1
                    continue
                self._tokens -= 1
            if len(queue) + len(failures) >= self.queue_size:
                if not self.dropped:
                    log.warning("the trace export queue is full (%d attempts): further ones "
                                "are dropped and counted in "
                                "loginprobe_collector_spans_dropped_total", self.queue_size)
                self.dropped += 1
                if ok or not queue:
                    continue
                queue.popleft()  # a failure takes the place of a sampled success
            (queue if ok else failures).append((batch.agent, claimed, batch.fixed_labels, msg))
        if len(queue) + len(failures) >= _BATCH:
            self._wake.set()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._wake.wait(_DELAY)
            self._wake.clear()
            while self._failures or self._queue:
                # Failures first: they are what a user opens a trace for.
                queue = self._failures or self._queue
                items = [queue.popleft() for _ in range(min(_BATCH, len(queue)))]
                spans = [span for item in items for span in self.spans(*item)]
                try:
                    result = self.exporter.export(spans)
                except Exception:  # an exporter bug must not end the thread for good
                    log.exception("trace export failed")
                    result = SpanExportResult.FAILURE
                if result is SpanExportResult.SUCCESS:
                    self.exported += len(items)
                else:
                    if not self.failed:
                        log.warning("the trace receiver did not take %d attempt(s); such "
                                    "losses are counted, not retried further", len(items))
                    self.failed += len(items)
            if stopping:
                return

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to `timeout` seconds), then close the exporter."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.exporter.shutdown()

    def _resource(self, agent: str, labels: Mapping[str, str]) -> Resource:
        key = (agent, *(labels.get(k, "") for k in _RESOURCE_LABELS))
        resource = self._resources.get(key)
        if resource is None:
            resource = self._resources[key] = Resource({
                "service.name": "loginprobe-agent",
                "service.instance.id": agent,
                "loginprobe.agent": agent,
                **{f"loginprobe.{k}": v for k, v in zip(_RESOURCE_LABELS, key[1:], strict=True)},
            })
        return resource

    def _target(self, url: str) -> tuple[str, int] | None:
        if url not in self._targets:
            try:
                t = parse_target(url)
                self._targets[url] = (t.host, t.port)
            except TargetError:
                self._targets[url] = None
        return self._targets[url]

    def spans(self, agent: str, claimed: Mapping[str, str], fixed: Mapping[str, str],
              msg: ResultView) -> list[ReadableSpan]:
        """The root span `login <protocol>` and one child per phase that ran. For a held
        session: a drop is the span of the segment it ended (`session <protocol>`, from
        logged in to the drop); a reconnect that logs in again is a `reconnect <protocol>`
        span from the drop, its login attempt's spans beneath it."""
        labels = {**claimed, **msg.labels, **fixed}
        resource = self._resource(agent, labels)
        tid = msg.trace_id
        trace_id = int.from_bytes(tid) if len(tid) == 16 and any(tid) else random.getrandbits(128)
        kind = msg.session.kind
        if kind == "drop":
            return [self._segment(trace_id, resource, msg)]
        out: list[ReadableSpan] = []
        parent = None
        if kind == "reconnect" and msg.success and msg.session.downtime_ns:
            out.append(self._reconnect(trace_id, resource, msg))
            parent = out[0].context
        root = SpanContext(trace_id, _span_id(), is_remote=False, trace_flags=_SAMPLED)
        attributes: dict[str, str | int] = {
            "loginprobe.check": msg.check,
            "loginprobe.target": msg.url,
            "loginprobe.reason": msg.reason,
            "loginprobe.step": msg.step,
        }
        target = self._target(msg.url)
        if target is not None:
            attributes["server.address"], attributes["server.port"] = target
        if msg.resolved_address:
            attributes["network.peer.address"] = msg.resolved_address
        if msg.tls.version:  # an absent tls reads as empty
            # "TLSv1.3" -> tls.protocol.name "tls", tls.protocol.version "1.3"
            name, _, version = msg.tls.version.partition("v")
            attributes["tls.protocol.name"] = name.lower()
            attributes["tls.protocol.version"] = version or name
            if msg.tls.cipher:
                attributes["tls.cipher"] = msg.tls.cipher
        if msg.success:
            status = Status(StatusCode.UNSET)
        else:
            attributes["error.type"] = msg.reason
            if msg.hint:
                attributes["loginprobe.hint"] = msg.hint
            status = Status(StatusCode.ERROR, msg.message or msg.reason)
        if kind:
            attributes["loginprobe.session.event"] = kind
            attributes["loginprobe.session.segment"] = msg.session.segment
            if kind == "reconnect":
                attributes["loginprobe.session.attempts"] = msg.session.attempts
        start = msg.started_at_unix_nano
        out.append(ReadableSpan(
            name=f"login {msg.protocol}", context=root, parent=parent, resource=resource,
            attributes=attributes, kind=SpanKind.CLIENT, instrumentation_scope=_SCOPE,
            status=status, start_time=start, end_time=start + msg.duration_ns))
        for phase in msg.phases:
            if phase.skipped:
                continue
            phase_start = start + phase.start_offset_ns
            phase_attributes: dict[str, str | float] = {"loginprobe.phase": phase.name}
            if phase.clock:
                phase_attributes["loginprobe.phase.clock"] = phase.clock
            if phase.server_duration_ns:
                phase_attributes["loginprobe.phase.server_duration_seconds"] = (
                    phase.server_duration_ns / 1e9)
            out.append(ReadableSpan(
                name=phase.name,
                context=SpanContext(trace_id, _span_id(), is_remote=False, trace_flags=_SAMPLED),
                parent=root, resource=resource, attributes=phase_attributes,
                kind=SpanKind.INTERNAL, instrumentation_scope=_SCOPE,
                status=Status(StatusCode.UNSET) if phase.ok else Status(
                    StatusCode.ERROR, phase.message or msg.reason),
                start_time=phase_start, end_time=phase_start + phase.duration_ns))
        return out

    def _session_attributes(self, msg: ResultView) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "loginprobe.check": msg.check, "loginprobe.target": msg.url,
            "loginprobe.session.segment": msg.session.segment,
        }
        target = self._target(msg.url)
        if target is not None:
            attributes["server.address"], attributes["server.port"] = target
        return attributes

    def _segment(self, trace_id: int, resource: Resource, msg: ResultView) -> ReadableSpan:
        """A logged-in stretch of a held session, ended by the drop in msg."""
        end = msg.started_at_unix_nano  # when the evidence of the drop arrived
        attributes = self._session_attributes(msg)
        attributes.update({
            "error.type": msg.reason, "loginprobe.reason": msg.reason,
            "loginprobe.step": msg.step, "loginprobe.session.phase": msg.session.phase})
        if msg.hint:
            attributes["loginprobe.hint"] = msg.hint
        return ReadableSpan(
            name=f"session {msg.protocol}",
            context=SpanContext(trace_id, _span_id(), is_remote=False, trace_flags=_SAMPLED),
            parent=None, resource=resource, attributes=attributes, kind=SpanKind.CLIENT,
            instrumentation_scope=_SCOPE,
            status=Status(StatusCode.ERROR, msg.message or msg.reason),
            start_time=end - msg.session.session_ns, end_time=end)

    def _reconnect(self, trace_id: int, resource: Resource, msg: ResultView) -> ReadableSpan:
        """From a held session's drop to logged in again, over every attempt between."""
        end = msg.started_at_unix_nano + msg.duration_ns
        attributes = self._session_attributes(msg)
        attributes["loginprobe.session.attempts"] = msg.session.attempts
        attributes["loginprobe.session.resumed"] = int(msg.session.resumed)
        return ReadableSpan(
            name=f"reconnect {msg.protocol}",
            context=SpanContext(trace_id, _span_id(), is_remote=False, trace_flags=_SAMPLED),
            parent=None, resource=resource, attributes=attributes, kind=SpanKind.CLIENT,
            instrumentation_scope=_SCOPE, status=Status(StatusCode.UNSET),
            start_time=end - msg.session.downtime_ns, end_time=end)

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "loginprobe_collector_spans_dropped",
            "Attempts not exported as traces (beyond the contract): queue_full while the "
            "receiver is slow, over_budget for sampled successes past "
            "max_sampled_per_second, export_failed when the receiver refused them.",
            labels=["reason"])
        dropped.add_metric(["queue_full"], self.dropped)
        dropped.add_metric(["over_budget"], self.over_budget)
        dropped.add_metric(["export_failed"], self.failed)
        yield dropped

"""The collector's exports with a real collector process: OTLP spans at a receiver built
from opentelemetry-proto (structure, agent-measured times, attributes, sampling), /metrics
(every contract metric with exactly its labels, exemplars in OpenMetrics), the JSON event
log, and no secret anywhere; and in-process, the series TTL, the cardinality guard and
deterministic sampling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from devstack.fleet import Collector, collector_config, free_port, new_token, wait_for
from devstack.prometheus import parse_render, prometheus, query
from loginprobe.codec import Report, to_wire
from loginprobe.collector.exporters.otel import TraceExporter
from loginprobe.collector.exporters.prometheus import OVERFLOW, FleetCollector, ResultMetrics
from loginprobe.collector.ingest import FleetState, Ingest
from loginprobe.contract import Reason
from loginprobe.result import Phase, Result, TLSInfo
from loginprobe.wire import collector_pb2 as pb
from tests.test_collector import Stream

# CONTRACT.md section 4, verbatim.
CONTRACT = {
    "loginprobe_attempts": ("counter", {"check", "protocol", "target", "agent", "region",
                                        "carrier", "network_type", "result", "reason"}),
    "loginprobe_success": ("gauge", {"check", "protocol", "target", "agent", "region",
                                     "carrier", "network_type"}),
    "loginprobe_phase_duration_seconds": ("histogram", {"check", "protocol", "target",
                                                        "region", "carrier", "network_type",
                                                        "phase"}),
    "loginprobe_duration_seconds": ("histogram", {"check", "protocol", "target", "region",
                                                  "carrier", "network_type"}),
    "loginprobe_tls_cert_not_after_timestamp_seconds": ("gauge", {"check", "target", "agent"}),
    "loginprobe_agent_connected": ("gauge", {"agent", "region", "carrier", "network_type"}),
    "loginprobe_agent_last_result_timestamp_seconds": ("gauge", {"agent"}),
    "loginprobe_collector_results_received": ("counter", {"agent"}),
    "loginprobe_collector_results_duplicate": ("counter", {"agent"}),
    "loginprobe_collector_results_rejected": ("counter", {"reason"}),
}
STARTED = 1_764_000_000_123_456_789  # ns, what the agent measured (offset applied)
PASSWORD = "hunter2-never-leaves-the-agent"
LABELS = {"region": "eu-west", "carrier": "acme", "network_type": "cellular", "path": "lte"}


def result(seq: int, ok: bool, trace_id: bytes, started: int = STARTED) -> pb.ProbeResult:
    """An XMPP attempt: dns, tcp, then tls (which fails unless ok), then login."""
    phases = [Phase("dns", True, 0, 600_000), Phase("tcp", True, 600_000, 200_000),
              Phase("tls", ok, 800_000, 7_100_000, message="" if ok else "handshake stalled")]
    if ok:
        phases.append(Phase("login", True, 7_900_000, 13_500_000))
    r = Result(url="xmpp://probe@xmpp.example.net:5222", protocol="xmpp", success=ok,
               reason=Reason.OK if ok else Reason.TLS_TIMEOUT,
               message="" if ok else "TLS handshake timed out after 7.1s",
               started_at=datetime.now(UTC),
               duration_ns=21_400_000 if ok else 7_900_000, phases=phases,
               resolved_address="192.0.2.10",
               tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", None, True, None,
                           "CN=xmpp.example.net", "CN=CA", [], None, None) if ok else None)
    msg = to_wire(Report(r, seq, "xmpp-login", trace_id, labels=LABELS))
    msg.started_at_unix_nano = started
    if ok:
        msg.tls.not_after_unix = 1_800_000_000
    return msg


class Receiver(otlp_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[otlp.ExportTraceServiceRequest] = []

    async def Export(self, request: otlp.ExportTraceServiceRequest,
                     context: Any) -> otlp.ExportTraceServiceResponse:
        self.requests.append(request)
        return otlp.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict[str, Any], trace_pb2.Span]]:
        return [({a.key: a.value.string_value for a in rs.resource.attributes}, span)
                for req in self.requests for rs in req.resource_spans
                for ss in rs.scope_spans for span in ss.spans]


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """Started in the test's own event loop (a fixture's would not run during the test)."""
    server = grpc.aio.server()
    servicer = Receiver()
    otlp_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    yield servicer, address
    await server.stop(0)


def attrs(span: trace_pb2.Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind or "string_value")
    return out


def scrape(c: Collector, openmetrics: bool = False) -> str:
    req = urllib.request.Request(c.metrics_url)
    if openmetrics:
        req.add_header("Accept", "application/openmetrics-text; version=1.0.0")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


async def test_spans_metrics_and_log_of_a_real_collector(tmp_path: Path) -> None:
    async with receiver() as (servicer, address):
        await _exports(tmp_path, servicer, address)


async def _exports(tmp_path: Path, servicer: Receiver, address: str) -> None:
    token, digest = new_token()
    events = tmp_path / "events.jsonl"
    config = collector_config(
        tmp_path, pki=None, agents=[{"id": "a1", "token_sha256": digest}],
        checks=[{"name": "xmpp-login", "url": "xmpp://probe@xmpp.example.net",
                 "password_ref": "PROBE"}],
        traces={"endpoint": address, "insecure": True, "success_sample_ratio": 0.0},
        event_log={"file": str(events)})
    c = Collector(tmp_path / "collector", config)
    c.start_healthy()
    try:
        failed_id, failed_again, ok_id = os.urandom(16), os.urandom(16), os.urandom(16)
        stream = Stream(c, token)
        await stream.open({"region": "eu-west", "carrier": "home", "network_type": "wifi"})
        assert await stream.ack(pb.ConnectRequest(results=pb.ResultBatch(results=[
            result(1, False, failed_id), result(2, False, failed_again, STARTED + 10**9),
            result(3, True, ok_id, STARTED + 2 * 10**9)]))) == 3
        await stream.ack(pb.ConnectRequest(results=pb.ResultBatch(
            results=[result(3, True, ok_id)])))  # a duplicate, for its counter

        for _ in range(100):  # the exporter sends within its 1 s batching delay
            if len({s.trace_id for _, s in servicer.spans()}) >= 2:
                break
            await asyncio.sleep(0.05)
        spans = [(r, s) for r, s in servicer.spans() if s.trace_id == failed_id]
        roots = [s for _, s in spans if not s.parent_span_id]
        assert len(roots) == 1 and len(spans) == 4, spans  # root + dns, tcp, tls
        root = roots[0]
        assert root.name == "login xmpp"
        assert root.start_time_unix_nano == STARTED
        assert root.end_time_unix_nano == STARTED + 7_900_000
        assert root.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        assert root.status.message == "TLS handshake timed out after 7.1s"
        assert attrs(root) == {
            "server.address": "xmpp.example.net", "server.port": 5222,
            "network.peer.address": "192.0.2.10", "error.type": "tls_timeout",
            "loginprobe.reason": "tls_timeout", "loginprobe.step": "network",
            "loginprobe.hint": Reason.TLS_TIMEOUT.hint,
            "loginprobe.check": "xmpp-login",
            "loginprobe.target": "xmpp://probe@xmpp.example.net:5222"}
        children = {s.name: s for _, s in spans if s.parent_span_id}
        assert set(children) == {"dns", "tcp", "tls"}
        for child in children.values():
            assert child.parent_span_id == root.span_id
        tls = children["tls"]
        assert (tls.start_time_unix_nano, tls.end_time_unix_nano) == (
            STARTED + 800_000, STARTED + 7_900_000)
        assert tls.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        assert children["dns"].status.code == trace_pb2.Status.STATUS_CODE_UNSET
        resource = spans[0][0]
        # The result's path labels win over the agent's hello, as in the metrics.
        assert {k: resource[k] for k in ("loginprobe.agent", "loginprobe.region",
                                         "loginprobe.carrier", "loginprobe.network_type",
                                         "loginprobe.path")} == {
            "loginprobe.agent": "a1", "loginprobe.region": "eu-west",
            "loginprobe.carrier": "acme", "loginprobe.network_type": "cellular",
            "loginprobe.path": "lte"}
        # Both failures exported; the success not, at ratio 0.
        assert ok_id not in {s.trace_id for _, s in servicer.spans()}
        assert len({s.trace_id for _, s in servicer.spans()}) == 2

        # /metrics: the ten contract metrics, with exactly the contract's labels.
        text = scrape(c)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name, (kind, labels) in CONTRACT.items():
            family = families[name]
            assert family.type == kind, name
            assert family.samples, name
            for sample in family.samples:
                assert set(sample.labels) - {"le"} == labels, (name, sample)
        attempts = {(s.labels["result"], s.labels["reason"]): s.value
                    for s in families["loginprobe_attempts"].samples}
        assert attempts == {("failure", "tls_timeout"): 2, ("success", "ok"): 1}
        # OpenMetrics: the trace id as an exemplar, on counters and histogram buckets.
        om = scrape(c, openmetrics=True)
        parsed = list(om_parse(om))  # type: ignore[no-untyped-call]
        exemplars = {s.exemplar.labels["trace_id"]
                     for f in parsed for s in f.samples if s.exemplar}
        assert {failed_again.hex(), ok_id.hex()} <= exemplars  # the latest of each series
        assert "trace_id" not in text  # the classic text format has none

        # A real Prometheus takes this exposition (it asks for OpenMetrics first).
        with prometheus(tmp_path / "prometheus", [c.settings["metrics_listen"]]) as url:
            def scraped() -> bool:
                return bool(query(url, 'loginprobe_phase_duration_seconds_bucket{phase="tls"}'))
            wait_for("Prometheus to scrape the collector", scraped, 20)
            assert query(url, 'up{job="loginprobe"}')[0][1] == 1
            assert {labels["result"] for labels, _ in query(url, "loginprobe_attempts_total")
                    } == {"success", "failure"}

        # The event log: each failure, and the check's state changes on its path.
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        assert [line["event"] for line in lines] == [
            "attempt_failed", "check_failing", "attempt_failed", "check_recovered"]
        first = lines[0]
        assert first["trace_id"] == failed_id.hex() and first["phase"] == "tls"
        assert first["reason"] == "tls_timeout" and first["step"] == "network"
        assert first["started_at"] == "2025-11-24T16:00:00.123457+00:00"
        assert first["labels"]["path"] == "lte" and first["agent"] == "a1"
        assert lines[3]["trace_id"] == ok_id.hex() and lines[3]["path"] == "lte"

        # No credential in any export (the password never reaches the collector at all).
        exported = (text + om + events.read_text()
                    + "".join(str(r) for r in servicer.requests))
        assert token not in exported and digest not in exported
        assert PASSWORD not in exported and "PROBE" not in exported
        await stream.close()
    finally:
        assert c.stop() == 0, c.output()


def test_series_of_a_vanished_agent_are_removed_after_the_ttl() -> None:
    fleet = FleetState()
    metrics = ResultMetrics(fleet, series_ttl=0.2)
    ingest = Ingest(fleet, [metrics])
    ingest.batch("gone", {}, [result(1, True, os.urandom(16))])
    time.sleep(0.3)
    ingest.batch("stays", {}, [result(1, True, os.urandom(16))])
    agents = {s.labels.get("agent") for m in parse_render(metrics.render) for s in m.samples}
    assert "stays" in agents and "gone" not in agents
    # The agent's own series (connected, last result, received) go once it is neither
    # connected nor sending for the TTL.
    fleet.connected["stays"] = {}
    own = FleetCollector(fleet, series_ttl=0.2)
    assert {s.labels["agent"] for m in own.collect() for s in m.samples
            if "agent" in s.labels} == {"gone", "stays"}
    time.sleep(0.3)
    assert {s.labels["agent"] for m in own.collect() for s in m.samples
            if "agent" in s.labels} == {"stays"}


def test_the_cardinality_guard_caps_values_and_counts_the_rest() -> None:
    fleet = FleetState()
    metrics = ResultMetrics(fleet, max_label_values=2)
    results = []
    for i, check in enumerate(["c1", "c2", "c3", "c4", "c3"]):
        msg = result(i + 1, True, os.urandom(16))
        msg.check = check
        results.append(msg)
    Ingest(fleet, [metrics]).batch("a1", {}, results)
    samples = [s for m in parse_render(metrics.render) for s in m.samples]
    checks = {s.labels["check"]: s.value for s in samples
              if s.name == "loginprobe_attempts_total"}
    assert checks == {"c1": 1, "c2": 1, OVERFLOW: 3}  # counted, under one value
    dropped = {s.labels["label"]: s.value for s in samples
               if s.name == "loginprobe_collector_series_dropped_total"}
    assert dropped == {"check": 3}


class Memory:
    def __init__(self) -> None:
        self.trace_ids: list[int] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.trace_ids += [s.context.trace_id for s in spans if s.parent is None]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_successes_are_sampled_by_trace_id_and_failures_always_kept() -> None:
    ids = [os.urandom(16) for _ in range(400)]
    kept = []
    for _ in range(2):
        memory = Memory()
        exporter = TraceExporter(FleetState(), memory, 0.25,  # type: ignore[arg-type]
                                 max_sampled_per_second=1e9)
        Ingest(FleetState(), [exporter]).batch("a1", {}, [
            *(result(i + 1, True, t) for i, t in enumerate(ids)),
            *(result(1000 + i, False, t) for i, t in enumerate(ids[:50]))])
        exporter.close()
        kept.append(memory.trace_ids)
    assert kept[0] == kept[1]  # the same attempts, the same decision
    successes = len(kept[0]) - 50
    assert 50 < successes < 150  # ~100 of 400
    assert {int.from_bytes(t) for t in ids[:50]} <= set(kept[0])


def test_the_fast_render_says_what_the_collector_does() -> None:
    fleet = FleetState()
    metrics = ResultMetrics(fleet)
    Ingest(fleet, [metrics]).batch("a1", {"region": 'odd "quoted"\\ value'}, [
        result(1, True, os.urandom(16)), result(2, False, os.urandom(16))])

    def samples(families: Any) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {(s.name, tuple(sorted(s.labels.items())), s.value)
                for f in families for s in f.samples}

    text = samples(text_string_to_metric_families(metrics.render(False).decode()))
    parsed = om_parse(metrics.render(True).decode() + "# EOF\n")  # type: ignore[no-untyped-call]
    assert samples(parsed) == text  # both formats say the same
    odd = 'odd "quoted"\\ value'  # escaped on the way out, read back as it was
    attempts = {(dict(labels)["result"], dict(labels)["region"], dict(labels)["agent"]): v
                for name, labels, v in text if name == "loginprobe_attempts_total"}
    assert attempts == {("success", odd, "a1"): 1.0, ("failure", odd, "a1"): 1.0}
    counts = {name: v for name, labels, v in text
              if name in ("loginprobe_duration_seconds_count", "loginprobe_success")}
    assert counts == {"loginprobe_duration_seconds_count": 2.0, "loginprobe_success": 0.0}


def test_sampled_successes_are_held_to_a_budget_failures_are_not() -> None:
    memory = Memory()
    exporter = TraceExporter(FleetState(), memory, 1.0,  # type: ignore[arg-type]
                             max_sampled_per_second=10)
    failures = [os.urandom(16) for _ in range(30)]
    Ingest(FleetState(), [exporter]).batch("a1", {}, [
        *(result(i + 1, True, os.urandom(16)) for i in range(100)),
        *(result(200 + i, False, t) for i, t in enumerate(failures))])
    exporter.close()
    assert len(memory.trace_ids) == 10 + 30 and exporter.over_budget == 90
    assert {int.from_bytes(t) for t in failures} <= set(memory.trace_ids)

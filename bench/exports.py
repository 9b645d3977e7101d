"""The collector's exports at fleet size: /metrics render time and memory for 1,000 agents
x 20 checks, the per-result cost of each exporter, and (with --overhead) ingest throughput
with metrics, traces and the event log on as a ratio of ingest with exports off.

    python3 -m bench.exports                      # render, memory, per-result costs
    python3 -m bench.exports --overhead --runs 3  # + bench.collector_ingest off vs --exports

Render and per-result figures are in-process (the collector's own classes, fed the same
protobufs ingest hands them); the overhead runs real collectors with 1,000 TLS streams.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from bench.collector_ingest import _template
from bench.common import load_note, machine
from devstack.prometheus import parse_render
from loginprobe.collector.exporters.log import EventLog
from loginprobe.collector.exporters.otel import TraceExporter
from loginprobe.collector.exporters.prometheus import FleetCollector, ResultMetrics
from loginprobe.collector.ingest import Accepted, FleetState, Ingest, Sink
from loginprobe.wire import collector_pb2 as pb

REGIONS = [f"region-{i}" for i in range(10)]
CARRIERS = [f"carrier-{i}" for i in range(4)]
NETWORK_TYPES = ["wifi", "cellular"]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fleet(agents: int, checks: int) -> tuple[FleetState, ResultMetrics, int]:
    """Every agent sends one result per check: the series count of a fleet in steady state
    (more results only raise counters). Agents are spread over 10 regions x 4 carriers x
    2 network types, so histograms (no agent label) have 80 label combinations per check."""
    template = pb.ProbeResult.FromString(b"\x08\x01" + _template())
    fleet = FleetState()
    metrics = ResultMetrics(fleet, max_label_values=10_000)
    ingest = Ingest(fleet, [metrics])
    for a in range(agents):
        agent = f"agent-{a:04d}"
        labels = {"region": REGIONS[a % 10], "carrier": CARRIERS[a // 10 % 4],
                  "network_type": NETWORK_TYPES[a // 40 % 2]}
        fleet.labels[agent] = fleet.connected[agent] = labels
        batch = []
        for c in range(checks):
            msg = pb.ProbeResult()
            msg.CopyFrom(template)
            msg.seq, msg.check = c + 1, f"check-{c:02d}"
            msg.url = f"xmpp://probe@xmpp{c:02d}.example.net:5222"
            msg.labels.clear()
            msg.labels.update(labels)
            msg.trace_id = os.urandom(16)
            batch.append(msg)
        ingest.batch(agent, {}, batch)
    return fleet, metrics, sum(len(m.samples) for m in parse_render(metrics.render))


def _median_seconds(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _per_result_us(sink: Sink, results: list[pb.ProbeResult], rounds: int = 20) -> float:
    batch = Accepted("agent-0001", {}, results)
    sink.write(batch)  # warm the caches
    return _median_seconds(lambda: sink.write(batch), rounds) / len(results) * 1e6


class _Null:
    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def render(args: argparse.Namespace) -> None:
    gc.collect()
    before = _rss_kib()
    fleet, metrics, samples = _fleet(args.agents, args.checks)
    gc.collect()
    grown = _rss_kib() - before
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))

    def text() -> bytes:  # what serve_metrics answers, without the HTTP
        return generate_latest(registry) + metrics.render(False)

    def openmetrics() -> bytes:
        small = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
        return bytes(small).removesuffix(b"# EOF\n") + metrics.render(True) + b"# EOF\n"

    plain, om = text(), openmetrics()
    plain_s = _median_seconds(text, args.runs)
    om_s = _median_seconds(openmetrics, args.runs)
    print(f"fleet                      {args.agents:,} agents x {args.checks} checks, "
          f"{samples:,} result samples")
    print(f"/metrics render, text      {plain_s * 1000:10.0f} ms   ({len(plain) / 2**20:.1f} MiB, "
          f"median of {args.runs})")
    print(f"/metrics render, OpenMetrics {om_s * 1000:8.0f} ms   ({len(om) / 2**20:.1f} MiB, "
          "with exemplars)")
    print(f"memory of the series        {grown / 1024:9.0f} MiB  (resident growth; process "
          f"{_rss_kib() / 1024:.0f} MiB)")

    template = pb.ProbeResult.FromString(b"\x08\x01" + _template())
    results = []
    for i in range(1000):
        msg = pb.ProbeResult()
        msg.CopyFrom(template)
        msg.seq, msg.trace_id = i + 1, os.urandom(16)
        results.append(msg)
    s = FleetState()
    print(f"per result: metrics        {_per_result_us(ResultMetrics(s), results):10.1f} µs")
    traces = TraceExporter(s, _Null(), 0.1)  # type: ignore[arg-type]
    print(f"per result: traces enqueue {_per_result_us(traces, results):10.1f} µs   "
          "(successes at ratio 0.1; the export thread's work is apart)")
    t = time.perf_counter()
    spans = [traces.spans("a", {}, {}, m) for m in results[:200]]
    build = (time.perf_counter() - t) / 200 * 1e6
    t = time.perf_counter()
    encode_spans([span for attempt in spans for span in attempt]).SerializeToString()
    encode = (time.perf_counter() - t) / 200 * 1e6
    print(f"per exported attempt       {build + encode:10.1f} µs   (its {len(spans[0])} spans: "
          f"{build:.0f} to build, {encode:.0f} to encode; export thread)")
    traces.close()
    log = EventLog(s, Path(os.devnull))
    print(f"per result: event log      {_per_result_us(log, results):10.1f} µs   "
          "(successes, nothing failing)")
    log.close()


def _ingest_run(exports: bool) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.collector_ingest"] + (["--exports"] if exports else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    print("\n".join("    " + line for line in out.splitlines()), flush=True)
    figures = {}
    for key, pattern in (("acked", r"results acknowledged\s+([\d,]+)"),
                         ("per_cpu", r"results per CPU-second\s+([\d,]+)")):
        m = re.search(pattern, out)
        figures[key] = float(m[1].replace(",", "")) if m else 0.0
    return figures


def overhead(args: argparse.Namespace) -> None:
    off, on = [], []
    for i in range(args.runs):
        print(f"# run {i + 1}/{args.runs}: exports off", flush=True)
        off.append(_ingest_run(False))
        print(f"# run {i + 1}/{args.runs}: metrics + traces + event log", flush=True)
        on.append(_ingest_run(True))
    for key, what in (("acked", "results acknowledged/s"), ("per_cpu", "results per CPU-s")):
        a = statistics.median(r[key] for r in off)
        b = statistics.median(r[key] for r in on)
        print(f"{what:24} off {a:9,.0f}   on {b:9,.0f}   ratio {b / a if a else 0:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--checks", type=int, default=20)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--overhead", action="store_true", help="also run ingest off vs on")
    args = p.parse_args()
    print(f"# collector exports: {machine()}; {load_note()}")
    render(args)
    if args.overhead:
        overhead(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

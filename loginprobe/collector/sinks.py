"""The sinks a collector's config asks for, built in one place: the results log, the
Prometheus result and session metrics, OpenTelemetry traces, the event log and the /status
page."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.registry import Collector

from loginprobe.collector.config import CollectorConfig
from loginprobe.collector.exporters.log import EventLog
from loginprobe.collector.exporters.prometheus import ResultMetrics, SessionMetrics
from loginprobe.collector.exporters.results_log import ResultsLog
from loginprobe.collector.ingest import FleetState, Sink
from loginprobe.collector.status import StatusPage, status_page


@dataclass
class Sinks:
    """What build() made; `all` in the order a batch visits them."""

    all: list[Sink] = field(default_factory=list)
    metrics: ResultMetrics | None = None  # rendered by /metrics
    extra_collectors: list[Collector] = field(default_factory=list)  # more for /metrics
    high_water: dict[str, int] = field(default_factory=dict)  # recovered by the results log
    status: StatusPage | None = None  # /status, on the metrics listener

    def close(self) -> None:
        for sink in self.all:
            sink.close()


def build(config: CollectorConfig, fleet: FleetState) -> Sinks:
    out = Sinks()
    if config.results_log:
        # First: a batch it fails to write is sent again, and must not have counted.
        results_log = ResultsLog(config.results_log)
        out.all.append(results_log)
        out.high_water = dict(results_log.high_water)
    if config.metrics_listen:
        # ~20-30 µs a result: paid only when there is a /metrics to read them from.
        out.metrics = ResultMetrics(
            fleet, config.metrics.series_ttl, config.metrics.max_label_values)
        out.all.append(out.metrics)
        sessions = SessionMetrics(fleet, config.metrics.series_ttl)
        out.all.append(sessions)
        out.extra_collectors.append(sessions)
    if config.traces:
        # Imported only when configured: the SDK and its gRPC exporter take time to load.
        from loginprobe.collector.exporters.otel import TraceExporter

        traces = TraceExporter.otlp(
            fleet, config.traces.endpoint, config.traces.insecure,
            config.traces.success_sample_ratio, config.traces.queue_size,
            config.traces.max_sampled_per_second)
        out.all.append(traces)
        out.extra_collectors.append(traces)  # its dropped-spans counter
    if config.event_log:
        out.all.append(EventLog(fleet, config.event_log.file))
    if config.metrics_listen:
        out.status = status_page(fleet, config)
        if out.status is not None:
            out.all.append(out.status.store)
    return out

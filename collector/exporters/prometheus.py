"""The collector's own counters as Prometheus metrics (CONTRACT.md section 4): a custom
collector on an explicit registry, served on /metrics by a small HTTP thread."""

from __future__ import annotations

from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.ingest import Stats

_NETWORK_TYPES = frozenset({"wifi", "cellular", "wired", "unknown"})


def _path(labels: dict[str, str]) -> list[str]:
    """region, carrier, network_type; the contract closes network_type's values."""
    network_type = labels.get("network_type", "unknown")
    return [labels.get("region", ""), labels.get("carrier", ""),
            network_type if network_type in _NETWORK_TYPES else "unknown"]


class StatsCollector(Collector):
    """Reads Stats at scrape time. It runs in the HTTP thread while the event loop writes,
    so each dict is copied first (a C-level copy the GIL keeps whole)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        received = CounterMetricFamily(
            "loginprobe_collector_results_received",
            "Results accepted from each agent, each (agent, seq) counted once.", labels=["agent"])
        for agent, n in dict(s.received).items():
            received.add_metric([agent], n)
        duplicate = CounterMetricFamily(
            "loginprobe_collector_results_duplicate",
            "Results received again (a replay) and acknowledged without processing.",
            labels=["agent"])
        for agent, n in dict(s.duplicates).items():
            duplicate.add_metric([agent], n)
        rejected = CounterMetricFamily(
            "loginprobe_collector_results_rejected",
            "Messages and results refused, by reason.", labels=["reason"])
        for reason, n in dict(s.rejected).items():
            rejected.add_metric([reason], n)
        connected = GaugeMetricFamily(
            "loginprobe_agent_connected", "1 while the agent's stream is open.",
            labels=["agent", "region", "carrier", "network_type"])
        now = dict(s.connected)
        for agent, labels in {**dict(s.labels), **now}.items():
            connected.add_metric([agent, *_path(labels)], 1 if agent in now else 0)
        last = GaugeMetricFamily(
            "loginprobe_agent_last_result_timestamp_seconds",
            "When the collector last accepted a result from the agent.", labels=["agent"])
        for agent, t in dict(s.last_result).items():
            last.add_metric([agent], t)
        yield from (received, duplicate, rejected, connected, last)


def serve_metrics(stats: Stats, host: str, port: int) -> WSGIServer:
    """Start /metrics on host:port; the caller shuts the returned server down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    server, _thread = start_http_server(port, host, registry=registry)
    return server

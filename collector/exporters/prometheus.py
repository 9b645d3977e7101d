"""Results and the collector's own counters as Prometheus metrics (CONTRACT.md section 4):
custom collectors on an explicit registry, served on /metrics by a small HTTP thread."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from collector.ingest import Accepted, Stats

_NETWORK_TYPES = frozenset({"wifi", "cellular", "wired", "unknown"})


def _path(labels: dict[str, str]) -> list[str]:
    """region, carrier, network_type; the contract closes network_type's values."""
    network_type = labels.get("network_type", "unknown")
    return [labels.get("region", ""), labels.get("carrier", ""),
            network_type if network_type in _NETWORK_TYPES else "unknown"]


# Seconds. From a loopback login (well under a millisecond) to a deadline; fine steps where
# logins live, since `loginprobe compare` tests differences on these very buckets.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
           0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
_PHASES = frozenset({"ping", "dns", "tcp", "tls", "login"})  # an agent cannot add series


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket, the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for le, n in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            running += n
            out.append((le, running))
        return out


class ResultMetrics(Collector):
    """A sink of accepted results, and their metrics at scrape time. The labels of a result
    are the agent's, overridden by the result's own (an agent with several network paths
    labels each result with its path's carrier and network type), overridden by the
    registry's fixed labels, as in Accepted.reports()."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._lock = threading.Lock()  # the event loop writes, the HTTP thread reads
        self._attempts: dict[tuple[str, ...], int] = {}
        self._success: dict[tuple[str, ...], int] = {}
        self._phases: dict[tuple[str, ...], _Histogram] = {}
        self._durations: dict[tuple[str, ...], _Histogram] = {}
        self._not_after: dict[tuple[str, ...], int] = {}

    def __call__(self, batch: Accepted) -> None:
        agent, fixed = batch.agent, batch.fixed_labels
        claimed = self.stats.labels.get(batch.agent, {})
        with self._lock:
            for msg in batch.results:  # protobufs as they came: no decoding on this path
                where = (msg.check, msg.protocol, msg.url,
                         *_path({**claimed, **msg.labels, **fixed}))
                result = "success" if msg.success else "failure"
                key = (*where[:3], agent, *where[3:])
                attempts = (*key, result, msg.reason)
                self._attempts[attempts] = self._attempts.get(attempts, 0) + 1
                self._success[key] = int(msg.success)  # results of an agent come in order
                for phase in msg.phases:
                    if phase.name in _PHASES and not phase.skipped:
                        h = self._phases.setdefault((*where, phase.name), _Histogram())
                        h.observe(phase.duration_ns / 1e9)
                self._durations.setdefault(where, _Histogram()).observe(msg.duration_ns / 1e9)
                if msg.tls.not_after_unix:
                    self._not_after[(msg.check, msg.url, agent)] = msg.tls.not_after_unix

    def collect(self) -> Iterator[Metric]:
        where = ["check", "protocol", "target", "region", "carrier", "network_type"]
        attempts = CounterMetricFamily(
            "loginprobe_attempts", "Login attempts, by result and reason.",
            labels=[*where[:3], "agent", *where[3:], "result", "reason"])
        success = GaugeMetricFamily(
            "loginprobe_success", "1 if the latest attempt logged in, else 0.",
            labels=[*where[:3], "agent", *where[3:]])
        phases = HistogramMetricFamily(
            "loginprobe_phase_duration_seconds", "Duration of each phase of an attempt.",
            labels=[*where, "phase"])
        durations = HistogramMetricFamily(
            "loginprobe_duration_seconds", "Duration of a whole attempt.", labels=where)
        not_after = GaugeMetricFamily(
            "loginprobe_tls_cert_not_after_timestamp_seconds",
            "When the server's certificate expires, as last seen.",
            labels=["check", "target", "agent"])
        with self._lock:
            for key, n in self._attempts.items():
                attempts.add_metric(list(key), n)
            for key, ok in self._success.items():
                success.add_metric(list(key), ok)
            for key, h in self._phases.items():
                phases.add_metric(list(key), h.cumulative(), h.total)
            for key, h in self._durations.items():
                durations.add_metric(list(key), h.cumulative(), h.total)
            for key, t in self._not_after.items():
                not_after.add_metric(list(key), t)
        yield from (attempts, success, phases, durations, not_after)


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


def serve_metrics(
    stats: Stats, host: str, port: int, results: ResultMetrics | None = None
) -> WSGIServer:
    """Start /metrics on host:port; the caller shuts the returned server down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    if results is not None:
        registry.register(results)
    server, _thread = start_http_server(port, host, registry=registry)
    return server

"""The agent watching itself: /metrics (a custom collector on its own registry) and /healthz,
served from a small HTTP server thread beside the event loop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loginprobe.address import split_host_port
from loginprobe.agent.scheduler import ASSIGNED, LOCAL, Scheduler
from loginprobe.agent.spool import Spool
from loginprobe.agent.uplink import Uplink


class AgentMetrics(Collector):
    """Reads the live counters at scrape time: nothing to keep in step, nothing to miss."""

    def __init__(self, spool: Spool, scheduler: Scheduler, uplink: Uplink) -> None:
        self.spool = spool
        self.scheduler = scheduler
        self.uplink = uplink

    def collect(self) -> Iterator[Metric]:
        spool, sched = self.spool, self.scheduler
        # Not loginprobe_agent_connected: that name is the collector's, with its own fixed
        # label set (CONTRACT.md section 4).
        yield GaugeMetricFamily(
            "loginprobe_agent_uplink_connected", "1 while the stream to the collector is up.",
            value=int(self.uplink.connected),
        )
        yield GaugeMetricFamily(
            "loginprobe_agent_uplink_down_seconds",
            "Seconds since the stream to the collector was last up (since the start if it "
            "never was); 0 while connected.",
            value=self.uplink.down_seconds,
        )
        yield GaugeMetricFamily(
            "loginprobe_agent_checks_refused",
            "Assigned checks this agent refused (a password it does not have, a URL it "
            "cannot probe); /healthz says why.",
            value=len(self.uplink.refused),
        )
        yield GaugeMetricFamily(
            "loginprobe_agent_spool_results", "Results spooled and not yet acknowledged.",
            value=spool.depth,
        )
        yield GaugeMetricFamily(
            "loginprobe_agent_spool_bytes", "Size of the spooled results.", value=spool.bytes
        )
        oldest = spool.oldest_created
        yield GaugeMetricFamily(
            "loginprobe_agent_spool_oldest_age_seconds",
            "Age of the oldest unacknowledged result; 0 when the spool is empty.",
            value=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
        )
        dropped = CounterMetricFamily(
            "loginprobe_agent_results_dropped",
            "Results dropped from the spool unacknowledged: its size or age limit was "
            "reached, or the disk was full. One sent just before its drop may still arrive.",
            labels=["reason"],
        )
        for reason, n in list(spool.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield CounterMetricFamily(
            "loginprobe_agent_results_produced",
            "Results committed to the spool since the agent started.",
            value=spool.produced_total,
        )
        yield GaugeMetricFamily(
            "loginprobe_agent_probes_in_flight", "Probes running now.", value=sched.in_flight
        )
        yield CounterMetricFamily(
            "loginprobe_agent_probes_skipped",
            "Runs not started because the check's previous run still waited for a slot.",
            value=sched.skipped_total,
        )
        checks = GaugeMetricFamily(
            "loginprobe_agent_checks", "Checks scheduled, by where they come from.",
            labels=["source"],
        )
        for source in (LOCAL, ASSIGNED):
            checks.add_metric([source], sched.count(source))
        yield checks
        yield GaugeMetricFamily(
            "loginprobe_agent_clock_offset_seconds",
            "The collector's clock minus this agent's, estimated at the last hello.",
            value=sched.clock_offset_ns / 1e9,
        )


def health_text(uplink: Uplink) -> str:
    """/healthz: always 200 while the agent runs, since a restart would not bring a lost
    collector back (results wait in the spool) and a Kubernetes liveness probe must not
    loop on it; the text says how long the collector has been away and why, and which
    assigned checks were refused. Alert on loginprobe_agent_uplink_down_seconds."""
    if uplink.connected:
        lines = [f"ok: connected to the collector as {uplink.agent_id}"]
    else:
        lines = [f"ok: not connected to the collector for {uplink.down_seconds:.0f}s: "
                 f"{uplink.last_error}; {uplink.spool.depth} results wait in the spool"]
    for name, why in sorted(uplink.refused.items()):
        lines.append(f"refused check {name!r}: {why}")
    return "\n".join(lines) + "\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(address: str, registry: CollectorRegistry, uplink: Uplink) -> ThreadingHTTPServer:
    """Start serving /metrics and /healthz on address in a daemon thread, which ends with
    the process (or call shutdown() on the result)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                body, ctype, status = generate_latest(registry), CONTENT_TYPE_LATEST, 200
            elif path == "/healthz":
                body, ctype, status = health_text(uplink).encode(), "text/plain", 200
            else:
                body, ctype, status = b"not found: try /metrics or /healthz\n", "text/plain", 404
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every 15 s is not worth a log line

    host, port = split_host_port(address)
    server = (_Server6 if ":" in host else _Server)((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server

"""Results and the collector's own counters as Prometheus metrics (CONTRACT.md section 4):
custom collectors on an explicit registry, served on /metrics by a small HTTP thread."""

from __future__ import annotations

import bisect
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.registry import Collector

from loginprobe.codec import NOT_ATTEMPTS
from loginprobe.collector.ingest import Accepted, FleetState
from loginprobe.contract import NETWORK_TYPES, PHASES

log = logging.getLogger(__name__)

OVERFLOW = "__overflow__"  # the value a label takes past the cardinality cap


def _path(labels: dict[str, str]) -> list[str]:
    """region, carrier, network_type; the contract closes network_type's values."""
    network_type = labels.get("network_type", "unknown")
    return [labels.get("region", ""), labels.get("carrier", ""),
            network_type if network_type in NETWORK_TYPES else "unknown"]


# Seconds. From a loopback login (well under a millisecond) to a deadline; fine steps where
# logins live, since `loginprobe compare` tests differences on these very buckets.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
           0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
# The same bounds in nanoseconds: results carry integer ns, so bisect needs no division.
_BOUNDS_NS = tuple(round(b * 1e9) for b in BUCKETS)
_LE = (*map(str, BUCKETS), "+Inf")
# Labels the guard caps, by their place in a series' key (check, protocol, target, agent,
# region, carrier). network_type is a closed set already; phase too.
_GUARDED = ("check", "protocol", "target", "agent", "region", "carrier")


class _Histogram:
    """Counts per bucket in ns, with the trace id of the latest observation in each bucket
    as its exemplar. It lives as long as a series feeding it (see _prune)."""

    __slots__ = ("counts", "exemplars", "shown", "total_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket, the last one is +Inf
        self.exemplars: list[tuple[bytes, int] | None] = [None] * (len(BUCKETS) + 1)
        self.total_ns = 0
        self.shown = 0  # bit per scraper that has read it (see ResultMetrics.render)

    def observe(self, ns: int, trace_id: bytes) -> None:
        i = bisect.bisect_left(_BOUNDS_NS, ns)
        self.counts[i] += 1
        self.exemplars[i] = (trace_id, ns)
        self.total_ns += ns

    def buckets(self) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
        out: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        running = 0
        for le, n, ex in zip(_LE, self.counts, self.exemplars, strict=True):
            running += n
            # Rendered only in the OpenMetrics format; the text format leaves them out.
            out.append((le, running) if ex is None else
                       (le, running, Exemplar({"trace_id": ex[0].hex()}, ex[1] / 1e9)))
        return out


class _Series:
    """What one (agent, check, protocol, target, region, carrier, network_type) adds to:
    its own counters and the histograms it shares with the other agents of its labels."""

    __slots__ = ("attempts", "cert_key", "dropped", "duration", "exemplars", "key", "phases",
                 "seen", "servers", "shown", "success", "text", "where")

    def __init__(self, key: tuple[str, ...], where: tuple[str, ...], duration: _Histogram,
                 dropped: tuple[str, ...]) -> None:
        self.key = key  # check, protocol, target, agent, region, carrier, network_type
        self.where = where  # the same without agent: the histograms' labels
        self.cert_key = (key[0], key[2], key[3])  # check, target, agent
        self.attempts: dict[tuple[bool, str], int] = {}
        self.exemplars: dict[tuple[bool, str], bytes] = {}
        self.success = 0
        self.duration = duration
        self.phases: dict[str, _Histogram] = {}
        self.servers: dict[str, _Histogram] = {}  # per phase: the server's answer time
        self.dropped = dropped  # labels the guard replaced, counted per result
        self.seen = 0.0
        self.text = ""  # the key as exposition labels
        # (success, reason) -> bit per scraper that has read that counter (see render)
        self.shown: dict[tuple[bool, str], int] = {}


class ResultMetrics:
    """A sink of accepted results, and their metrics at scrape time. The labels of a result
    are the agent's, overridden by the result's own (an agent with several network paths
    labels each result with its path's carrier and network type), overridden by the
    registry's fixed labels, as in Accepted.reports().

    The per-result path is a few dict operations: the labels of each combination of agent,
    check and path are resolved once and cached with the accumulators they feed. Series not
    fed for `series_ttl` seconds are removed at scrape time; past `max_label_values`
    distinct values of one label, new values are counted under OVERFLOW (sums stay right,
    one label loses detail) and in loginprobe_collector_series_dropped_total.

    What a scraper reads (a client that says so, see scraper_identity) differs in two ways,
    both so that rate() and increase() across scrapes neither lose nor double a count:
    - a counter or histogram it has not read before is shown to it at 0 first, and with its
      count from its next scrape on. Prometheus has no sample before a series' first, so a
      series born at 1 (the first failure with a reason) loses that 1 to rate() forever.
    - the series of an agent this collector does not serve now (its stream went to another
      replica, or away) are shown to each scraper once more, with their final counts, and
      then no more, so that replicas behind one address never export one agent twice."""

    def __init__(self, fleet: FleetState, series_ttl: float = 3600.0,
                 max_label_values: int = 1000) -> None:
        self.fleet = fleet
        self.series_ttl = series_ttl
        self.max_label_values = max_label_values
        self._lock = threading.Lock()  # the event loop writes, the HTTP thread reads
        # agent -> the (agent, claimed, fixed) labels the cache below was built from
        self._agent_labels: dict[str, tuple[tuple[str | None, ...], ...]] = {}
        # agent -> (check, url[, region, carrier, network_type as sent]) -> series
        self._cache: dict[str, dict[tuple[str | None, ...], _Series]] = {}
        self._series: dict[tuple[str, ...], _Series] = {}
        self._durations: dict[tuple[str, ...], _Histogram] = {}
        self._phases: dict[tuple[str, ...], _Histogram] = {}
        self._servers: dict[tuple[str, ...], _Histogram] = {}
        self._not_after: dict[tuple[str, str, str], int] = {}
        self._values: dict[str, set[str]] = {name: set() for name in _GUARDED}
        self.dropped: dict[str, int] = {}
        self._warned = False
        # Renders for scrapers are serialized: each reads and sets the bits below.
        self._render_lock = threading.Lock()
        self._scrapers: dict[str, int] = {}  # scraper identity -> its bit
        # agent not served now -> bits of the scrapers that read its final counts since
        self._gone: dict[str, int] = {}

    def write(self, batch: Accepted) -> None:
        agent, fixed = batch.agent, batch.fixed_labels
        claimed = self.fleet.labels.get(agent, {})
        now = time.monotonic()
        with self._lock:
            # A new hello or a registry reload may change the agent's labels: start over.
            base = tuple(tuple(d.get(k) for k in ("region", "carrier", "network_type"))
                         for d in (claimed, fixed))
            if self._agent_labels.get(agent) != base:
                self._agent_labels[agent] = base
                self._cache[agent] = {}
            cache = self._cache[agent]
            self._gone.pop(agent, None)  # served again: its new counts are to be read
            for msg in batch.results:  # protobufs as they came: no decoding on this path
                if msg.session.kind in NOT_ATTEMPTS:  # a held session's (SessionMetrics)
                    continue
                labels = msg.labels
                # The protocol follows from the URL; map lookups cost ~0.3 µs each in upb,
                # so a result without labels of its own skips them.
                key = (msg.check, msg.url, labels.get("region"), labels.get("carrier"),
                       labels.get("network_type")) if labels else (msg.check, msg.url)
                s = cache.get(key)
                if s is None:
                    s = cache[key] = self._new_series(
                        agent, msg.check, msg.protocol, msg.url,
                        {**claimed, **labels, **fixed})
                s.seen = now
                if s.dropped:
                    for name in s.dropped:
                        self.dropped[name] = self.dropped.get(name, 0) + 1
                ok, trace_id = msg.success, msg.trace_id
                outcome = (ok, msg.reason)
                s.attempts[outcome] = s.attempts.get(outcome, 0) + 1
                s.exemplars[outcome] = trace_id
                s.success = ok  # results of an agent come in order
                for phase in msg.phases:
                    if not phase.skipped:
                        h = s.phases.get(phase.name)
                        if h is None:
                            if phase.name not in PHASES:  # an agent cannot add series
                                continue
                            h = s.phases[phase.name] = self._phases.setdefault(
                                (*s.where, phase.name), _Histogram())
                        h.observe(phase.duration_ns, trace_id)
                        server_ns = phase.server_duration_ns
                        if server_ns:
                            h = s.servers.get(phase.name)
                            if h is None:
                                h = s.servers[phase.name] = self._servers.setdefault(
                                    (*s.where, phase.name), _Histogram())
                            h.observe(server_ns, trace_id)
                s.duration.observe(msg.duration_ns, trace_id)
                not_after = msg.tls.not_after_unix
                if not_after:
                    self._not_after[s.cert_key] = not_after

    def close(self) -> None:
        """Nothing to flush: the series live until the process ends."""

    def _new_series(self, agent: str, check: str, protocol: str, url: str,
                    labels: dict[str, str]) -> _Series:
        """The cache miss: resolve the labels, apply the guard, find or make the series."""
        values = [check, protocol, url, agent, *_path(labels)]
        dropped = []
        for i, name in enumerate(_GUARDED):
            known = self._values[name]
            if values[i] not in known:
                if len(known) >= self.max_label_values:
                    if name not in self.dropped:
                        log.warning("more than %d values of label %s: further ones are "
                                    "counted as %s (loginprobe_collector_series_dropped_total)",
                                    self.max_label_values, name, OVERFLOW)
                        self.dropped[name] = 0
                    values[i] = OVERFLOW
                    dropped.append(name)
                else:
                    known.add(values[i])
        key = tuple(values)
        s = self._series.get(key)
        if s is None:
            where = (*key[:3], *key[4:])
            duration = self._durations.setdefault(where, _Histogram())
            s = self._series[key] = _Series(key, where, duration, tuple(dropped))
        return s

    def _prune(self) -> None:
        """Drop what was not fed for series_ttl (agents and checks that went away), and
        forget their label values so the guard counts only what is live. Under the lock."""
        horizon = time.monotonic() - self.series_ttl
        stale = [k for k, s in self._series.items() if s.seen < horizon]
        if not stale:
            return
        for k in stale:
            del self._series[k]
        # Histograms and certificate dates go with the last series that fed them.
        live = {id(h) for s in self._series.values()
                for h in (s.duration, *s.phases.values(), *s.servers.values())}
        for table in (self._durations, self._phases, self._servers):
            for k in [k for k, h in table.items() if id(h) not in live]:
                del table[k]
        certs = {s.cert_key for s in self._series.values()}
        for k in [k for k in self._not_after if k not in certs]:
            del self._not_after[k]
        self._cache.clear()  # it holds the removed series; refilled on the next results
        self._agent_labels.clear()
        for name, values in self._values.items():
            values.clear()
            i = _GUARDED.index(name)
            values.update(k[i] for k in self._series if k[i] != OVERFLOW)

    def render(self, openmetrics: bool, scraper: str | None = None) -> bytes:
        """The result families in the text format, or OpenMetrics with exemplars (without
        the final # EOF). prometheus_client takes ~30 µs a sample, seconds for a fleet of
        1,000 agents x 20 checks; this writes lines from label strings made once per
        series. The lock is held only to prune and take snapshots: ingest never waits for
        a scrape. With a scraper identity, what that scraper reads (see the class)."""
        if scraper is None:
            return self._render(openmetrics, 0)
        with self._render_lock:
            bit = self._scrapers.get(scraper)
            if bit is None:
                if len(self._scrapers) >= _MAX_SCRAPERS:  # read as anyone else would
                    return self._render(openmetrics, 0)
                bit = self._scrapers[scraper] = 1 << len(self._scrapers)
            return self._render(openmetrics, bit)

    def _render(self, openmetrics: bool, bit: int) -> bytes:
        with self._lock:
            self._prune()
            series = list(self._series.values())
            not_after = list(self._not_after.items())
            dropped = list(self.dropped.items())
            phases = list(self._phases.items())
            durations = list(self._durations.items())
            servers = list(self._servers.items())
            if bit:
                series = self._served(series, bit)
        if bit:
            fed = {id(h) for s in series
                   for h in (s.duration, *s.phases.values(), *s.servers.values())}
            phases = [(k, h) for k, h in phases if id(h) in fed]
            durations = [(k, h) for k, h in durations if id(h) in fed]
            servers = [(k, h) for k, h in servers if id(h) in fed]
            agents = {s.key[3] for s in series}
            not_after = [(k, t) for k, t in not_after if k[2] in agents]
        out: list[str] = []
        w = out.append

        def head(name: str, kind: str, text: str) -> None:
            shown = name if openmetrics or kind != "counter" else f"{name}_total"
            w(f"# HELP {shown} {text}\n# TYPE {shown} {kind}\n")

        head("loginprobe_attempts", "counter", "Login attempts, by result and reason.")
        for s in series:
            labels = _labels(s)
            for outcome, n in list(s.attempts.items()):
                ok, reason = outcome
                ex = s.exemplars.get(outcome) if openmetrics else None
                if bit:
                    shown = s.shown.get(outcome, 0)
                    if not shown & bit:  # born at 0 for this scraper
                        s.shown[outcome] = shown | bit
                        n, ex = 0, None
                line = (f'loginprobe_attempts_total{{{labels},result="'
                        f'{"success" if ok else "failure"}",reason="{_escape(reason)}"}} {n}')
                w(f'{line} # {{trace_id="{ex.hex()}"}} 1\n' if ex else line + "\n")
        head("loginprobe_success", "gauge", "1 if the latest attempt logged in, else 0.")
        for s in series:
            w(f"loginprobe_success{{{_labels(s)}}} {int(s.success)}\n")
        for name, text, table, names in (
                ("loginprobe_phase_duration_seconds", "Duration of each phase of an attempt.",
                 phases, _WHERE_PHASE),
                ("loginprobe_duration_seconds", "Duration of a whole attempt.", durations,
                 _WHERE),
                ("loginprobe_phase_server_duration_seconds",
                 "The server's answer time within a phase (tls, login): our last request byte "
                 "out to its answer in, summed over the phase's exchanges (beyond the "
                 "contract).", servers, _WHERE_PHASE)):
            head(name, "histogram", text)
            for key, h in table:
                if bit and not h.shown & bit:
                    h.shown |= bit
                    _histogram(w, name, _format(names, key), _EMPTY, openmetrics)
                else:
                    _histogram(w, name, _format(names, key), h, openmetrics)
        head("loginprobe_tls_cert_not_after_timestamp_seconds", "gauge",
             "When the server's certificate expires, as last seen.")
        for nkey, t in not_after:
            w(f"loginprobe_tls_cert_not_after_timestamp_seconds"
              f"{{{_format(('check', 'target', 'agent'), nkey)}}} {t}\n")
        head("loginprobe_collector_series_dropped", "counter",
             "Results whose label value was replaced by __overflow__ past the cardinality "
             "cap (beyond the contract).")
        for label, n in dropped:
            w(f'loginprobe_collector_series_dropped_total{{label="{label}"}} {n}\n')
        return "".join(out).encode()

    def _served(self, series: list[_Series], bit: int) -> list[_Series]:
        """The series a scraper reads: those of agents connected here, and those of an agent
        that left until this scraper has read them once after it left (their last counts).
        Under the lock: write() takes an agent that sends again off the _gone list."""
        connected = dict(self.fleet.connected)
        for agent in [a for a in self._gone if a in connected]:
            del self._gone[agent]  # back: its counters go on from where they were
        out = []
        unread: set[str] = set()  # leaving agents with a count this scraper has yet to read
        leaving: set[str] = set()
        for s in series:
            agent = s.key[3]
            if agent in connected or agent == OVERFLOW:
                out.append(s)
                continue
            read = self._gone.setdefault(agent, 0)
            if not read & bit:
                out.append(s)
                leaving.add(agent)
                # A counter shown at 0 in this very render has its count shown in the next.
                if any(not s.shown.get(o, 0) & bit for o in s.attempts) or any(
                        not h.shown & bit for h in (s.duration, *s.phases.values())):
                    unread.add(agent)
        for agent in leaving - unread:
            self._gone[agent] |= bit
        live = {s.key[3] for s in series}
        for agent in [a for a in self._gone if a not in live]:
            del self._gone[agent]  # its series were pruned
        return out


# A bit per scraper in an int; a Prometheus HA pair and a few more readers fit easily.
_MAX_SCRAPERS = 16
_EMPTY = _Histogram()  # what a histogram a scraper has not read yet shows it: all zero


def scraper_identity(environ: Mapping[str, Any]) -> str | None:
    """Who is scraping, for ResultMetrics.render: a Prometheus-compatible scraper (Prometheus,
    the Grafana Agent, vmagent) says so in X-Prometheus-Scrape-Timeout-Seconds; others (a
    person with curl, a test) read plain values and count as no scraper."""
    if "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS" not in environ:
        return None
    return f"{environ.get('REMOTE_ADDR', '')} {environ.get('HTTP_USER_AGENT', '')}"


_WHERE = ("check", "protocol", "target", "region", "carrier", "network_type")
_WHERE_PHASE = (*_WHERE, "phase")
_SERIES = ("check", "protocol", "target", "agent", "region", "carrier", "network_type")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


def _labels(s: _Series) -> str:
    # Made at the first scrape of a series and kept with it: most of a scrape is these.
    if not s.text:
        s.text = _format(_SERIES, s.key)
    return s.text


def _histogram(w: Callable[[str], None], name: str, labels: str, h: _Histogram,
               openmetrics: bool) -> None:
    counts, exemplars, total_ns = h.counts[:], h.exemplars[:], h.total_ns
    prefix = f"{name}_bucket{{{labels},le=\""
    running = 0
    for le, n, ex in zip(_LE, counts, exemplars, strict=True):
        running += n
        if openmetrics and ex is not None and ex[0]:
            w(f'{prefix}{le}"}} {running} # {{trace_id="{ex[0].hex()}"}} {ex[1] / 1e9}\n')
        else:
            w(f'{prefix}{le}"}} {running}\n')
    w(f"{name}_count{{{labels}}} {running}\n{name}_sum{{{labels}}} {total_ns / 1e9}\n")


class FleetCollector(Collector):
    """Reads FleetState at scrape time. It runs in the HTTP thread while the event loop writes,
    so each dict is copied first (a C-level copy the GIL keeps whole). An agent neither
    connected nor sending for series_ttl is left out (FleetState itself is not changed here)."""

    def __init__(self, fleet: FleetState, series_ttl: float = 3600.0) -> None:
        self.fleet = fleet
        self.series_ttl = series_ttl
        self._gone_since: dict[str, float] = {}  # agent -> when first seen not connected

    def _live(self, connected: dict[str, dict[str, str]], agents: Sequence[str]) -> set[str]:
        now = time.time()
        last = dict(self.fleet.last_result)
        live = set()
        for agent in agents:
            if agent in connected:
                self._gone_since.pop(agent, None)
                live.add(agent)
                continue
            gone = max(self._gone_since.setdefault(agent, now), last.get(agent, 0.0))
            if now - gone < self.series_ttl:
                live.add(agent)
        return live

    def collect(self) -> Iterator[Metric]:
        s = self.fleet
        now = dict(s.connected)
        labels = {**dict(s.labels), **now}
        live = self._live(now, [*labels, *dict(s.received)])
        received = CounterMetricFamily(
            "loginprobe_collector_results_received",
            "Results accepted from each agent, each (agent, seq) counted once.", labels=["agent"])
        for agent, n in dict(s.received).items():
            if agent in live:
                received.add_metric([agent], n)
        duplicate = CounterMetricFamily(
            "loginprobe_collector_results_duplicate",
            "Results received again (a replay) and acknowledged without processing.",
            labels=["agent"])
        for agent, n in dict(s.duplicates).items():
            if agent in live:
                duplicate.add_metric([agent], n)
        rejected = CounterMetricFamily(
            "loginprobe_collector_results_rejected",
            "Messages and results refused, by reason.", labels=["reason"])
        for reason, n in dict(s.rejected).items():
            rejected.add_metric([reason], n)
        connected = GaugeMetricFamily(
            "loginprobe_agent_connected", "1 while the agent's stream is open.",
            labels=["agent", "region", "carrier", "network_type"])
        for agent, agent_labels in labels.items():
            if agent in live:
                connected.add_metric([agent, *_path(agent_labels)], 1 if agent in now else 0)
        last = GaugeMetricFamily(
            "loginprobe_agent_last_result_timestamp_seconds",
            "When the collector last accepted a result from the agent.", labels=["agent"])
        for agent, t in dict(s.last_result).items():
            if agent in live:
                last.add_metric([agent], t)
        doubled = CounterMetricFamily(
            "loginprobe_collector_results_doubled",
            "Results this replica processed that another had processed too (it was frozen "
            "past the agent's keepalive meanwhile); shared state only.", labels=["agent"])
        for agent, n in dict(s.doubled).items():
            if agent in live:
                doubled.add_metric([agent], n)
        yield from (received, duplicate, rejected, connected, last, doubled)


def serve_metrics(
    fleet: FleetState, host: str, port: int, results: ResultMetrics | None = None,
    series_ttl: float = 3600.0, extra: Sequence[Collector] = (),
    pages: Mapping[str, Callable[..., Iterable[bytes]]] | None = None,
    health: Callable[[], str | None] | None = None,
) -> WSGIServer:
    """Start /metrics on host:port; the caller shuts the returned server down. The format
    follows the scraper's Accept header: OpenMetrics (with exemplars) when asked for. The
    small families go through prometheus_client's encoders; the result families, which
    grow with the fleet, through ResultMetrics.render. Not gzipped: compressing tens of
    MiB would cost more CPU than the loopback or LAN bytes it saves."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet, series_ttl))
    for collector in extra:
        registry.register(collector)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            # For container and Kubernetes probes: plain HTTP, where the gRPC port's health
            # service would need the collector's TLS settings in every probe.
            # Still 200 when the shared state is away: a restart would not bring it back,
            # so a liveness probe must not restart the collector; the body says why.
            problem = health() if health is not None else None
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [problem.encode() if problem else b"ok: serving\n"]
        page = (pages or {}).get(environ.get("PATH_INFO", "").rstrip("/"))
        if page is not None:  # other WSGI apps sharing the listener (the /status page)
            return page(environ, start_response)
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        openmetrics = content_type.startswith("application/openmetrics-text")
        body = encoder(registry)
        if results is not None:
            scraper = scraper_identity(environ)
            if openmetrics:
                body = (body.removesuffix(b"# EOF\n") + results.render(True, scraper)
                        + b"# EOF\n")
            else:
                body += results.render(False, scraper)
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(body)))])
        return [body]

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, port, app, Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news."""


# Seconds from a drop to logged in again: a quick reconnect, the backoff's steps, its cap.
RECONNECT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                     600.0)
_RECONNECT_NS = tuple(round(b * 1e9) for b in RECONNECT_BUCKETS)
_SESSION = ("check", "protocol", "target", "agent", "region", "carrier", "network_type")
# Drop counters made at 0 when a session logs in (with its histograms): a counter born at 1
# loses its first drop to rate() and increase(). The reasons a held session usually ends with.
SEEDED_DROP_REASONS = ("keepalive_timeout", "tcp_reset", "session_closed", "server_unavailable")


class _Plain:
    """Counts per bucket and a sum, in ns (no exemplars: a round trip has no trace)."""

    __slots__ = ("bounds", "counts", "total_ns")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, ns)] += 1
        self.total_ns += ns


class SessionMetrics(Collector):
    """A sink of held sessions' events (CONTRACT.md section 6) and a Prometheus collector of
    their metrics. Events are few (a login, a drop, a reconnect, a keepalive event a minute
    per session), so this keeps plain dicts and renders with prometheus_client. Series not
    fed for series_ttl are removed, as in ResultMetrics."""

    def __init__(self, fleet: FleetState, series_ttl: float = 3600.0) -> None:
        self.fleet = fleet
        self.series_ttl = series_ttl
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, ...], float] = {}  # series key -> last fed (monotonic)
        self._up: dict[tuple[str, ...], int] = {}
        self._drops: dict[tuple[str, ...], dict[str, int]] = {}
        self._reconnect: dict[tuple[str, ...], _Plain] = {}  # keyed without agent
        self._rtt: dict[tuple[str, ...], _Plain] = {}

    def write(self, batch: Accepted) -> None:
        claimed = self.fleet.labels.get(batch.agent, {})
        now = time.monotonic()
        with self._lock:
            for msg in batch.results:
                event = msg.session
                kind = event.kind
                if not kind:
                    continue
                labels = {**claimed, **msg.labels, **batch.fixed_labels}
                key = (msg.check, msg.protocol, msg.url, batch.agent, *_path(labels))
                where = (*key[:3], *key[4:])
                self._seen[key] = now
                if kind in ("login", "reconnect"):
                    self._up[key] = int(msg.success)
                    if msg.success:
                        # Series from 0 at the login: a series born with its first
                        # observations in it loses them to rate() and increase().
                        drops = self._drops.setdefault(key, {})
                        for reason in SEEDED_DROP_REASONS:
                            drops.setdefault(reason, 0)
                        if where not in self._rtt:
                            self._rtt[where] = _Plain(_BOUNDS_NS)
                        if where not in self._reconnect:
                            self._reconnect[where] = _Plain(_RECONNECT_NS)
                    if kind == "reconnect" and msg.success and event.downtime_ns:
                        h = self._reconnect.get(where)
                        if h is None:
                            h = self._reconnect[where] = _Plain(_RECONNECT_NS)
                        h.observe(event.downtime_ns)
                elif kind == "drop":
                    self._up[key] = 0
                    drops = self._drops.setdefault(key, {})
                    drops[msg.reason] = drops.get(msg.reason, 0) + 1
                elif kind == "keepalive":
                    self._up[key] = 1
                    h = self._rtt.get(where)
                    if h is None:
                        h = self._rtt[where] = _Plain(_BOUNDS_NS)
                    for ns in event.keepalive_rtt_ns:
                        h.observe(ns)

    def close(self) -> None:
        """Nothing to flush."""

    def _prune(self) -> None:
        horizon = time.monotonic() - self.series_ttl
        for key in [k for k, t in self._seen.items() if t < horizon]:
            del self._seen[key]
            self._up.pop(key, None)
            self._drops.pop(key, None)
        live = {(*k[:3], *k[4:]) for k in self._seen}
        for table in (self._reconnect, self._rtt):
            for where in [w for w in table if w not in live]:
                del table[where]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._prune()
            up = list(self._up.items())
            drops = [(k, list(d.items())) for k, d in self._drops.items()]
            reconnect = [(k, h.counts[:], h.total_ns) for k, h in self._reconnect.items()]
            rtt = [(k, h.counts[:], h.total_ns) for k, h in self._rtt.items()]
        up_family = GaugeMetricFamily(
            "loginprobe_session_up", "1 while the held session is logged in, else 0.",
            labels=list(_SESSION))
        for key, value in up:
            up_family.add_metric(list(key), value)
        drop_family = CounterMetricFamily(
            "loginprobe_session_drops", "Held sessions that dropped, by reason.",
            labels=[*_SESSION, "reason"])
        for key, by_reason in drops:
            for reason, n in by_reason:
                drop_family.add_metric([*key, reason], n)
        yield from (up_family, drop_family)
        for name, text, table, bounds in (
                ("loginprobe_session_reconnect_duration_seconds",
                 "From a held session's drop to logged in again.", reconnect, RECONNECT_BUCKETS),
                ("loginprobe_keepalive_rtt_seconds",
                 "Round trip of a held session's keepalive.", rtt, BUCKETS)):
            family = HistogramMetricFamily(name, text, labels=list(_WHERE))
            for where, counts, total_ns in table:
                running, buckets = 0, []
                for le, n in zip((*map(str, bounds), "+Inf"), counts, strict=True):
                    running += n
                    buckets.append((le, float(running)))
                family.add_metric(list(where), buckets, total_ns / 1e9)
            yield family

"""The operator's /status page: a sink that keeps the last attempts of each check, agent
and network path in bounded memory, and a WSGI app that renders them as escaped HTML."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from sys import intern
from typing import Any
from urllib.parse import parse_qs, urlencode

from loginprobe.codec import (
    ResultView,
    is_attempt,
    view_bytes,
    view_from_bytes,
    view_without_transcript,
)
from loginprobe.collector.ingest import Accepted, FleetState

log = logging.getLogger(__name__)

HOUR_NS = 3600 * 10**9
LATEST_FAILURES = 20


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the page keeps of one result: what the grid adds up, and the result's own wire
    bytes (a few hundred, one object) decoded only when an attempt is shown. Messages arrive
    scrubbed of secrets by the probe, and a result never holds a password (a check names
    it, the agent resolves it)."""

    started_ns: int
    duration_ns: int
    success: bool
    reason: str
    wire: bytes
    transcript: bool = False  # the wire bytes hold a (failed attempt's) transcript

    @classmethod
    def of(cls, msg: ResultView) -> Attempt:
        # Interned: the reason repeats in every attempt kept.
        return cls(msg.started_at_unix_nano, msg.duration_ns, msg.success,
                   intern(msg.reason), view_bytes(msg), bool(msg.transcript))

    def without_transcript(self) -> Attempt:
        """Only the newest attempt of a series keeps its transcript: a long outage must not
        fill memory with transcripts."""
        return Attempt(self.started_ns, self.duration_ns, self.success, self.reason,
                       view_without_transcript(self.wire))

    def full(self) -> ResultView:
        return view_from_bytes(self.wire)


@dataclass(slots=True)
class Series:
    """One (check, agent, path): its last attempts and since when it fails."""

    attempts: deque[Attempt]
    failing_since: int = 0  # started_at of the first failure of the current run; 0: ok


# Durations are counted for the median in buckets 2% wide (log scale): a median exact to
# about 1%, in a few dozen counters per minute however many attempts there were.
_STEP = math.log(1.02)


@dataclass(slots=True)
class Hour:
    """One (check, path) over the last hour, every attempt counted, by minute: successes,
    attempts and the durations' buckets. At most 61 minutes kept."""

    minutes: dict[int, tuple[list[int], Counter[int]]] = field(default_factory=dict)

    def add(self, started_ns: int, duration_ns: int, ok: bool) -> None:
        minute = started_ns // 60_000_000_000
        slot = self.minutes.get(minute)
        if slot is None:
            newest = max(self.minutes, default=minute)
            if minute < newest - 60:
                return  # a replayed result older than the hour
            slot = self.minutes[minute] = ([0, 0], Counter())
            for old in [m for m in self.minutes if m < max(newest, minute) - 60]:
                del self.minutes[old]
        slot[0][0] += ok
        slot[0][1] += 1
        slot[1][int(math.log(max(duration_ns, 1)) / _STEP)] += 1

    def summary(self, now_ns: int) -> tuple[int, int, float | None]:
        """(successes, attempts, median duration in ns) of the hour before now."""
        since = (now_ns - HOUR_NS) // 60_000_000_000
        ok = total = 0
        buckets: Counter[int] = Counter()
        for minute, (counts, durations) in list(self.minutes.items()):
            if minute >= since:
                ok += counts[0]
                total += counts[1]
                buckets.update(durations)
        if not total:
            return 0, 0, None
        seen = 0
        for bucket in sorted(buckets):
            seen += buckets[bucket]
            if seen * 2 >= total:
                return ok, total, math.exp((bucket + 0.5) * _STEP)
        return ok, total, None


@dataclass(slots=True)
class AgentRow:
    clock_offset_ns: int = 0
    last_ns: int = 0
    last_ok: bool = True
    last_check: str = ""


@dataclass
class StatusStore:
    """A sink (called on the ingest thread) and the page's data. One lock: the page reads
    from the metrics listener's threads."""

    stats: FleetState
    max_attempts: int = 10
    series: dict[tuple[str, str, str], Series] = field(default_factory=dict)
    agents: dict[str, AgentRow] = field(default_factory=dict)
    failures: deque[tuple[str, str, str, Attempt]] = field(
        default_factory=lambda: deque(maxlen=LATEST_FAILURES))
    hours: dict[tuple[str, str], Hour] = field(default_factory=dict)  # (check, path)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Nothing to flush: the page's attempts live in memory."""

    def write(self, batch: Accepted) -> None:
        agent = batch.agent
        with self.lock:
            row = self.agents.setdefault(agent, AgentRow())
            for msg in batch.results:
                if not is_attempt(msg):  # a held session's keepalives and drops
                    continue
                key = (msg.check, agent, msg.labels.get("path", ""))
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = Series(deque(maxlen=self.max_attempts))
                attempt = Attempt.of(msg)
                if series.attempts and series.attempts[-1].transcript:
                    series.attempts[-1] = series.attempts[-1].without_transcript()
                series.attempts.append(attempt)
                hour = self.hours.get((key[0], key[2]))
                if hour is None:
                    hour = self.hours[key[0], key[2]] = Hour()
                hour.add(attempt.started_ns, attempt.duration_ns, attempt.success)
                if msg.success:
                    series.failing_since = 0
                else:
                    if not series.failing_since:
                        series.failing_since = msg.started_at_unix_nano
                    self.failures.append((*key, attempt))
                row.clock_offset_ns = msg.clock_offset_ns
                row.last_ns, row.last_ok, row.last_check = (
                    msg.started_at_unix_nano, msg.success, msg.check)


def _loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def _when(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.1f} ms"


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
.ok{background:#d9f2d9}.failing{background:#f8d0d0}.none{color:#888}
.bar{display:inline-block;height:10px;background:#4a7bd0}.barfail{background:#d04a4a}
.track{position:relative;width:400px;height:12px;background:#eee}
.track span{position:absolute;top:1px}
pre{white-space:pre-wrap;margin:0}
"""


class StatusPage:
    """Renders the store. Every string from an agent or a server goes through escape()."""

    def __init__(self, store: StatusStore, token: str | None = None,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.token = token
        self.now_ns = now_ns

    def allowed(self, environ: dict[str, Any]) -> bool:
        if self.token:
            sent = environ.get("HTTP_AUTHORIZATION", "")
            return hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode())
        return _loopback(environ.get("REMOTE_ADDR", ""))

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.allowed(environ):
            body = (b"the status page answers loopback clients, or a bearer token "
                    b"(status.token_env)\n")
            start_response("403 Forbidden", [("Content-Type", "text/plain"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        one = {k: v[0] for k, v in query.items() if v}
        if {"check", "agent"} <= one.keys():
            html = self.attempts(one["check"], one["agent"], one.get("path", ""))
        else:
            html = self.overview()
        body = html.encode()
        start_response("200 OK", [
            ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")])
        return [body]

    def _page(self, title: str, parts: list[str]) -> str:
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}"
                f"</title><style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"
                + "".join(parts) + "</body></html>")

    def overview(self) -> str:
        store, stats = self.store, self.store.stats
        now = self.now_ns()
        with store.lock:
            items = [(k, s.failing_since, list(s.attempts)) for k, s in store.series.items()]
            agents = {a: (r.clock_offset_ns, r.last_ns, r.last_ok, r.last_check)
                      for a, r in store.agents.items()}
            failures = list(store.failures)
            hours = {k: h.summary(now) for k, h in store.hours.items()}
        parts = [f"<p>rendered {escape(_when(now))}</p>", self._fleet(stats, agents)]
        parts.append(self._grid(items, hours))
        parts.append(self._failures(failures))
        return self._page("loginprobe status", parts)

    def _fleet(self, stats: FleetState, agents: dict[str, tuple[int, int, bool, str]]) -> str:
        names = sorted(set(stats.labels) | set(stats.connected) | set(agents))
        rows = ["<h2>Agents</h2><table><tr><th>agent</th><th>connected</th><th>labels</th>"
                "<th>version</th><th>clock offset</th><th>last result</th></tr>"]
        for name in names:
            labels = stats.connected.get(name) or stats.labels.get(name, {})
            offset, last, ok, check = agents.get(name, (0, 0, True, ""))
            since = stats.connected_since.get(name)
            connected = "yes" + (f" since {_when(int(since * 1e9))}" if since else "") \
                if name in stats.connected else "no"
            version = stats.versions.get(name, "")
            labels_text = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
            last_text = f"{_when(last)} {check} {'ok' if ok else 'failed'}" if last else "-"
            rows.append(f"<tr class='{'ok' if name in stats.connected else 'failing'}'>"
                        f"<td>{escape(name)}</td><td>{escape(connected)}</td>"
                        f"<td>{escape(labels_text)}</td><td>{escape(version)}</td>"
                        f"<td>{escape(_ms(offset))}</td><td>{escape(last_text)}</td></tr>")
        rows.append("</table>")
        return "".join(rows)

    def _grid(self, items: list[tuple[tuple[str, str, str], int, list[Attempt]]],
              hours: dict[tuple[str, str], tuple[int, int, float | None]]) -> str:
        """Checks down, network paths across; a cell sums its agents over the last hour."""
        cells: dict[tuple[str, str], list[tuple[str, int, list[Attempt]]]] = {}
        for (check, agent, path), since, attempts in items:
            cells.setdefault((check, path), []).append((agent, since, attempts))
        checks = sorted({c for c, _ in cells})
        paths = sorted({p for _, p in cells})
        out = ["<h2>Checks by network path</h2><table><tr><th>check</th>"]
        out += [f"<th>{escape(p or '(none)')}</th>" for p in paths]
        out.append("</tr>")
        for check in checks:
            out.append(f"<tr><th>{escape(check)}</th>")
            for path in paths:
                out.append(self._cell(check, path, cells.get((check, path), []),
                                      hours.get((check, path), (0, 0, None))))
            out.append("</tr>")
        out.append("</table>")
        return "".join(out)

    def _cell(self, check: str, path: str, agents: list[tuple[str, int, list[Attempt]]],
              hour: tuple[int, int, float | None]) -> str:
        if not agents:
            return "<td class='none'>-</td>"
        ok, total, median_ns = hour
        ratio = f"{ok / total:.1%} of {total}" if total else "-"
        median = _ms(median_ns) if median_ns is not None else "-"
        failing = [(since, agent, atts[-1]) for agent, since, atts in agents if since and atts]
        lines = [f"{len(agents) - len(failing)}/{len(agents)} agents ok",
                 f"success {ratio}, median {median} (last hour)"]
        if failing:
            since, _, last = min(failing, key=lambda f: f[0])
            lines.append(f"failing since {_when(since)}: {last.reason}")
        links = "".join(
            f"<br><a href='?{escape(urlencode({'check': check, 'agent': a, 'path': path}))}'>"
            f"{escape(a)}</a>" for a, _, _ in sorted(agents)[:10])
        more = f"<br>(+{len(agents) - 10} more)" if len(agents) > 10 else ""
        klass = "failing" if failing else "ok"
        return (f"<td class='{klass}'>" + "<br>".join(escape(x) for x in lines)
                + links + escape(more) + "</td>")

    def _failures(self, failures: list[tuple[str, str, str, Attempt]]) -> str:
        out = ["<h2>Latest failures</h2><table><tr><th>when</th><th>check</th><th>agent</th>"
               "<th>path</th><th>reason</th><th>step</th><th>message</th><th>hint</th></tr>"]
        for check, agent, path, kept in reversed(failures):
            a = kept.full()
            link = escape(urlencode({"check": check, "agent": agent, "path": path}))
            out.append(f"<tr class='failing'><td><a href='?{link}'>"
                       f"{escape(_when(a.started_at_unix_nano))}"
                       f"</a></td><td>{escape(check)}</td><td>{escape(agent)}</td>"
                       f"<td>{escape(path)}</td><td>{escape(a.reason)}</td>"
                       f"<td>{escape(a.step)}</td><td><pre>{escape(a.message)}</pre></td>"
                       f"<td>{escape(a.hint)}</td></tr>")
        out.append("</table>")
        return "".join(out)

    def attempts(self, check: str, agent: str, path: str) -> str:
        """One (check, agent, path): each kept attempt, newest first, with its waterfall
        in a <details> that opens without script."""
        with self.store.lock:
            series = self.store.series.get((check, agent, path))
            attempts = list(series.attempts) if series else []
        parts = ["<p><a href='?'>back</a></p>"]
        if not attempts:
            parts.append("<p>no attempts kept for this check, agent and path</p>")
        for a in reversed(attempts):
            head = (f"{_when(a.started_ns)} {'ok' if a.success else 'FAILED ' + a.reason}"
                    f" {_ms(a.duration_ns)}")
            parts.append(f"<details class='{'ok' if a.success else 'failing'}'><summary>"
                         f"{escape(head)}</summary>{self._waterfall(a.full())}</details>")
        return self._page(f"{check} on {agent} ({path or 'no path'})", parts)

    @staticmethod
    def _waterfall(a: ResultView) -> str:
        total = max(a.duration_ns, max((p.start_offset_ns + p.duration_ns for p in a.phases),
                                       default=0), 1)
        rows = [f"<p>target {escape(a.url)}</p>"]
        if not a.success:
            rows.append(f"<p>reason {escape(a.reason)} (step: {escape(a.step)})</p>"
                        f"<pre class='message'>{escape(a.message)}</pre>"
                        f"<p>hint: {escape(a.hint)}</p>")
        rows.append("<table class='waterfall'><tr><th>phase</th><th>state</th>"
                    "<th>duration</th><th></th><th>message</th></tr>")
        for p in a.phases:
            state = "skipped" if p.skipped else ("ok" if p.ok else "FAIL")
            left = 400 * p.start_offset_ns / total
            width = max(1.0, 400 * p.duration_ns / total)
            bar = "bar" if p.ok or p.skipped else "bar barfail"
            rows.append(f"<tr><td>{escape(p.name)}</td><td>{state}</td>"
                        f"<td>{escape(_ms(p.duration_ns))}</td><td><div class='track'>"
                        f"<span class='{bar}' style='left:{left:.0f}px;width:{width:.0f}px'>"
                        f"</span></div></td><td><pre>{escape(p.message)}</pre></td></tr>")
        rows.append("</table>")
        if a.transcript:  # failed attempts carry theirs, credentials already <redacted>
            lines = "\n".join(f"{t.offset_ns / 1e6:9.3f} ms {t.direction} {t.text}"
                              for t in a.transcript)
            rows.append(f"<p>transcript</p><pre class='transcript'>{escape(lines)}</pre>")
        return "".join(rows)



def status_page(stats: FleetState, config: Any) -> StatusPage | None:
    """The page as configured (config.status of a CollectorConfig), or None when disabled.
    The token is read from the environment once, at start, and never shown."""
    status = config.status
    if not status.enabled:
        return None
    token = os.environ.get(status.token_env) if status.token_env else None
    if status.token_env and not token:
        log.warning("status.token_env names %s, which is unset or empty: the status page "
                    "answers loopback clients only", status.token_env)
    return StatusPage(StatusStore(stats, status.max_attempts), token or None)

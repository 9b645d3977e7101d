"""The comparison itself: per check and group, success and latency (and for held sessions
drop rate, reconnect time and keepalive round trip), and whether groups differ."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from loginprobe.compare.promapi import Prometheus
from loginprobe.compare.stats import (
    ALPHA,
    fisher_exact,
    mann_whitney_binned,
    poisson_interval,
    poisson_rates_p,
)
from loginprobe.contract import PHASES

# Labels present on both loginprobe_attempts_total and the histograms (CONTRACT.md section 4).
GROUP_LABELS = ("network_type", "carrier", "region", "protocol", "target")


@dataclass
class Phase:
    count: float = 0.0
    total: float = 0.0  # seconds, summed over attempts that reached the phase
    p50: float | None = None
    p95: float | None = None
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None


@dataclass
class Sessions:
    """A group's held sessions (CONTRACT.md section 6) over the range."""

    session_hours: float = 0.0  # hours logged in, summed over the sessions
    drops: dict[str, int] = field(default_factory=dict)  # reason -> drops
    reconnect: Phase = field(default_factory=Phase)  # drop to logged in again
    keepalive: Phase = field(default_factory=Phase)  # keepalive round trips

    @property
    def drop_count(self) -> int:
        return sum(self.drops.values())

    @property
    def drop_rate(self) -> float | None:
        """Drops per session-hour."""
        return self.drop_count / self.session_hours if self.session_hours > 0 else None

    @property
    def drop_rate_ci95(self) -> tuple[float, float]:
        return poisson_interval(self.drop_count, self.session_hours)


@dataclass
class Group:
    name: str
    successes: int = 0
    failures: int = 0
    phases: dict[str, Phase] = field(default_factory=dict)
    duration_buckets: dict[float, float] = field(default_factory=dict)
    sessions: Sessions | None = None  # where the check holds sessions

    @property
    def attempts(self) -> int:
        return self.successes + self.failures

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None

    @property
    def mean_duration(self) -> float | None:
        """The sum of the phase means: what the phases add up to for a typical attempt."""
        means = [p.mean for p in self.phases.values() if p.mean is not None]
        return sum(means) if means else None


@dataclass
class Comparison:
    a: Group
    b: Group
    success_p: float
    duration: tuple[float, float] | None  # (p, P(a slower than b)), None without histograms
    phase_p: dict[str, float | None]
    phase_diff: dict[str, float]  # mean of a minus mean of b, seconds
    # Held sessions: drop rates (Poisson E-test), reconnect times and keepalive round trips
    # (Mann-Whitney on their buckets: p, P(a slower than b)); None where either lacks them.
    drop_p: float | None = None
    reconnect: tuple[float, float] | None = None
    keepalive: tuple[float, float] | None = None

    @property
    def duration_diff(self) -> float:
        return sum(self.phase_diff.values())

    @property
    def session_significant(self) -> bool:
        return any(p is not None and p < ALPHA for p in (
            self.drop_p, self.reconnect and self.reconnect[0],
            self.keepalive and self.keepalive[0]))

    @property
    def significant(self) -> bool:
        return (self.success_p < ALPHA or (self.duration is not None and self.duration[0] < ALPHA)
                or self.session_significant)

    def share(self, phase: str) -> float | None:
        total = self.duration_diff
        return self.phase_diff[phase] / total if total else None

    @property
    def blamed_phase(self) -> str | None:
        """The phase with the largest share of the difference in mean duration."""
        shares = {p: s for p in self.phase_diff if (s := self.share(p)) is not None}
        return max(shares, key=lambda p: shares[p]) if shares else None

    def verdict(self) -> list[str]:
        """One sentence on success and one on latency, for what differs significantly."""
        a, b = group_name(self.a.name), group_name(self.b.name)
        if not self.significant:
            dur = f", duration p={fmt_p(self.duration[0])}" if self.duration else ""
            if self.drop_p is not None:
                dur += f", drop rate p={fmt_p(self.drop_p)}"
            if self.reconnect is not None:
                dur += f", reconnect time p={fmt_p(self.reconnect[0])}"
            return [f"no significant difference (success p={fmt_p(self.success_p)}{dur})"]
        parts = self._session_verdict(a, b)
        ra, rb = self.a.success_rate or 0.0, self.b.success_rate or 0.0
        if self.success_p < ALPHA:
            lower = a if ra < rb else b
            parts.append(
                f"success rate lower on {lower}: {fmt_pct(ra)} vs {fmt_pct(rb)} "
                f"({(ra - rb) * 100:+.1f} points), Fisher's exact p={fmt_p(self.success_p)}"
            )
        if self.duration is not None and self.duration[0] < ALPHA:
            slower = a if self.duration[1] > 0.5 else b
            text = (
                f"login slower on {slower}: mean {fmt_ms(self.a.mean_duration)} vs "
                f"{fmt_ms(self.b.mean_duration)} ms, Mann-Whitney p={fmt_p(self.duration[0])}"
            )
            blamed = self.blamed_phase
            if blamed is not None:
                share, phase_p = self.share(blamed) or 0.0, self.phase_p.get(blamed)
                text += (
                    f"; {blamed} accounts for {share:.0%} of the difference"
                    f" ({self.phase_diff[blamed] * 1000:+.1f} ms"
                    + (f", p={fmt_p(phase_p)})" if phase_p is not None else ")")
                )
            parts.append(text)
        return parts

    def _session_verdict(self, a: str, b: str) -> list[str]:
        """What differs significantly in the held sessions, first: drops are the news."""
        parts: list[str] = []
        sa, sb = self.a.sessions, self.b.sessions
        if sa is None or sb is None:
            return parts
        if self.drop_p is not None and self.drop_p < ALPHA:
            ra, rb = sa.drop_rate or 0.0, sb.drop_rate or 0.0
            parts.append(
                f"sessions drop more often on {a if ra > rb else b}: {ra:.2f} vs {rb:.2f} "
                f"per session-hour, Poisson E-test p={fmt_p(self.drop_p)}")
        for what, test, pa, pb, unit in (
                ("reconnects", self.reconnect, sa.reconnect, sb.reconnect, "s"),
                ("keepalives", self.keepalive, sa.keepalive, sb.keepalive, "ms")):
            if test is not None and test[0] < ALPHA:
                shown = fmt_s if unit == "s" else fmt_ms
                parts.append(
                    f"{what} slower on {a if test[1] > 0.5 else b}: p50 {shown(pa.p50)} vs "
                    f"{shown(pb.p50)} {unit}, Mann-Whitney p={fmt_p(test[0])}")
        return parts


@dataclass
class CheckReport:
    check: str
    groups: list[Group]
    comparisons: list[Comparison]


def group_name(group: str) -> str:
    return group or "(none)"


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def fmt_pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _bins(a: dict[float, float], b: dict[float, float]) -> tuple[list[int], list[int]]:
    """Per-bucket counts of two cumulative histograms on the bucket bounds they share.

    Only shared bounds give exact counts for both groups when their layouts differ.
    increase() extrapolates each bucket series on its own, so its counts come back
    fractional and, now and then, not quite cumulative: round them, never go below zero.
    """
    bounds = sorted(a.keys() & b.keys())

    def counts(h: dict[float, float]) -> list[int]:
        out, below = [], 0
        for le in bounds:
            out.append(max(0, round(h[le]) - below))
            below = max(below, round(h[le]))
        return out

    return counts(a), counts(b)


def compare_groups(a: Group, b: Group) -> Comparison:
    phases = sorted(a.phases.keys() & b.phases.keys(), key=phase_key)
    phase_p: dict[str, float | None] = {}
    phase_diff: dict[str, float] = {}
    for name in phases:
        pa, pb = a.phases[name], b.phases[name]
        mw = mann_whitney_binned(*_bins(pa.buckets, pb.buckets))
        phase_p[name] = mw[0] if mw else None
        if pa.mean is not None and pb.mean is not None:
            phase_diff[name] = pa.mean - pb.mean
    c = Comparison(
        a=a,
        b=b,
        success_p=fisher_exact(a.successes, a.attempts, b.successes, b.attempts),
        duration=mann_whitney_binned(*_bins(a.duration_buckets, b.duration_buckets)),
        phase_p=phase_p,
        phase_diff=phase_diff,
    )
    sa, sb = a.sessions, b.sessions
    if sa is not None and sb is not None:
        c.drop_p = poisson_rates_p(sa.drop_count, sa.session_hours, sb.drop_count,
                                   sb.session_hours)
        c.reconnect = mann_whitney_binned(*_bins(sa.reconnect.buckets, sb.reconnect.buckets))
        c.keepalive = mann_whitney_binned(*_bins(sa.keepalive.buckets, sb.keepalive.buckets))
    return c


def phase_key(name: str) -> tuple[int, str]:
    return (PHASES.index(name) if name in PHASES else len(PHASES), name)


def collect(
    prom: Prometheus, start: float, end: float, by: str, check: str | None
) -> list[CheckReport]:
    """Queries Prometheus at `end` over [start, end] and builds one report per check."""
    sel = f"{{check={json.dumps(check)}}}" if check else ""  # a JSON string is a PromQL one
    rng = f"[{round(end - start)}s]"

    def inc(metric: str, labels: str) -> str:
        return f"sum by (check, {by}, {labels}) (increase({metric}{sel}{rng}))"

    groups: dict[tuple[str, str], Group] = {}

    def group(labels: dict[str, str]) -> Group:
        key = (labels.get("check", ""), labels.get(by, ""))
        return groups.setdefault(key, Group(key[1]))

    def phase(labels: dict[str, str]) -> Phase:
        return group(labels).phases.setdefault(labels.get("phase", ""), Phase())

    for labels, value in prom.query(inc("loginprobe_attempts_total", "result"), end):
        g = group(labels)
        if labels.get("result") == "success":
            g.successes += round(value)
        else:
            g.failures += round(value)
    buckets = inc("loginprobe_phase_duration_seconds_bucket", "phase, le")
    for labels, value in prom.query(buckets, end):
        phase(labels).buckets[float(labels["le"])] = value
    for labels, value in prom.query(inc("loginprobe_phase_duration_seconds_sum", "phase"), end):
        phase(labels).total = value
    for labels, value in prom.query(inc("loginprobe_phase_duration_seconds_count", "phase"), end):
        phase(labels).count = value
    # Prometheus's own histogram_quantile, so p50/p95 match a dashboard's to the digit.
    for labels, value in prom.query(f"histogram_quantile(0.5, {buckets})", end):
        phase(labels).p50 = _finite(value)
    for labels, value in prom.query(f"histogram_quantile(0.95, {buckets})", end):
        phase(labels).p95 = _finite(value)
    for labels, value in prom.query(inc("loginprobe_duration_seconds_bucket", "le"), end):
        group(labels).duration_buckets[float(labels["le"])] = value
    _collect_sessions(prom, end, by, sel, rng, end - start, group)

    reports = []
    for name in sorted({c for c, _ in groups}):
        members = sorted(
            (g for (c, _), g in groups.items()
             if c == name and (g.attempts > 0 or g.sessions is not None)),
            key=lambda g: g.name,
        )
        if members:
            pairs = [compare_groups(a, b) for a, b in itertools.combinations(members, 2)]
            reports.append(CheckReport(name, members, pairs))
    return reports


def _collect_sessions(prom: Prometheus, end: float, by: str, sel: str, rng: str,
                      seconds: float, group: Callable[[dict[str, str]], Group]) -> None:
    """The held sessions' metrics of each group. Session-hours are each session's average
    of loginprobe_session_up over the range times its length: a session that existed for
    part of the range counts its average over the part it existed."""

    def sessions(labels: dict[str, str]) -> Sessions:
        g = group(labels)
        if g.sessions is None:
            g.sessions = Sessions()
        return g.sessions

    up = f"sum by (check, {by}) (avg_over_time(loginprobe_session_up{sel}{rng}))"
    for labels, value in prom.query(up, end):
        sessions(labels).session_hours = value * seconds / 3600
    drops = f"sum by (check, {by}, reason) (increase(loginprobe_session_drops_total{sel}{rng}))"
    for labels, value in prom.query(drops, end):
        if round(value):
            sessions(labels).drops[labels.get("reason", "")] = round(value)
    for metric, part in (("loginprobe_session_reconnect_duration_seconds", "reconnect"),
                         ("loginprobe_keepalive_rtt_seconds", "keepalive")):
        buckets = f"sum by (check, {by}, le) (increase({metric}_bucket{sel}{rng}))"

        def phase(labels: dict[str, str], part: str = part) -> Phase:
            out: Phase = getattr(sessions(labels), part)
            return out

        for labels, value in prom.query(buckets, end):
            phase(labels).buckets[float(labels["le"])] = value
        for labels, value in prom.query(
                f"sum by (check, {by}) (increase({metric}_sum{sel}{rng}))", end):
            phase(labels).total = value
        for labels, value in prom.query(
                f"sum by (check, {by}) (increase({metric}_count{sel}{rng}))", end):
            phase(labels).count = value
        for labels, value in prom.query(f"histogram_quantile(0.5, {buckets})", end):
            phase(labels).p50 = _finite(value)
        for labels, value in prom.query(f"histogram_quantile(0.95, {buckets})", end):
            phase(labels).p95 = _finite(value)

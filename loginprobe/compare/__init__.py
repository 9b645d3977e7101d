"""`loginprobe compare`: login success and latency per check and group, and if groups differ."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loginprobe.contract import PHASES

ALPHA = 0.05
Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
# Labels present on both loginprobe_attempts_total and the histograms (CONTRACT.md section 4).
GROUP_LABELS = ("network_type", "carrier", "region", "protocol", "target")
EXIT_OK, EXIT_NO_DATA, EXIT_ERROR = 0, 1, 2

EPILOG = """\
Every number covers [start, end]: counts are increase() over the whole range, so the
figures are those a Grafana panel with the same range shows. Success rates carry a 95%
Wilson interval; two groups' success rates are compared with Fisher's exact test, their
login durations (and each phase's) with a Mann-Whitney U test on the histogram buckets.
The phase blamed is the one with the largest share of the difference in mean duration.
A difference is called significant at p < 0.05; with more than two groups every pair is
tested, with no correction for the number of pairs.

exit status: 0 report printed (whether or not the groups differ), 1 no attempts in the
range for this selection, 2 usage error, Prometheus unreachable or a query refused.
"""


class CompareError(Exception):
    """A usage or Prometheus problem: one sentence on stderr, exit status 2."""


# --- statistics: small closed forms, so no scipy ---------------------------------------


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: unlike the textbook p ± z·se it keeps its coverage near 0% and
    100% and for small n, which is where login success rates live."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a_successes: int, a_n: int, b_successes: int, b_n: int) -> float:
    """Two-sided p-value of Fisher's exact test on successes/failures of two groups.

    Exact rather than the two-proportion z-test because success rates near 100% give
    expected failure counts below 5, where the z-test's normal approximation misleads.
    """
    n, s = a_n + b_n, a_successes + b_successes
    if a_n == 0 or b_n == 0:
        return 1.0

    def log_p(x: int) -> float:  # hypergeometric: x of the s successes fall in group a
        return _log_comb(a_n, x) + _log_comb(b_n, s - x) - _log_comb(n, s)

    observed = log_p(a_successes)
    # Sum every table no more likely than the observed one; the tolerance (as R and scipy
    # use) keeps tables equal to it from being lost to rounding.
    p = sum(
        math.exp(lp)
        for x in range(max(0, s - b_n), min(a_n, s) + 1)
        if (lp := log_p(x)) <= observed + 1e-7
    )
    return min(1.0, p)


def mann_whitney_binned(a: Sequence[int], b: Sequence[int]) -> tuple[float, float] | None:
    """Two-sided p-value and P(a slower than b) from two groups' counts in the same bins.

    A histogram keeps only which bucket each attempt fell in, i.e. an order with ties. The
    Mann-Whitney U test needs nothing more: each bucket is one tie group, the tie-corrected
    variance accounts for the binning exactly, and it answers the question asked (does one
    group tend to be slower?). A chi-square test on the bucket counts would instead flag any
    change of shape in either direction, and its p-value depends on how sparse buckets are
    merged. The cost: a difference that stays within one bucket is invisible (conservative).
    Normal approximation with continuity correction; fine from a few dozen attempts a group.
    """
    na, nb = sum(a), sum(b)
    if na == 0 or nb == 0:
        return None
    u = 0.0  # pairs (x from a, y from b) with x > y, ties counting one half
    b_below = 0
    for ca, cb in zip(a, b, strict=True):
        u += ca * (b_below + cb / 2)
        b_below += cb
    n = na + nb
    ties = sum((ca + cb) ** 3 - (ca + cb) for ca, cb in zip(a, b, strict=True))
    var = na * nb / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:  # every attempt of both groups in one bucket: nothing tells them apart
        return 1.0, u / (na * nb)
    z = max(0.0, abs(u - na * nb / 2) - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2))), u / (na * nb)


# --- Prometheus ------------------------------------------------------------------------


class Prometheus:
    """Instant queries against Prometheus's HTTP API, with errors worded for a user."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CompareError(f"--prometheus {url!r}: expected http://HOST:PORT or https://…")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """The vector expr gives at time `at`, as (labels, value) pairs."""
        body = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}).encode()
        # POST form: long queries would not fit a URL. The scheme was checked in __init__.
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=body)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise CompareError(self._refusal(exc, expr)) from None
        except urllib.error.URLError as exc:
            raise CompareError(f"cannot reach Prometheus at {self.url}: {exc.reason}") from None
        except TimeoutError:
            raise CompareError(
                f"Prometheus at {self.url} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, ValueError) as exc:
            raise CompareError(f"bad answer from Prometheus at {self.url}: {exc}") from None
        data = answer.get("data", {}) if isinstance(answer, dict) else {}
        if answer.get("status") != "success" or data.get("resultType") != "vector":
            raise CompareError(f"unexpected answer from Prometheus at {self.url} to {expr}")
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def _refusal(self, exc: urllib.error.HTTPError, expr: str) -> str:
        try:
            error = json.load(exc)["error"]
        except (ValueError, KeyError, TypeError, OSError):
            return (
                f"Prometheus at {self.url} answered HTTP {exc.code} {exc.reason}: "
                "is this the base URL of a Prometheus server?"
            )
        return f"Prometheus refused the query {expr}: {error}"


# --- the report ------------------------------------------------------------------------


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
class Group:
    name: str
    successes: int = 0
    failures: int = 0
    phases: dict[str, Phase] = field(default_factory=dict)
    duration_buckets: dict[float, float] = field(default_factory=dict)

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

    @property
    def duration_diff(self) -> float:
        return sum(self.phase_diff.values())

    @property
    def significant(self) -> bool:
        return self.success_p < ALPHA or (self.duration is not None and self.duration[0] < ALPHA)

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
        a, b = _name(self.a.name), _name(self.b.name)
        if not self.significant:
            dur = f", duration p={_p(self.duration[0])}" if self.duration else ""
            return [f"no significant difference (success p={_p(self.success_p)}{dur})"]
        parts = []
        ra, rb = self.a.success_rate or 0.0, self.b.success_rate or 0.0
        if self.success_p < ALPHA:
            lower = a if ra < rb else b
            parts.append(
                f"success rate lower on {lower}: {_pct(ra)} vs {_pct(rb)} "
                f"({(ra - rb) * 100:+.1f} points), Fisher's exact p={_p(self.success_p)}"
            )
        if self.duration is not None and self.duration[0] < ALPHA:
            slower = a if self.duration[1] > 0.5 else b
            text = (
                f"login slower on {slower}: mean {_ms(self.a.mean_duration)} vs "
                f"{_ms(self.b.mean_duration)} ms, Mann-Whitney p={_p(self.duration[0])}"
            )
            blamed = self.blamed_phase
            if blamed is not None:
                share, phase_p = self.share(blamed) or 0.0, self.phase_p.get(blamed)
                text += (
                    f"; {blamed} accounts for {share:.0%} of the difference"
                    f" ({self.phase_diff[blamed] * 1000:+.1f} ms"
                    + (f", p={_p(phase_p)})" if phase_p is not None else ")")
                )
            parts.append(text)
        return parts


@dataclass
class CheckReport:
    check: str
    groups: list[Group]
    comparisons: list[Comparison]


def _name(group: str) -> str:
    return group or "(none)"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


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
    phases = sorted(a.phases.keys() & b.phases.keys(), key=_phase_key)
    phase_p: dict[str, float | None] = {}
    phase_diff: dict[str, float] = {}
    for name in phases:
        pa, pb = a.phases[name], b.phases[name]
        mw = mann_whitney_binned(*_bins(pa.buckets, pb.buckets))
        phase_p[name] = mw[0] if mw else None
        if pa.mean is not None and pb.mean is not None:
            phase_diff[name] = pa.mean - pb.mean
    return Comparison(
        a=a,
        b=b,
        success_p=fisher_exact(a.successes, a.attempts, b.successes, b.attempts),
        duration=mann_whitney_binned(*_bins(a.duration_buckets, b.duration_buckets)),
        phase_p=phase_p,
        phase_diff=phase_diff,
    )


def _phase_key(name: str) -> tuple[int, str]:
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

    reports = []
    for name in sorted({c for c, _ in groups}):
        members = sorted(
            (g for (c, _), g in groups.items() if c == name and g.attempts > 0),
            key=lambda g: g.name,
        )
        if members:
            pairs = [compare_groups(a, b) for a, b in itertools.combinations(members, 2)]
            reports.append(CheckReport(name, members, pairs))
    return reports


# --- output ----------------------------------------------------------------------------


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_table(reports: list[CheckReport], by: str, start: float, end: float) -> str:
    lines = [f"loginprobe compare: {_iso(start)} to {_iso(end)}, by {by}"]
    for r in reports:
        phases = sorted({p for g in r.groups for p in g.phases}, key=_phase_key)
        head = [by, "attempts", "success", "95% CI"]
        head += [f"{p} p50/p95" for p in phases] + ["mean ms"]
        rows = [head]
        for g in r.groups:
            lo, hi = wilson(g.successes, g.attempts)
            row = [_name(g.name), str(g.attempts), _pct(g.success_rate)]
            row.append(f"{_pct(lo)}-{_pct(hi)}")
            for p in phases:
                ph = g.phases.get(p)
                row.append(f"{_ms(ph.p50)}/{_ms(ph.p95)}" if ph else "-")
            rows.append([*row, _ms(g.mean_duration)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines += ["", f"check {r.check}   (latencies in ms)"]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  " + "  ".join(cells))
        if not r.comparisons:
            lines.append(f"  only one {by} here: nothing to compare")
        for c in r.comparisons:
            lines.append(f"  {_name(c.a.name)} vs {_name(c.b.name)}:")
            lines += [f"    {sentence}" for sentence in c.verdict()]
    return "\n".join(lines)


def to_json(reports: list[CheckReport], by: str, start: float, end: float) -> dict[str, Any]:
    def group(g: Group) -> dict[str, Any]:
        return {
            "group": g.name,
            "attempts": g.attempts,
            "successes": g.successes,
            "success_rate": g.success_rate,
            "success_rate_ci95": list(wilson(g.successes, g.attempts)),
            "mean_duration_seconds": g.mean_duration,
            "phases": {
                name: {
                    "count": round(p.count),
                    "p50_seconds": p.p50,
                    "p95_seconds": p.p95,
                    "mean_seconds": p.mean,
                }
                for name, p in sorted(g.phases.items(), key=lambda kv: _phase_key(kv[0]))
            },
        }

    def comparison(c: Comparison) -> dict[str, Any]:
        return {
            "a": c.a.name,
            "b": c.b.name,
            "significant": c.significant,
            "verdict": "; ".join(c.verdict()),
            "success_rate": {
                "difference": (c.a.success_rate or 0.0) - (c.b.success_rate or 0.0),
                "test": "fisher_exact",
                "p_value": c.success_p,
            },
            "duration": {
                "difference_seconds": c.duration_diff,
                "test": "mann_whitney_u_binned",
                "p_value": c.duration[0] if c.duration else None,
                "prob_a_slower": c.duration[1] if c.duration else None,
            },
            "phases": {
                p: {
                    "difference_seconds": c.phase_diff.get(p),
                    "share": c.share(p) if p in c.phase_diff else None,
                    "p_value": c.phase_p[p],
                }
                for p in c.phase_p
            },
            "blamed_phase": c.blamed_phase,
        }

    return {
        "start": _iso(start),
        "end": _iso(end),
        "by": by,
        "alpha": ALPHA,
        "checks": [
            {
                "check": r.check,
                "groups": [group(g) for g in r.groups],
                "comparisons": [comparison(c) for c in r.comparisons],
            }
            for r in reports
        ],
    }


def write_png(reports: list[CheckReport], by: str, path: str) -> None:
    """Per check: success rate with its 95% interval, and each phase's p95, per group."""
    try:
        import matplotlib
    except ImportError:
        raise CompareError("--png needs matplotlib: pip install 'loginprobe[compare]'") from None
    matplotlib.use("Agg")  # no display: render to a file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 2, figsize=(11, 3.6 * len(reports)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (left, right), r in zip(axes, reports, strict=True):
        names = [_name(g.name) for g in r.groups]
        rates = [(g.success_rate or 0.0) * 100 for g in r.groups]
        cis = [wilson(g.successes, g.attempts) for g in r.groups]
        errors = [
            [rate - lo * 100 for rate, (lo, _) in zip(rates, cis, strict=True)],
            [hi * 100 - rate for rate, (_, hi) in zip(rates, cis, strict=True)],
        ]
        # Points, not bars: the axis starts near the lowest rate, and a cut bar misleads.
        for i, name in enumerate(names):
            left.errorbar(
                [name],
                [rates[i]],
                yerr=[[errors[0][i]], [errors[1][i]]],
                fmt="o",
                capsize=8,
                markersize=8,
                color=colors[i % len(colors)],
            )
        left.set_xlim(-0.5, len(names) - 0.5)
        left.set_ylim(max(0.0, min(lo * 100 for lo, _ in cis) - 2), 100.5)
        left.grid(axis="y", alpha=0.3)
        left.set_ylabel("login success rate, % (95% CI)")
        left.set_xlabel(by)
        title = f"{r.check}"
        if r.comparisons:
            c = r.comparisons[0]
            title += f"  (success p={_p(c.success_p)}"
            title += f", duration p={_p(c.duration[0])})" if c.duration else ")"
        left.set_title(title, loc="left")
        phases = sorted({p for g in r.groups for p in g.phases}, key=_phase_key)
        width = 0.8 / max(1, len(r.groups))
        for i, g in enumerate(r.groups):
            xs = [j + (i - (len(r.groups) - 1) / 2) * width for j in range(len(phases))]
            p95 = [((g.phases[p].p95 or 0.0) if p in g.phases else 0.0) * 1000 for p in phases]
            right.bar(xs, p95, width, label=_name(g.name), color=colors[i % len(colors)])
        right.set_xticks(range(len(phases)), phases)
        shown = [v for g in r.groups for p in g.phases.values() if (v := p.p95 or 0.0) > 0]
        if shown and max(shown) > 20 * min(shown):  # one timeout-heavy phase hides the rest
            right.set_yscale("log")
        right.set_ylabel("p95 latency, ms")
        right.set_title("phase p95 latency", loc="left")
        right.legend(title=by)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise CompareError(f"--png {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


# --- command line ----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Prometheus-style durations: 90s, 30m, 1h30m, 7d."""
    if not text or not re.fullmatch(f"(?:{_DURATION.pattern})+", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 30m, 1h, 2d")
    seconds = sum(int(n) * _UNIT[u] for n, u in _DURATION.findall(text))
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the range must be longer than zero")
    return float(seconds)


def parse_time(text: str) -> float:
    """RFC 3339 (a time without a zone is UTC) or Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected RFC 3339 (2026-11-26T10:00:00Z) or Unix seconds"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds between 0 and 600")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `compare` subcommand, added to the CLI's subparsers."""
    job = "compare login success and latency between network types (or another label)"
    p: argparse.ArgumentParser = sub.add_parser(
        "compare",
        help=job,
        description="Compare login success and latency per check between the values of a\n"
        "label (default network_type: wifi, cellular, wired), from Prometheus's HTTP API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    p.add_argument(
        "--range",
        type=parse_duration,
        metavar="DURATION",
        help="how far back from --end (default 1h); not with --start",
    )
    p.add_argument("--start", type=parse_time, metavar="TIME", help="RFC 3339 or Unix seconds")
    p.add_argument("--end", type=parse_time, metavar="TIME", help="default: now")
    p.add_argument("--by", default="network_type", choices=GROUP_LABELS, help="group by label")
    p.add_argument("--check", metavar="NAME", help="only this check")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--png", metavar="FILE", help="also draw a chart to FILE (needs matplotlib)")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="per query (default 10)",
    )
    return p


def _window(args: argparse.Namespace) -> tuple[float, float]:
    if args.start is not None and args.range is not None:
        raise CompareError("give --start or --range, not both")
    end = args.end if args.end is not None else datetime.now(UTC).timestamp()
    start = args.start if args.start is not None else end - (args.range or 3600.0)
    if end - start < 1:
        raise CompareError(f"--start {_iso(start)} is not before --end {_iso(end)}")
    return start, end


def run(args: argparse.Namespace) -> int:
    """The command: 0 report printed, 1 no data in the range, 2 usage or Prometheus error."""
    try:
        start, end = _window(args)
        reports = collect(
            Prometheus(args.prometheus, args.timeout), start, end, args.by, args.check
        )
        if not reports:
            what = f"check {args.check!r}" if args.check else "any check"
            print(
                f"loginprobe compare: no attempts of {what} in Prometheus between "
                f"{_iso(start)} and {_iso(end)}",
                file=sys.stderr,
            )
            return EXIT_NO_DATA
        if args.png:
            write_png(reports, args.by, args.png)
    except CompareError as exc:
        print(f"loginprobe compare: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(to_json(reports, args.by, start, end)))
    else:
        print(render_table(reports, args.by, start, end))
    return EXIT_OK

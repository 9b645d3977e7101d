"""compare's outputs: a text table, one JSON object, a PNG chart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loginprobe.compare.promapi import CompareError
from loginprobe.compare.report import (
    CheckReport,
    Comparison,
    Group,
    Sessions,
    fmt_ms,
    fmt_p,
    fmt_pct,
    fmt_s,
    group_name,
    phase_key,
)
from loginprobe.compare.stats import ALPHA, wilson


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_table(reports: list[CheckReport], by: str, start: float, end: float) -> str:
    lines = [f"loginprobe compare: {iso(start)} to {iso(end)}, by {by}"]
    for r in reports:
        phases = sorted({p for g in r.groups for p in g.phases}, key=phase_key)
        head = [by, "attempts", "success", "95% CI"]
        head += [f"{p} p50/p95" for p in phases] + ["mean ms"]
        rows = [head]
        for g in r.groups:
            lo, hi = wilson(g.successes, g.attempts)
            row = [group_name(g.name), str(g.attempts), fmt_pct(g.success_rate)]
            row.append(f"{fmt_pct(lo)}-{fmt_pct(hi)}")
            for p in phases:
                ph = g.phases.get(p)
                row.append(f"{fmt_ms(ph.p50)}/{fmt_ms(ph.p95)}" if ph else "-")
            rows.append([*row, fmt_ms(g.mean_duration)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines += ["", f"check {r.check}   (latencies in ms)"]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  " + "  ".join(cells))
        if any(g.sessions for g in r.groups):
            lines += _sessions_table(r, by)
        if not r.comparisons:
            lines.append(f"  only one {by} here: nothing to compare")
        for c in r.comparisons:
            lines.append(f"  {group_name(c.a.name)} vs {group_name(c.b.name)}:")
            lines += [f"    {sentence}" for sentence in c.verdict()]
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join([row[0].ljust(widths[0])] + [
        c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]) for row in rows]


def _sessions_table(r: CheckReport, by: str) -> list[str]:
    """Held sessions per group: drops per session-hour (exact 95% interval), reconnect time
    and keepalive round trip."""
    rows = [[by, "session-h", "drops", "per session-h", "95% CI", "reconnects",
             "reconnect p50/p95 s", "keepalive p50/p95 ms"]]
    for g in r.groups:
        s = g.sessions
        if s is None:
            continue
        lo, hi = s.drop_rate_ci95
        rate = "-" if s.drop_rate is None else f"{s.drop_rate:.2f}"
        rows.append([group_name(g.name), f"{s.session_hours:.2f}", str(s.drop_count), rate,
                     f"{lo:.2f}-{hi:.2f}", str(round(s.reconnect.count)),
                     f"{fmt_s(s.reconnect.p50)}/{fmt_s(s.reconnect.p95)}",
                     f"{fmt_ms(s.keepalive.p50)}/{fmt_ms(s.keepalive.p95)}"])
    return ["", f"  held sessions of {r.check}", *_columns(rows)]


def _sessions_json(s: Sessions | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "session_hours": s.session_hours,
        "drops": s.drop_count,
        "drops_by_reason": dict(sorted(s.drops.items())),
        "drops_per_session_hour": s.drop_rate,
        "drops_per_session_hour_ci95": list(s.drop_rate_ci95),
        "reconnects": round(s.reconnect.count),
        "reconnect_p50_seconds": s.reconnect.p50,
        "reconnect_p95_seconds": s.reconnect.p95,
        "reconnect_mean_seconds": s.reconnect.mean,
        "keepalives": round(s.keepalive.count),
        "keepalive_p50_seconds": s.keepalive.p50,
        "keepalive_p95_seconds": s.keepalive.p95,
        "keepalive_mean_seconds": s.keepalive.mean,
    }


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
                for name, p in sorted(g.phases.items(), key=lambda kv: phase_key(kv[0]))
            },
            "sessions": _sessions_json(g.sessions),
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
            "drop_rate": {
                "difference": (c.a.sessions.drop_rate or 0.0) - (c.b.sessions.drop_rate or 0.0)
                if c.a.sessions and c.b.sessions else None,
                "test": "poisson_e_test",
                "p_value": c.drop_p,
            },
            "reconnect": {
                "test": "mann_whitney_u_binned",
                "p_value": c.reconnect[0] if c.reconnect else None,
                "prob_a_slower": c.reconnect[1] if c.reconnect else None,
            },
            "keepalive": {
                "test": "mann_whitney_u_binned",
                "p_value": c.keepalive[0] if c.keepalive else None,
                "prob_a_slower": c.keepalive[1] if c.keepalive else None,
            },
        }

    return {
        "start": iso(start),
        "end": iso(end),
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
        names = [group_name(g.name) for g in r.groups]
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
            title += f"  (success p={fmt_p(c.success_p)}"
            title += f", duration p={fmt_p(c.duration[0])})" if c.duration else ")"
        left.set_title(title, loc="left")
        phases = sorted({p for g in r.groups for p in g.phases}, key=phase_key)
        width = 0.8 / max(1, len(r.groups))
        for i, g in enumerate(r.groups):
            xs = [j + (i - (len(r.groups) - 1) / 2) * width for j in range(len(phases))]
            p95 = [((g.phases[p].p95 or 0.0) if p in g.phases else 0.0) * 1000 for p in phases]
            right.bar(xs, p95, width, label=group_name(g.name), color=colors[i % len(colors)])
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

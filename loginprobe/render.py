"""The human waterfall for `loginprobe check`: one line per phase, then the verdict."""

from __future__ import annotations

from loginprobe.result import Result

BAR_WIDTH = 40


def _ms(ns: int) -> str:
    return f"{ns / 1e6:9.2f} ms"


def waterfall(result: Result, transcript: bool = False) -> str:
    total = max(result.duration_ns, 1)
    lines = [
        f"{result.url}  ({result.protocol}, started {result.started_at:%Y-%m-%d %H:%M:%S} UTC)"
    ]
    if result.dns:
        d = result.dns
        srv = f" via SRV {d.srv}" if d.srv else ""
        ttl = f", ttl {d.ttl}s" if d.ttl is not None else ""
        lines.append(
            f"  resolved {d.name}{srv} -> {', '.join(d.addresses) or '-'} ({d.resolver}{ttl})"
        )
    for p in result.phases:
        mark = "skip" if p.skipped else ("ok" if p.ok else "FAIL")
        start = int(p.start_ns * BAR_WIDTH / total)
        width = max(1, round(p.duration_ns * BAR_WIDTH / total))
        bar = " " * min(start, BAR_WIDTH - 1) + "#" * min(
            width, BAR_WIDTH - min(start, BAR_WIDTH - 1)
        )
        extra = f"  server {_ms(p.server_ns).strip()}" if p.server_ns is not None else ""
        extra += f"  {p.message}" if p.message else ""
        # Seven columns hold the longest phase name, "upgrade"; the mark fits in four.
        lines.append(f"  {p.name:<7}{mark:>4} {_ms(p.duration_ns)}  |{bar:<{BAR_WIDTH}}|{extra}")
    lines.append(f"  {'total':<7}{'':>4} {_ms(result.duration_ns)}")
    if result.tls:
        t = result.tls
        state = "verified" if t.verified else f"NOT verified ({t.verify_error})"
        expiry = (
            f", expires {t.not_after:%Y-%m-%d} ({t.days_left:.0f} days left)"
            if t.not_after and t.days_left is not None
            else ""
        )
        alpn = f", ALPN {t.alpn}" if t.alpn else ""
        lines.append(f"  tls    {t.version} {t.cipher}{alpn}")
        lines.append(f"         {t.subject} issued by {t.issuer}, {state}{expiry}")
    if transcript and result.transcript:
        lines.append("transcript:")
        for line in result.transcript:
            lines.append(f"  {line.offset_ns / 1e6:9.3f} ms {line.direction} {line.text}")
    if result.success:
        lines.append(f"OK: {result.message}")
    else:
        lines.append(f"FAILED: {result.reason} (step: {result.reason.step}): {result.message}")
        lines.append(f"hint: {result.hint}")
        # The headline leads the hint; the rest of what the follow-up learned follows it.
        lines.extend(f"found: {finding}" for finding in result.findings[1:])
    return "\n".join(lines)

"""`loginprobe compare`'s options and its run."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import UTC, datetime
from typing import Any

from loginprobe.compare.promapi import CompareError, Prometheus
from loginprobe.compare.render import iso, render_table, to_json, write_png
from loginprobe.compare.report import GROUP_LABELS, collect

EXIT_OK, EXIT_NO_DATA, EXIT_ERROR = 0, 1, 2

EPILOG = """\
Every number covers [start, end]: counts are increase() over the whole range, so the
figures are those a Grafana panel with the same range shows. Success rates carry a 95%
Wilson interval; two groups' success rates are compared with Fisher's exact test, their
login durations (and each phase's) with a Mann-Whitney U test on the histogram buckets.
The phase blamed is the one with the largest share of the difference in mean duration.
For checks that hold sessions (mode: session): drops per session-hour with an exact
Poisson 95% interval, compared with the E-test of two Poisson rates; reconnect time (drop
to logged in again) and keepalive round trip compared with Mann-Whitney U on their
buckets. The statistics are scipy.stats' (pip install 'loginprobe[compare]').
A difference is called significant at p < 0.05; with more than two groups every pair is
tested, with no correction for the number of pairs.

exit status: 0 report printed (whether or not the groups differ), 1 no attempts in the
range for this selection, 2 usage error, Prometheus unreachable or a query refused.
"""


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
        raise CompareError(f"--start {iso(start)} is not before --end {iso(end)}")
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
                f"{iso(start)} and {iso(end)}",
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

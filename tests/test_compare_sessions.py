"""`loginprobe compare` on held sessions, against a real Prometheus with an hour of backfilled
session metrics: drops per session-hour with an exact interval, reconnect time and keepalive
round trip per network type, and whether they differ significantly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.prometheus import prometheus

SPAN = 3600
SCRAPE = 15
BUCKETS = ("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2", "5", "10", "20", "+Inf")


@dataclass(frozen=True)
class NetPath:
    network_type: str
    drops: int  # in the hour, evenly spread
    reconnect: float  # seconds from each drop to logged in again
    keepalive: float  # median round trip, seconds


PATHS = [NetPath("wifi", 2, 1.5, 0.03), NetPath("cellular", 24, 8.0, 0.15)]
CHECK = "xmpp-held"


def openmetrics(start: int) -> str:
    lines = []
    for family, kind in (("loginprobe_session_up", "gauge"),
                         ("loginprobe_session_drops", "counter"),
                         ("loginprobe_session_reconnect_duration_seconds", "histogram"),
                         ("loginprobe_keepalive_rtt_seconds", "histogram")):
        lines.append(f"# TYPE {family} {kind}")
        for p in PATHS:
            where = (f'check="{CHECK}",protocol="xmpp",target="xmpp://alice@xmpp.test",'
                     f'region="eu",carrier="",network_type="{p.network_type}"')
            agent = f'agent="phone-{p.network_type}"'
            for t in range(start, start + SPAN + 1, SCRAPE):
                elapsed = t - start
                drops = elapsed * p.drops // SPAN
                keepalives = elapsed // 30
                if family == "loginprobe_session_up":
                    lines.append(f"{family}{{{where},{agent}}} 1 {t}")
                elif family == "loginprobe_session_drops":
                    lines.append(f'{family}_total{{{where},{agent},reason="keepalive_timeout"}} '
                                 f"{drops} {t}")
                else:
                    reconnect = family.startswith("loginprobe_session_reconnect")
                    n = drops if reconnect else keepalives
                    # Keepalives: half at the median, a quarter each a step below and above.
                    values = ([p.reconnect] * n if reconnect else
                              [p.keepalive * f for i in range(n)
                               for f in ((0.5,), (1.0,), (1.0,), (2.0,))[i % 4]])
                    for le in BUCKETS:
                        inside = sum(1 for v in values if le == "+Inf" or v <= float(le))
                        lines.append(f'{family}_bucket{{{where},le="{le}"}} {inside} {t}')
                    lines.append(f"{family}_count{{{where}}} {n} {t}")
                    lines.append(f"{family}_sum{{{where}}} {sum(values)!r} {t}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Prom:
    url: str
    start: int
    end: int


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install the Debian package prometheus (scripts/setup)")
    root = tmp_path_factory.mktemp("prometheus")
    end = int(time.time()) // 60 * 60 - 120
    start = end - SPAN
    (root / "data.om").write_text(openmetrics(start))
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics",
                    str(root / "data.om"), str(root / "tsdb")], check=True, capture_output=True)
    with prometheus(root, [], "1m", storage=root / "tsdb") as url:
        yield Prom(url, start, end)


def compare(prom: Prom, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loginprobe.cli", "compare", "--prometheus", prom.url,
         "--start", str(prom.start), "--end", str(prom.end), *args],
        capture_output=True, text=True, timeout=60)


def test_drop_rate_reconnect_and_keepalive_per_network_type(prom: Prom) -> None:
    out = compare(prom, "--json")
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    [check] = report["checks"]
    assert check["check"] == CHECK
    groups = {g["group"]: g["sessions"] for g in check["groups"]}
    # One session per network type, up the whole hour: one session-hour each.
    for name, p in (("wifi", PATHS[0]), ("cellular", PATHS[1])):
        s = groups[name]
        assert s["session_hours"] == pytest.approx(1.0, abs=0.01)
        assert s["drops"] == pytest.approx(p.drops, abs=1)
        assert s["drops_by_reason"].keys() == {"keepalive_timeout"}
        lo, hi = s["drops_per_session_hour_ci95"]
        assert lo < s["drops_per_session_hour"] < hi
        assert s["reconnect_p50_seconds"] == pytest.approx(p.reconnect, rel=0.5)
    assert groups["wifi"]["drops_per_session_hour_ci95"][1] < groups["cellular"][
        "drops_per_session_hour_ci95"][0]
    [c] = check["comparisons"]
    assert c["significant"]
    assert c["drop_rate"]["test"] == "poisson_e_test" and c["drop_rate"]["p_value"] < 1e-3
    slower = c["a"] == "cellular"
    assert c["reconnect"]["p_value"] < 0.05
    assert (c["reconnect"]["prob_a_slower"] > 0.5) == slower
    assert c["keepalive"]["p_value"] < 0.05
    assert "sessions drop more often on cellular" in c["verdict"]
    assert "reconnects slower on cellular" in c["verdict"]
    assert "keepalives slower on cellular" in c["verdict"]


def test_table_shows_the_held_sessions(prom: Prom) -> None:
    out = compare(prom)
    assert out.returncode == 0, out.stderr
    assert f"held sessions of {CHECK}" in out.stdout
    assert "per session-h" in out.stdout and "Poisson E-test p=" in out.stdout

"""`loginprobe compare` against a real Prometheus holding backfilled data, plus its statistics."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.fleet import free_port
from devstack.prometheus import prometheus
from loginprobe.compare.cli import parse_duration
from loginprobe.compare.report import Group, Phase, compare_groups
from loginprobe.compare.stats import fisher_exact, mann_whitney_binned, wilson

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)
SPAN = 3600  # seconds of data
EVERY = 5  # seconds between attempts of one check on one path: 720 attempts an hour
SCRAPE = 15  # seconds between samples, as a collector scraped every 15 s would give
DEADLINE = 5.0  # a failed attempt stalls in tls until the deadline
GOLDEN = (math.sqrt(5) - 1) / 2  # low-discrepancy steps: evenly spread, no random seed


@dataclass(frozen=True)
class NetPath:
    """How one network path behaves: success rate and each phase's median latency."""

    network_type: str
    success: float
    medians: dict[str, float]
    offset: float  # where this path's deterministic sequence starts
    sigma: float = 0.4  # lognormal spread


WIFI = {"dns": 0.004, "tcp": 0.012, "tls": 0.025, "login": 0.030}
CELLULAR = {"dns": 0.006, "tcp": 0.030, "tls": 0.140, "login": 0.035}
DIFFERENT = (
    "xmpp-login",
    "xmpp",
    [NetPath("wifi", 0.99, WIFI, 0.0), NetPath("cellular", 0.85, CELLULAR, 0.3)],
)
# Both paths draw from one distribution; only the samples differ.
SAME = (
    "mqtt-login",
    "mqtt",
    [NetPath("wifi", 0.97, WIFI, 0.0), NetPath("cellular", 0.97, WIFI, 0.5)],
)


def attempts(path: NetPath, n: int) -> Iterator[tuple[bool, dict[str, float]]]:
    """n attempts whose outcomes and latencies follow the path's distributions exactly."""
    fail = 1 - path.success
    for i in range(n):
        # Failures evenly spread: attempt i fails where the expected failure count steps up.
        failed = math.floor((i + 1) * fail + path.offset) > math.floor(i * fail + path.offset)
        phases = {}
        for k, (name, median) in enumerate(path.medians.items()):
            u = (path.offset + (i + 1) * GOLDEN + k * 0.37) % 1.0
            phases[name] = median * math.exp(path.sigma * statistics.NormalDist().inv_cdf(u))
        if failed:  # the handshake stalls: tls runs to the deadline, login never starts
            phases["tls"] = DEADLINE
            del phases["login"]
        yield not failed, phases


def openmetrics(start: int, checks: list[tuple[str, str, list[NetPath]]]) -> str:
    """The contract's metrics as a collector scraped every SCRAPE seconds would hold them."""
    events: dict[str, list[tuple[float, float]]] = defaultdict(list)  # series -> (t, add)
    families: dict[str, list[str]] = defaultdict(list)

    def add(family: str, series: str, t: float, value: float) -> None:
        if series not in events:
            families[family].append(series)
        events[series].append((t, value))

    def hist(family: str, labels: str, t: float, seconds: float) -> None:
        for le in BUCKETS:
            bound = "+Inf" if le == math.inf else repr(le)
            add(family, f'{family}_bucket{{{labels},le="{bound}"}}', t, float(seconds <= le))
        add(family, f"{family}_sum{{{labels}}}", t, seconds)
        add(family, f"{family}_count{{{labels}}}", t, 1.0)

    for check, protocol, paths in checks:
        for path in paths:
            where = (
                f'check="{check}",protocol="{protocol}",target="{protocol}://probe@im.example",'
                f'region="eu-west",carrier="",network_type="{path.network_type}"'
            )
            agent = f'agent="phone-{path.network_type}"'
            outcome = {
                ok: f'loginprobe_attempts_total{{{where},{agent},result="{result}",reason="{why}"}}'
                for ok, result, why in ((True, "success", "ok"), (False, "failure", "tls_timeout"))
            }
            for i, (ok, phases) in enumerate(attempts(path, SPAN // EVERY)):
                t = start + EVERY / 2 + i * EVERY
                add("loginprobe_attempts", outcome[ok], t, 1.0)
                for phase, seconds in phases.items():
                    hist(
                        "loginprobe_phase_duration_seconds", f'{where},phase="{phase}"', t, seconds
                    )
                hist("loginprobe_duration_seconds", where, t, sum(phases.values()))

    lines = []
    for family, names in families.items():
        kind = "counter" if family.endswith("attempts") else "histogram"
        lines.append(f"# TYPE {family} {kind}")
        for series in names:
            pending = sorted(events[series])
            total, j = 0.0, 0
            for scrape in range(start, start + SPAN + 1, SCRAPE):  # every series from the start
                while j < len(pending) and pending[j][0] <= scrape:
                    total += pending[j][1]
                    j += 1
                lines.append(f"{series} {total!r} {scrape}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Prom:
    url: str
    start: int
    end: int


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    """A real Prometheus over a backfilled TSDB: an hour that ended two minutes ago."""
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install the Debian package prometheus (scripts/setup)")
    root = tmp_path_factory.mktemp("prometheus")
    end = int(time.time()) // 60 * 60 - 120
    start = end - SPAN
    (root / "data.om").write_text(openmetrics(start, [DIFFERENT, SAME]))
    subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(root / "data.om"),
            str(root / "tsdb"),
        ],
        check=True,
        capture_output=True,
    )
    with prometheus(root, [], "1m", storage=root / "tsdb") as url:  # scrapes nothing
        yield Prom(url, start, end)


def compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loginprobe.cli", "compare", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def compare_json(prom: Prom, *args: str) -> dict[str, Any]:
    out = compare(
        "--prometheus",
        prom.url,
        "--start",
        str(prom.start),
        "--end",
        str(prom.end),
        "--json",
        *args,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_cellular_worse_in_tls(prom: Prom) -> None:
    report = compare_json(prom, "--check", "xmpp-login")
    [check] = report["checks"]
    groups = {g["group"]: g for g in check["groups"]}
    assert groups["wifi"]["attempts"] == groups["cellular"]["attempts"] == SPAN // EVERY
    assert groups["wifi"]["success_rate"] == pytest.approx(0.99, abs=0.005)
    assert groups["cellular"]["success_rate"] == pytest.approx(0.85, abs=0.005)
    lo, hi = groups["cellular"]["success_rate_ci95"]
    assert lo < 0.85 < hi < groups["wifi"]["success_rate_ci95"][0]
    assert (
        groups["cellular"]["phases"]["tls"]["p95_seconds"]
        > groups["wifi"]["phases"]["tls"]["p95_seconds"]
    )
    [c] = check["comparisons"]
    assert (c["a"], c["b"]) == ("cellular", "wifi")
    assert c["significant"]
    assert c["success_rate"]["difference"] < 0
    assert c["success_rate"]["p_value"] < 0.01
    assert c["duration"]["p_value"] < 0.01
    assert c["duration"]["prob_a_slower"] > 0.5
    assert c["duration"]["difference_seconds"] > 0
    assert c["blamed_phase"] == "tls"
    assert c["phases"]["tls"]["p_value"] < 0.01
    assert c["phases"]["tls"]["share"] > 0.5


def test_same_distributions_no_significant_difference(prom: Prom) -> None:
    report = compare_json(prom, "--check", "mqtt-login")
    [c] = report["checks"][0]["comparisons"]
    assert not c["significant"]
    assert c["success_rate"]["p_value"] > 0.05
    assert c["duration"]["p_value"] > 0.05
    assert all(p["p_value"] > 0.05 for p in c["phases"].values())
    assert c["verdict"].startswith("no significant difference")


def test_table(prom: Prom) -> None:
    out = compare("--prometheus", prom.url, "--start", str(prom.start), "--end", str(prom.end))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "check mqtt-login" in text and "check xmpp-login" in text
    xmpp = text[text.index("check xmpp-login") :]
    assert "cellular vs wifi:\n    success rate lower on cellular: 85.0% vs 99.0%" in xmpp
    assert "\n    login slower on cellular: mean " in xmpp and "; tls accounts for " in xmpp
    mqtt = text[text.index("check mqtt-login") : text.index("check xmpp-login")]
    assert "cellular vs wifi:\n    no significant difference (success p=" in mqtt
    print(text)  # shown with pytest -s: the table as a user sees it


def test_one_group_has_nothing_to_compare(prom: Prom) -> None:
    out = compare(
        "--prometheus",
        prom.url,
        "--start",
        str(prom.start),
        "--end",
        str(prom.end),
        "--by",
        "region",
        "--check",
        "xmpp-login",
    )
    assert out.returncode == 0, out.stderr
    [row] = [line.split() for line in out.stdout.splitlines() if "eu-west" in line]
    assert row[:3] == ["eu-west", "1440", "92.0%"]
    assert "only one region here: nothing to compare" in out.stdout


def test_range_ends_now(prom: Prom) -> None:
    report = compare_json_range(prom, "2h")
    # The data starts inside this window, so increase() extrapolates it a little towards
    # the window's start, as it would in Grafana.
    attempts = report["checks"][0]["groups"][0]["attempts"]
    assert attempts == pytest.approx(SPAN // EVERY, rel=0.01)
    assert parse_duration("2h") == 7200


def compare_json_range(prom: Prom, rng: str) -> dict[str, Any]:
    out = compare("--prometheus", prom.url, "--range", rng, "--json", "--check", "xmpp-login")
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_png(prom: Prom, tmp_path: Path) -> None:
    png = tmp_path / "compare.png"
    out = compare(
        "--prometheus",
        prom.url,
        "--start",
        str(prom.start),
        "--end",
        str(prom.end),
        "--png",
        str(png),
    )
    assert out.returncode == 0, out.stderr
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_no_data_is_exit_1(prom: Prom) -> None:
    out = compare(
        "--prometheus",
        prom.url,
        "--start",
        str(prom.start),
        "--end",
        str(prom.end),
        "--check",
        "no-such-check",
    )
    assert out.returncode == 1
    assert "no attempts of check 'no-such-check'" in out.stderr
    assert out.stdout == ""


def test_unreachable_prometheus_is_exit_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = compare("--prometheus", url, "--range", "1h")
    assert out.returncode == 2
    assert f"loginprobe compare: cannot reach Prometheus at {url}: " in out.stderr
    assert "Connection refused" in out.stderr
    assert out.stdout == ""


def test_not_prometheus_or_bad_usage_is_exit_2(prom: Prom) -> None:
    out = compare("--prometheus", prom.url + "/nothing-here", "--range", "1h")
    assert out.returncode == 2
    assert "answered HTTP 404" in out.stderr and "base URL of a Prometheus" in out.stderr
    out = compare("--prometheus", "ftp://127.0.0.1", "--range", "1h")
    assert out.returncode == 2 and "expected http://HOST:PORT" in out.stderr
    out = compare("--prometheus", prom.url, "--range", "1h", "--start", "0")
    assert out.returncode == 2 and "give --start or --range, not both" in out.stderr
    out = compare("--prometheus", prom.url, "--range", "an hour")
    assert out.returncode == 2 and "expected a duration such as 30m" in out.stderr
    out = compare("--prometheus", prom.url, "--timeout", "-1")
    assert out.returncode == 2 and "expected seconds between 0 and 600" in out.stderr


# --- the statistics against values from textbooks and scipy ------------------------------


def test_wilson() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(99, 100)  # the Wald interval would claim up to 100.9%
    assert (lo, hi) == pytest.approx((0.9455138, 0.9982326), abs=1e-6)  # scipy's wilson
    assert wilson(0, 0) == (0.0, 1.0)


def test_fisher_exact() -> None:
    # The lady tasting tea; the rest checked with scipy.stats.fisher_exact.
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(0.485714, abs=1e-6)
    assert fisher_exact(3, 8, 1, 8) == pytest.approx(0.569231, abs=1e-6)
    assert fisher_exact(1, 10, 11, 14) == pytest.approx(0.0027594562, rel=1e-6)
    assert fisher_exact(713, 720, 612, 720) == pytest.approx(4.9485736e-26, rel=1e-5)
    assert fisher_exact(5, 5, 5, 5) == 1.0
    assert fisher_exact(0, 0, 5, 5) == 1.0


def test_mann_whitney_binned() -> None:
    # scipy.stats.mannwhitneyu([1..5], [6..10], method="asymptotic") p = 0.0121858
    result = mann_whitney_binned([1] * 5 + [0] * 5, [0] * 5 + [1] * 5)
    assert result == pytest.approx((0.0121858, 0.0), abs=1e-6)
    # Heavy ties: x = [1,1,2,2,2,3], y = [2,3,3,3,4] -> scipy p = 0.0438374 (tie-corrected)
    result = mann_whitney_binned([2, 3, 1, 0], [0, 1, 3, 1])
    assert result == pytest.approx((0.0438374, 4 / 30), abs=1e-6)
    assert mann_whitney_binned([3, 0], [5, 0]) == (1.0, 0.5)  # one bucket: nothing to tell
    assert mann_whitney_binned([0, 0], [1, 2]) is None


def _group(name: str, means_ms: dict[str, float]) -> Group:
    phases = {p: Phase(count=100, total=ms / 1000 * 100) for p, ms in means_ms.items()}
    return Group(name, successes=100, phases=phases)


def test_blame_goes_to_the_phase_with_the_largest_share() -> None:
    slow = _group("cellular", {"dns": 5, "tcp": 40, "tls": 130, "login": 30})
    fast = _group("wifi", {"dns": 4, "tcp": 20, "tls": 30, "login": 31})
    c = compare_groups(slow, fast)
    assert c.duration_diff == pytest.approx(0.120)
    assert c.blamed_phase == "tls"
    assert c.share("tls") == pytest.approx(100 / 120)
    # Seen from the faster side the difference is negative and the blame the same.
    assert compare_groups(fast, slow).blamed_phase == "tls"
    assert compare_groups(fast, fast).blamed_phase is None  # no difference to explain

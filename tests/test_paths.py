"""One agent probing through two network paths, a clean and a slow lossy veth link into a
namespace of real servers, with a real collector and Prometheus, judged by `loginprobe
compare` (root: namespaces, tc, nftables)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for
from devstack.netns import MQTTS_PORT, Link, TwoLinks
from devstack.prometheus import prometheus, query
from devstack.servers import PASSWORD, USER

# Short enough for a test of a minute per run, long enough for every attempt on the clean
# link: a run can never outlast its interval, so the timeout is the interval.
INTERVAL = "0.5s"
ATTEMPTS = 70  # per path and run: plenty for a difference this large, and for a null
PASSWORD_ENV = "LOGINPROBE_PATHS_TEST_PW"
# The flaky link. The bandwidth makes TLS, whose ~4 kB certificate flight waits behind
# tbf, about 300 ms slower on every attempt that gets that far. The drops make a lost UDP
# query cost the dns phase the rest of the deadline, and a lost SYN or segment cost tcp,
# tls or login a retransmission timeout. Seen here, mean growth cellular minus wifi over
# 60-70 paired attempts: at 96kbit and 5 % tls +0.31 to +0.32 s, login +0.12 to +0.15,
# dns +0.08 to +0.14, tcp +0.02 to +0.06 (compare: tls 52-54 % of the difference,
# p < 1e-19). At 15 % drops dns caught up with tls (+0.30 s each): a coin toss.
CELLULAR_RATE, CELLULAR_DROP_PERCENT = "96kbit", 5
CARRIERS = {"wifi": "home-isp", "cellular": "mobile-co"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoLinks]:
    with TwoLinks() as links:
        links.start_servers(tmp_path_factory.mktemp("netns"))
        yield links


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collector, str, str]]:
    """A collector that knows one agent by its token, and a Prometheus scraping it each
    second: (collector, the agent's token, Prometheus's URL)."""
    folder = tmp_path_factory.mktemp("stack")
    token, digest = new_token()
    settings = collector_config(folder / "c", pki=None,
                                agents=[{"id": "probe-1", "token_sha256": digest}])
    collector = Collector(folder / "c", settings).start_healthy()
    try:
        with prometheus(folder / "prom", [str(settings["metrics_listen"])]) as url:
            yield collector, token, url
    finally:
        collector.stop()


def paths(net: TwoLinks) -> list[dict[str, Any]]:
    """The agent's two paths: each bound to its veth, with the namespace's resolver (which
    only answers mqtt.test usably to a query that left by the path's own link)."""
    out = []
    for link in (net.wifi, net.cellular):
        labels: dict[str, Any] = {"network_type": link.name, "carrier": CARRIERS[link.name]}
        if link.name == "cellular":
            labels["asn"] = 64500
        out.append({"name": link.name, "interface": link.ifname,
                    "resolver": f"{net.service}:53", "labels": labels})
    return out


def run_agent(net: TwoLinks, stack: tuple[Collector, str, str], folder: Path,
              check: str) -> tuple[float, dict[str, list[dict[str, Any]]]]:
    """Runs the agent with check until each path has ATTEMPTS results at the collector and
    Prometheus has scraped them all; returns when it started and the results by path."""
    collector, token, prom = stack
    agent = Agent(folder, collector, token=token, labels={"region": "lab"}, paths=paths(net),
                  checks=[{"name": check, "url": f"mqtts://{USER}@mqtt.test:{MQTTS_PORT}",
                           "interval": INTERVAL, "timeout": INTERVAL,
                           "password_env": PASSWORD_ENV, "ca_file": str(net.ca_file)}])

    def by_path() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in collector.results():
            if line["check"] == check:
                out[line["result"]["network"]["path"]].append(line["result"])
        return out

    started = time.time()
    agent.start()
    try:
        wait_for(f"{ATTEMPTS} results of {check} on each path",
                 lambda: min((len(v) for v in by_path().values()), default=0) >= ATTEMPTS
                 and len(by_path()) == 2, 120)
        assert agent.stop() == 0, agent.output()
    finally:
        agent.kill()
    results = by_path()
    total = sum(len(v) for v in results.values())

    def scraped() -> float:
        return sum(v for _, v in query(prom, f'loginprobe_attempts_total{{check="{check}"}}'))

    wait_for("Prometheus to scrape every result", lambda: scraped() == total, 15)
    return started, results


def compare(prom: str, check: str, start: float) -> dict[str, Any]:
    """The real CLI, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "loginprobe.cli", "compare", "--prometheus", prom,
         "--by", "network_type", "--check", check, "--start", f"{start - 5:.0f}",
         "--end", f"{time.time():.0f}", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    (only,) = report["checks"]
    (comparison,) = only["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("cellular", "wifi")
    return {"groups": {g["group"]: g for g in only["groups"]}, **comparison}


def assert_labelled(net: TwoLinks, prom: str, check: str,
                    results: dict[str, list[dict[str, Any]]]) -> None:
    """Every result names its path, interface, source address and network type, and its
    DNS left by its own link (the address unbound gave is that link's); the metrics carry
    each path's network type and carrier."""
    links: dict[str, Link] = {"wifi": net.wifi, "cellular": net.cellular}
    assert set(results) == set(links)
    for name, link in links.items():
        for r in results[name]:
            n = r["network"]
            assert (n["interface"], n["network_type"], n["carrier"]) == (
                link.ifname, name, CARRIERS[name])
            assert n["asn"] == (64500 if name == "cellular" else None)
            assert r["resolved_address"] in (link.server, None), r  # None: DNS failed
            if r["resolved_address"]:
                assert n["source_address"] == link.client
    series = query(prom, f'sum by (region, carrier, network_type) '
                         f'(loginprobe_attempts_total{{check="{check}"}})')
    assert sorted((s["network_type"], s["carrier"], s["region"]) for s, _ in series) == [
        ("cellular", "mobile-co", "lab"), ("wifi", "home-isp", "lab")]


def mean_growth(results: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Per phase, the cellular mean minus the wifi mean, straight from the results: what
    the phase blamed must agree with."""
    def mean(rs: list[dict[str, Any]], phase: str) -> float:
        d = [p["duration_seconds"] for r in rs for p in r["phases"] if p["name"] == phase]
        return sum(d) / len(d) if d else 0.0

    phases = ("dns", "tcp", "tls", "login")
    return {p: mean(results["cellular"], p) - mean(results["wifi"], p) for p in phases}


def test_a_slow_lossy_cellular_link_is_worse_and_tls_is_to_blame(
    net: TwoLinks, stack: tuple[Collector, str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    net.degrade(net.cellular, rate=CELLULAR_RATE, drop_percent=CELLULAR_DROP_PERCENT)
    try:
        started, results = run_agent(net, stack, tmp_path / "agent", "mqtt-flaky")
    finally:
        net.mend(net.cellular)
    prom = stack[2]
    assert_labelled(net, prom, "mqtt-flaky", results)
    c = compare(prom, "mqtt-flaky", started)
    wifi, cellular = c["groups"]["wifi"], c["groups"]["cellular"]
    assert cellular["success_rate"] < wifi["success_rate"], c["verdict"]
    assert c["success_rate"]["p_value"] < 0.001, c["verdict"]
    assert c["duration"]["prob_a_slower"] > 0.5 and c["duration"]["p_value"] < 0.001
    assert c["significant"]
    # The phase the shaping hurts, as the agent's own results show it, is the one blamed.
    growth = mean_growth(results)
    assert max(growth, key=lambda p: growth[p]) == "tls", growth
    assert c["blamed_phase"] == "tls", c["verdict"]
    assert c["phases"]["tls"]["p_value"] < 0.001, c["phases"]


def test_two_clean_links_show_no_significant_difference(
    net: TwoLinks, stack: tuple[Collector, str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    net.mend(net.cellular)
    started, results = run_agent(net, stack, tmp_path / "agent", "mqtt-clean")
    prom = stack[2]
    assert_labelled(net, prom, "mqtt-clean", results)
    c = compare(prom, "mqtt-clean", started)
    assert not c["significant"], c["verdict"]
    assert c["success_rate"]["p_value"] > 0.05 and c["duration"]["p_value"] > 0.05

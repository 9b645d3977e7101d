"""Held sessions on two network paths into a namespace: a clean link and one losing 5 % of
its packets, a real agent holding an MQTT session on each, a real collector and Prometheus,
and `loginprobe compare` reporting more drops (and slower keepalives) on the lossy path
(root: namespaces, tc or nftables)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for
from devstack.netns import MQTTS_PORT, TwoLinks
from devstack.prometheus import prometheus, query
from devstack.servers import PASSWORD, USER

PASSWORD_ENV = "LOGINPROBE_SESSION_PATHS_PW"
LOSS_PERCENT = 5
# A keepalive every 0.1 s, unanswered after 0.1 s: a lost segment's retransmission
# (Linux waits at least 200 ms) makes a keepalive late, so 5 % loss shows in a minute.
KEEPALIVE = "0.1s"
HOLD_SECONDS = 45.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoLinks]:
    with TwoLinks() as links:
        links.start_servers(tmp_path_factory.mktemp("netns"))
        yield links


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collector, str, str]]:
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


def test_the_lossy_path_drops_more_and_compare_says_so(
    net: TwoLinks, stack: tuple[Collector, str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    collector, token, prom = stack
    paths = [{"name": link.name, "interface": link.ifname, "resolver": f"{net.service}:53",
              "labels": {"network_type": link.name}} for link in (net.wifi, net.cellular)]
    agent = Agent(tmp_path / "agent", collector, token=token, labels={"region": "lab"},
                  paths=paths, checks=[{
                      "name": "mqtt-held", "url": f"mqtts://{USER}@mqtt.test:{MQTTS_PORT}",
                      "mode": "session", "keepalive": KEEPALIVE, "timeout": "5s",
                      "password_env": PASSWORD_ENV, "ca_file": str(net.ca_file)}])
    how = net.lossy(net.cellular, LOSS_PERCENT)
    started = time.time()
    try:
        agent.start()
        time.sleep(HOLD_SECONDS)
        assert agent.stop() == 0, agent.output()
    finally:
        agent.kill()
        net.mend(net.cellular)

    events: dict[str, list[dict[str, Any]]] = {"wifi": [], "cellular": []}
    for line in collector.results():
        if line["check"] == "mqtt-held":
            events[line["result"]["network"]["path"]].append(line)
    drops = {p: sum(1 for e in v if e["session"]["kind"] == "drop") for p, v in events.items()}
    assert drops["cellular"] >= drops["wifi"], (how, drops)
    assert all(e["session"]["kind"] == "login" for e in (events["wifi"][0],
                                                        events["cellular"][0]))

    rtts = sum(len(e["session"]["keepalive_rtt_ns"]) for v in events.values() for e in v)

    def scraped() -> tuple[float, float]:
        return (
            sum(v for _, v in query(prom, 'loginprobe_session_drops_total{check="mqtt-held"}')),
            sum(v for _, v in query(
                prom, 'loginprobe_keepalive_rtt_seconds_count{check="mqtt-held"}')))

    wait_for("Prometheus to scrape every drop and keepalive",
             lambda: scraped() == (sum(drops.values()), rtts), 15)
    done = subprocess.run(
        [sys.executable, "-m", "loginprobe.cli", "compare", "--prometheus", prom,
         "--by", "network_type", "--check", "mqtt-held", "--start", f"{started - 5:.0f}",
         "--end", f"{time.time() + 1:.0f}", "--json"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (check,) = json.loads(done.stdout)["checks"]
    groups = {g["group"]: g["sessions"] for g in check["groups"]}
    cellular, wifi = groups["cellular"], groups["wifi"]
    # Prometheus's increase() over 1 s scrapes: a drop within a second of the session's
    # first login (counters start at 0 there) can be missed; never one counted twice.
    for name, group in (("cellular", cellular), ("wifi", wifi)):
        assert drops[name] - 3 <= group["drops"] <= drops[name], (name, group, drops)
    assert cellular["drops_per_session_hour"] >= wifi["drops_per_session_hour"]
    assert cellular["keepalives"] > 0 and wifi["keepalives"] > 0, groups
    (c,) = check["comparisons"]
    assert (c["a"], c["b"]) == ("cellular", "wifi")
    # More drops, significantly so, or (where the link still answered in time) keepalives
    # significantly slower: the loss shows one way or the other, and compare says which.
    drops_differ = c["drop_rate"]["p_value"] < 0.05
    slower = c["keepalive"]["p_value"] is not None and c["keepalive"]["p_value"] < 0.05 \
        and c["keepalive"]["prob_a_slower"] > 0.5
    assert c["significant"] and (drops_differ or slower), json.dumps([c, groups])
    print(f"loss by {how}: drops {drops}; {c['verdict']}")

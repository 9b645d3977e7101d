"""Collector replicas seen by a real Prometheus: two collectors with one config, two agents
moving between them (restarted pointed at the other), every series scraped from both. The
shipped rules and plain sums across replicas must neither double nor lose a count: each
replica exports only the agents it serves (after one last read of a leaving agent's
counts) and shows a new counter at 0 first."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from devstack.fleet import ROOT, Agent, Collector, collector_config, new_token, wait_for
from devstack.prometheus import prometheus, query
from devstack.servers import Servers

RULES = ROOT / "grafana" / "rules" / "loginprobe.rules.yml"
CHECK = "http-replicas"
LABELS = {"region": "eu-west", "carrier": "carrier-a", "network_type": "wifi"}
STAY = 15.0  # seconds between moves


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[float]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=10) as r:
        body: dict[str, Any] = json.load(r)
    values = [float(v) for series in body["data"]["result"] for _, v in series["values"]]
    return values


def test_agents_moving_between_replicas_neither_double_nor_gap(
    servers: Servers, tmp_path: Path
) -> None:
    user = "probe-replicas"
    password = "Rep-" + secrets.token_hex(8)
    servers.set_http_password(user, password)
    (tmp_path / "good").write_text(password + "\n", encoding="utf-8")
    (tmp_path / "bad").write_text("not-" + password + "\n", encoding="utf-8")
    tokens = {name: new_token() for name in ("rep-a1", "rep-a2")}
    agents_config = [{"id": name, "token_sha256": digest, "labels": LABELS}
                     for name, (_, digest) in tokens.items()]
    checks = [{"name": CHECK, "url": f"http://{user}@127.0.0.1:{servers.http_port}/login",
               "interval": "1s", "timeout": "1s", "password_ref": "pw"}]
    collectors = [Collector(tmp_path / f"c{i}", collector_config(
        tmp_path / f"c{i}", pki=None, agents=agents_config, checks=checks))
        for i in (1, 2)]
    for c in collectors:
        c.start_healthy()
    # a1 logs in, a2 is refused: the path's failure ratio is 1/2 whatever moves where.
    secret = {"rep-a1": "good", "rep-a2": "bad"}
    running: dict[str, Agent] = {}

    def place(name: str, collector: Collector) -> None:
        if name in running:
            running[name].stop()
        agent = Agent(tmp_path / name, collector, token=tokens[name][0], labels=LABELS,
                      passwords={"pw": {"file": str(tmp_path / secret[name])}})
        running[name] = agent
        agent.start()

    sel = f'check="{CHECK}"'
    targets = [str(c.settings["metrics_listen"]) for c in collectors]
    try:
        with prometheus(tmp_path / "prom", targets, "1s", rule_files=(RULES,)) as url:
            started = time.time()
            place("rep-a1", collectors[0])
            place("rep-a2", collectors[0])
            time.sleep(STAY)
            place("rep-a2", collectors[1])  # a2 to c2
            time.sleep(STAY)
            place("rep-a2", collectors[0])  # a2 back to c1, a1 to c2
            place("rep-a1", collectors[1])
            time.sleep(STAY)
            # One series per agent and path across the replicas: the old one stopped
            # exporting the agent after the last read of its counts.
            per_instance = query(url, f"count by (instance, agent) (loginprobe_success{{{sel}}})")
            where = sorted((m["agent"], m["instance"]) for m, _ in per_instance)
            assert where == [("rep-a1", targets[1]), ("rep-a2", targets[0])], where
            ended = time.time()
            for agent in running.values():
                agent.stop()
            time.sleep(3)  # the collectors' last counts scraped

            received = sum(v for c in collectors for k, v in c.metrics().items()
                           if k.startswith("loginprobe_collector_results_received_total{"))
            window = f"{round(time.time() - started) + 10}s"
            # Every series starts at 0 for the scraper, so max - min is its whole count.
            exact = query(url, f"sum(max_over_time(loginprobe_attempts_total{{{sel}}}[{window}])"
                               f" - min_over_time(loginprobe_attempts_total{{{sel}}}[{window}]))")
            rates = query_range(url, f"sum(rate(loginprobe_attempts_total{{{sel}}}[10s]))",
                                started + 12, ended, 2)
            ratios = query_range(
                url, f'sum(rate(loginprobe_attempts_total{{{sel},result="failure"}}[10s]))'
                     f" / sum(rate(loginprobe_attempts_total{{{sel}}}[10s]))",
                started + 12, ended, 2)
            recorded = query(url, "check_region_carrier_network_type:"
                                  f"loginprobe_attempts_failure:ratio_rate5m{{{sel}}}")
            produced = sum(a.spooled()[0] for a in running.values())
            print(f"\nproduced {produced}, received by the two collectors {received:.0f}, "
                  f"counted in Prometheus {exact[0][1] if exact else None}")
            print(f"attempts/s over 10s, every 2s: min {min(rates):.2f} max {max(rates):.2f} "
                  f"(two agents at 1/s); failure ratio min {min(ratios):.2f} "
                  f"max {max(ratios):.2f}; recorded 5m ratio {recorded}")
            assert exact and exact[0][1] == received
            assert rates and all(1.0 <= r <= 3.0 for r in rates), rates
            assert all(0.25 <= r <= 0.75 for r in ratios), ratios  # restarts shift it a bit
            assert recorded and abs(recorded[0][1] - 0.5) < 0.1, recorded
            wait_for("both collectors running", lambda: all(c.running() for c in collectors))
    finally:
        for proc in (*running.values(), *collectors):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.stop()

"""A failure that happens once counts: counters a scraper has not read yet are shown to it
at 0 first, so rate() and increase() see their first increment; an agent's series go from a
collector that no longer serves it after each scraper read their final counts. In-process,
then end to end with a real agent, collector and Prometheus where exactly one attempt fails,
seen by increase() and by `loginprobe compare`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from devstack.fleet import ROOT, Agent, Collector, collector_config, new_token, wait_for
from devstack.prometheus import parse_render, prometheus, query
from devstack.servers import Servers
from loginprobe.collector.exporters.prometheus import ResultMetrics
from loginprobe.collector.ingest import FleetState, Ingest
from tests.test_exports import result

PROM = "127.0.0.1 Prometheus/2.42.0"


def scrape(metrics: ResultMetrics, scraper: str | None) -> dict[tuple[str, str], float]:
    """One read by that scraper: (agent, result) -> loginprobe_attempts_total, and
    ("*", "count") -> the summed loginprobe_duration_seconds_count."""
    samples = [s for m in parse_render(lambda om: metrics.render(om, scraper))
               for s in m.samples]
    out = {(s.labels["agent"], s.labels["result"]): s.value for s in samples
           if s.name == "loginprobe_attempts_total"}
    out["*", "count"] = sum(s.value for s in samples
                            if s.name == "loginprobe_duration_seconds_count")
    return out


def attempts(metrics: ResultMetrics, scraper: str | None) -> dict[tuple[str, str], float]:
    return {k: v for k, v in scrape(metrics, scraper).items() if k[0] != "*"}


def test_a_scraper_reads_each_counter_at_zero_first() -> None:
    fleet = FleetState(connected={"a1": {}})
    metrics = ResultMetrics(fleet)
    ingest = Ingest(fleet, [metrics])
    ingest.batch("a1", {}, [result(1, True, os.urandom(16))])
    assert scrape(metrics, PROM) == {("a1", "success"): 0, ("*", "count"): 0}
    assert scrape(metrics, PROM) == {("a1", "success"): 1, ("*", "count"): 1}
    # The first failure: a new (result, reason) series, at 0 once, then 1.
    ingest.batch("a1", {}, [result(2, False, os.urandom(16))])
    assert attempts(metrics, PROM) == {("a1", "success"): 1, ("a1", "failure"): 0}
    assert attempts(metrics, PROM) == {("a1", "success"): 1, ("a1", "failure"): 1}
    # Another scraper (an HA pair's second Prometheus) gets its own zero; a reader that is
    # no scraper reads plain counts.
    assert attempts(metrics, "127.0.0.2 Prometheus/2.42.0") == {
        ("a1", "success"): 0, ("a1", "failure"): 0}
    assert attempts(metrics, None) == {("a1", "success"): 1, ("a1", "failure"): 1}


def test_an_agent_that_left_is_read_once_more_then_not_again() -> None:
    fleet = FleetState(connected={"a1": {}, "a2": {}})
    metrics = ResultMetrics(fleet)
    ingest = Ingest(fleet, [metrics])
    ingest.batch("a1", {}, [result(1, True, os.urandom(16))])
    ingest.batch("a2", {}, [result(1, True, os.urandom(16))])
    attempts(metrics, PROM)
    ingest.batch("a1", {}, [result(2, True, os.urandom(16))])
    del fleet.connected["a1"]  # its stream went to another replica
    # The final count of a1 once; a2 as ever.
    assert attempts(metrics, PROM) == {("a1", "success"): 2, ("a2", "success"): 1}
    assert attempts(metrics, PROM) == {("a2", "success"): 1}
    assert attempts(metrics, None)[("a1", "success")] == 2  # still held here
    # A failure shown at 0 in the scrape after the agent left is shown again with its count.
    fleet.connected["a1"] = {}
    ingest.batch("a1", {}, [result(3, False, os.urandom(16))])
    del fleet.connected["a1"]
    assert attempts(metrics, PROM)[("a1", "failure")] == 0
    assert attempts(metrics, PROM)[("a1", "failure")] == 1
    assert ("a1", "failure") not in attempts(metrics, PROM)
    # Back here: its counters go on from where they were.
    fleet.connected["a1"] = {}
    assert attempts(metrics, PROM)[("a1", "success")] == 2


def test_exactly_one_failed_attempt_shows_in_increase_and_compare(
    servers: Servers, tmp_path: Path
) -> None:
    user, check = "probe-once", "http-once"
    password = "Once-" + secrets.token_hex(8)
    servers.set_http_password(user, password)
    (tmp_path / "pw").write_text(password + "\n", encoding="utf-8")
    token, digest = new_token()
    labels = {"region": "eu-west", "carrier": "carrier-b", "network_type": "cellular"}
    settings = collector_config(
        tmp_path / "c", pki=None, agents=[{"id": "once-1", "token_sha256": digest}],
        checks=[{"name": check, "url": f"http://{user}@127.0.0.1:{servers.http_port}/login",
                 "interval": "3s", "timeout": "2s", "password_ref": "pw"}])
    collector = Collector(tmp_path / "c", settings).start_healthy()
    agent = Agent(tmp_path / "a", collector, token=token, labels=labels,
                  passwords={"pw": {"file": str(tmp_path / "pw")}})
    sel = f'check="{check}"'

    def count(outcome: str) -> float:
        return sum(v for k, v in collector.metrics().items()
                   if k.startswith("loginprobe_attempts_total{") and sel in k
                   and f'result="{outcome}"' in k)

    try:
        agent.start()
        with prometheus(tmp_path / "prom", [str(settings["metrics_listen"])], "1s") as url:
            wait_for("two successes", lambda: count("success") >= 2, 30)
            started = time.time()
            servers.set_http_password(user, "changed-" + secrets.token_hex(8))
            wait_for("the failure", lambda: count("failure") >= 1, 10)
            servers.set_http_password(user, password)  # well within the 3 s interval
            wait_for("a success after it", lambda: count("success") >= 3 + 1, 15)
            assert count("failure") == 1  # exactly one attempt failed
            time.sleep(3)  # a few scrapes
            window = f"{round(time.time() - started) + 30}s"
            inc = query(url, f'sum(increase(loginprobe_attempts_total{{{sel},'
                             f'result="failure"}}[{window}]))')
            print(f"\nincrease() of failures over {window}: {inc}")
            assert inc and round(inc[0][1]) == 1, inc
            out = subprocess.run(
                [sys.executable, "-m", "loginprobe.cli", "compare", "--prometheus", url,
                 "--range", window, "--check", check, "--json"],
                capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
            assert out.returncode == 0, out.stderr
            report = json.loads(out.stdout)
            print(json.dumps(report)[:600])
            groups = [g for c in report["checks"] for g in c["groups"]]
            assert [g["attempts"] - g["successes"] for g in groups] == [1], groups
            assert groups[0]["success_rate"] < 1.0
    finally:
        for proc in (agent, collector):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.stop()

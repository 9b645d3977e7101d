"""End to end with real processes: two agents probe a real MQTT login on the servers, stream to
a real collector (TLS, bearer tokens), a real Prometheus scrapes it every second with
grafana/rules/loginprobe.rules.yml loaded as is, the agents checking every 15 s. The
account's password is changed on the broker; LoginDown and LoginFailureRateHigh must reach
`firing`, the latter naming auth_rejected / account, and resolve once the password is back;
the time from the break to each alert's firing is printed (LoginDown's target: under 45 s).
Every dashboard query runs against that Prometheus meanwhile.

Slow on purpose (~8 minutes): the rule's 5m window and `for: 1m` are what is under test."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.certs import PKI
from devstack.fleet import ROOT, Agent, Collector, collector_config, new_token, wait_for
from devstack.prometheus import alerts, prometheus, query
from devstack.servers import Servers
from tests.test_dashboards import Query, panel_queries, substitute, variable_queries

RULES = ROOT / "grafana" / "rules" / "loginprobe.rules.yml"
ALERT = "LoginFailureRateHigh"
DOWN = "LoginDown"
INTERVAL = "15s"  # the check interval the alerts' speed is measured at
CHECK = "mqtt-e2e"
USER = "probe-e2e"  # an account of its own, so the shared servers' alice is never broken
# Both agents on the same path: the alert wants >= 2 agents agreeing.
LABELS = {"region": "eu-west", "carrier": "carrier-a", "network_type": "wifi"}
# Healthy data before the break. 90 s keeps the test near 7 minutes; the failures then
# outweigh 20% of the window sooner than after a full 5m of successes (a deployment's steady
# state), so LOGINPROBE_E2E_WARMUP=300 measures that case (a 12-minute run).
WARMUP = float(os.environ.get("LOGINPROBE_E2E_WARMUP", "90"))
FIRE_TIMEOUT = 240.0
# Failures leave the 5m window ~4 minutes after the restore (20% of it may still fail).
RESOLVE_TIMEOUT = 330.0
# Panels this stack's data must fill: success, attempts, phases, fleet, collector intake.
MUST_FILL = (
    "loginprobe_success",
    "loginprobe_attempts_total",
    "loginprobe_phase_duration_seconds_bucket",
    "loginprobe_agent_connected",
    "loginprobe_collector_results_received_total",
)


def poll(what: str, found: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """found() until it returns something truthy; modest polling, the machine is shared."""
    deadline = time.monotonic() + timeout
    while True:
        got = found()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def alert_for_check(url: str, state: str, name: str = ALERT) -> dict[str, Any] | None:
    for a in alerts(url):
        if a["labels"].get("alertname") == name and a["labels"].get("check") == CHECK \
                and a["state"] == state:
            return a
    return None


def dashboard_queries(url: str) -> tuple[list[str], list[str]]:
    """Every dashboard panel and variable query, run now: (filled, empty) by where. A query
    that does not parse fails here."""
    filled: list[str] = []
    empty: list[str] = []
    for q in panel_queries() + variable_queries():
        # The dashboard test's data names its single check xmpp-alice; this stack has CHECK.
        values = {k: CHECK if v == "xmpp-alice" else v for k, v in q.variables.items()}
        expr = substitute(Query(q.where, q.expr, values))
        if expr.startswith("label_values("):
            # A Grafana variable, not PromQL: label_values(SELECTOR, LABEL) is the series API.
            selector = expr.removeprefix("label_values(").rsplit(",", 1)[0]
            params = urllib.parse.urlencode({"match[]": selector})
            with urllib.request.urlopen(f"{url}/api/v1/series?{params}", timeout=10) as r:
                body: dict[str, Any] = json.load(r)
            assert body["status"] == "success", (q.where, body)
            (filled if body["data"] else empty).append(q.where)
            continue
        data = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query", data=data, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            pytest.fail(f"{q.where}: {expr}\n{e.read().decode()}")
        assert body["status"] == "success", (q.where, body)
        (filled if body["data"]["result"] else empty).append(f"{q.where}: {q.expr}")
    return filled, empty


@pytest.mark.timeout(570 + WARMUP)
def test_a_broken_login_fires_the_failure_rate_alert_and_it_resolves(
    servers: Servers, tmp_path: Path
) -> None:
    password = "E2e-" + secrets.token_hex(8)
    servers.set_mqtt_password(USER, password)
    (tmp_path / "mqtt.password").write_text(password + "\n", encoding="utf-8")
    (tmp_path / "mqtt.password").chmod(0o600)
    pki = PKI(tmp_path / "pki")
    tokens = {f"e2e-agent-{i}": new_token() for i in (1, 2)}
    settings = collector_config(
        tmp_path / "c", pki=pki,
        agents=[{"id": name, "token_sha256": digest, "labels": LABELS}
                for name, (_, digest) in tokens.items()],
        # 15 s: 20 attempts per agent in 5m, above the rule's 10 for the two together.
        checks=[{"name": CHECK, "url": f"mqtts://{USER}@mqtt.test:{servers.mqtts_port}",
                 "interval": INTERVAL, "timeout": "5s", "password_ref": "mqtt",
                 "ca_file": str(servers.ca_file), "resolver": servers.resolver}],
    )
    collector = Collector(tmp_path / "c", settings, pki).start_healthy()
    agents = [Agent(tmp_path / name, collector, token=token, labels=LABELS,
                    passwords={"mqtt": {"file": str(tmp_path / "mqtt.password")}})
              for name, (token, _) in tokens.items()]
    try:
        for agent in agents:
            agent.start()
        with prometheus(tmp_path / "prom", [str(settings["metrics_listen"])], "1s",
                        rule_files=(RULES,),
                        jobs={"loginprobe-agent": [a.listen for a in agents]}) as url:
            ok = f'loginprobe_attempts_total{{check="{CHECK}",result="success"}}'
            poll("both agents' successes in Prometheus", lambda: len(query(url, ok)) == 2, 60)
            time.sleep(WARMUP)
            assert alert_for_check(url, "pending") is None
            assert alert_for_check(url, "firing") is None

            assert alert_for_check(url, "firing", DOWN) is None

            broken_at = time.monotonic()
            servers.set_mqtt_password(USER, "changed-" + secrets.token_hex(8))
            fired: dict[str, float] = {}

            def both_fired() -> dict[str, Any] | None:
                for name in (DOWN, ALERT):
                    if name not in fired and alert_for_check(url, "firing", name):
                        fired[name] = time.monotonic() - broken_at
                return alert_for_check(url, "firing") if len(fired) == 2 else None

            firing = poll(f"{DOWN} and {ALERT} firing", both_fired, FIRE_TIMEOUT)
            to_fire = fired[ALERT]
            servers.set_mqtt_password(USER, password)
            restored_at = time.monotonic()
            notes = firing["annotations"]
            assert (notes["reason"], notes["step"]) == ("auth_rejected", "account"), notes
            assert {firing["labels"][k] for k in LABELS} == set(LABELS.values())
            print(f"\nchecks every {INTERVAL}, scraped every 1 s, after {WARMUP:.0f} s of "
                  f"successes: {DOWN} firing {fired[DOWN]:.0f} s after the password change "
                  f"(target < 45 s), {ALERT} {to_fire:.0f} s (pending since "
                  f"{firing['activeAt']})")
            print(f"summary: {notes['summary']}")

            # The richest moment for the dashboards: successes, failures, both agents.
            filled, empty = dashboard_queries(url)
            for metric in MUST_FILL:
                assert any(metric in where for where in filled), (metric, empty)
            print(f"dashboards: {len(filled)} queries returned data, {len(empty)} empty:")
            for where in empty:
                print(f"  empty: {where.splitlines()[0][:140]}")

            poll(f"{DOWN} to resolve", lambda: alert_for_check(url, "firing", DOWN) is None,
                 60, every=1.0)
            print(f"{DOWN} resolved {time.monotonic() - restored_at:.0f} s after the password "
                  "was restored")
            poll(f"{ALERT} to resolve", lambda: alert_for_check(url, "firing") is None
                 and alert_for_check(url, "pending") is None, RESOLVE_TIMEOUT, every=2.0)
            to_resolve = time.monotonic() - restored_at
            print(f"{ALERT} resolved {to_resolve:.0f} s after the password was restored")
            wait_for("successes again", lambda: query(
                url, f'loginprobe_success{{check="{CHECK}"}} == 1') != [], 10)
    finally:
        servers.set_mqtt_password(USER, password)
        for proc in (*agents, collector):
            with contextlib.suppress(subprocess.TimeoutExpired):  # stop() killed it then
                proc.stop()
    assert password not in collector.output()

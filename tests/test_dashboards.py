"""The Grafana dashboards and provisioning files under grafana/: generated from
grafana/dashboards.py, laid out as Grafana loads them, using only contract metrics, and every
panel, variable and alert query run through a real Prometheus whose storage is backfilled
(promtool tsdb create-blocks-from openmetrics) with two hours of contract-shaped series,
so each panel query must not only parse but return data."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from loginprobe.contract import Reason

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"
DATASOURCE_UID = "loginprobe-prometheus"

# CONTRACT.md section 4: metric -> labels. Histograms add le on _bucket.
CONTRACT: dict[str, tuple[str, ...]] = {
    "loginprobe_attempts_total": ("check", "protocol", "target", "agent", "region", "carrier",
                                  "network_type", "result", "reason"),
    "loginprobe_success": ("check", "protocol", "target", "agent", "region", "carrier",
                           "network_type"),
    "loginprobe_phase_duration_seconds": ("check", "protocol", "target", "region", "carrier",
                                          "network_type", "phase"),
    "loginprobe_duration_seconds": ("check", "protocol", "target", "region", "carrier",
                                    "network_type"),
    "loginprobe_tls_cert_not_after_timestamp_seconds": ("check", "target", "agent"),
    "loginprobe_agent_connected": ("agent", "region", "carrier", "network_type"),
    "loginprobe_agent_last_result_timestamp_seconds": ("agent",),
    "loginprobe_collector_results_received_total": ("agent",),
    "loginprobe_collector_results_duplicate_total": ("agent",),
    "loginprobe_collector_results_rejected_total": ("reason",),
    # section 6, held sessions
    "loginprobe_session_up": ("check", "protocol", "target", "agent", "region", "carrier",
                              "network_type"),
    "loginprobe_session_drops_total": ("check", "protocol", "target", "agent", "region",
                                       "carrier", "network_type", "reason"),
    "loginprobe_session_reconnect_duration_seconds": ("check", "protocol", "target", "region",
                                                      "carrier", "network_type"),
    "loginprobe_keepalive_rtt_seconds": ("check", "protocol", "target", "region", "carrier",
                                         "network_type"),
}
HISTOGRAMS = ("loginprobe_phase_duration_seconds", "loginprobe_duration_seconds",
              "loginprobe_session_reconnect_duration_seconds", "loginprobe_keepalive_rtt_seconds")
# The agent's own /metrics (agent/health.py), scraped per agent: labels come from the
# scrape (instance, job) and the metric itself.
AGENT_METRICS: dict[str, tuple[str, ...]] = {
    "loginprobe_agent_results_dropped_total": ("instance", "job", "reason"),
    "loginprobe_agent_spool_results": ("instance", "job"),
    "loginprobe_agent_spool_oldest_age_seconds": ("instance", "job"),
}


def series_labels() -> dict[str, tuple[str, ...]]:
    """Every series name a dashboard may use, with the labels it may filter on."""
    out = dict(CONTRACT)
    for h in HISTOGRAMS:
        labels = out.pop(h)
        out[f"{h}_bucket"] = (*labels, "le")
        out[f"{h}_sum"] = labels
        out[f"{h}_count"] = labels
    # The agent's own loginprobe_agent_connected has no agent label, only the scrape's.
    out["loginprobe_agent_connected"] = (*out["loginprobe_agent_connected"], "instance", "job")
    return {**out, **AGENT_METRICS}


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARD_FILES}


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    variables: dict[str, str]


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """What each variable stands for when a user opens the dashboard: All is `.*`, a
    single check is one the test data has, a custom variable its default."""
    values = {"__rate_interval": "4m", "__interval": "1m", "__range": "1h"}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        if var["type"] == "custom":
            values[var["name"]] = var["current"]["value"]
        elif var.get("includeAll"):
            values[var["name"]] = var["allValue"]
        else:
            values[var["name"]] = "xmpp-alice"
    return values


def panel_queries() -> list[Query]:
    out = []
    for name, dashboard in load_dashboards().items():
        values = variable_values(dashboard)
        for panel in panels_of(dashboard):
            for t in panel.get("targets", []):
                out.append(Query(f"{name} / {panel['title']} / {t['refId']}", t["expr"], values))
    return out


def variable_queries() -> list[Query]:
    out = []
    for name, dashboard in load_dashboards().items():
        values = variable_values(dashboard)
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                out.append(Query(f"{name} / ${var['name']}", var["definition"], values))
    return out


def grafana_alert_queries() -> list[Query]:
    doc = yaml.safe_load((PROVISIONING / "alerting" / "loginprobe.yaml").read_text("utf-8"))
    return [Query(f"{r['title']} / {d['refId']}", d["model"]["expr"], {})
            for g in doc["groups"] for r in g["rules"] for d in r["data"]
            if d["datasourceUid"] != "__expr__"]


def substitute(q: Query) -> str:
    """Grafana's $var and ${var} replaced; an unknown variable fails the test."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in q.variables, f"{q.where}: undefined variable ${name}"
        return q.variables[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, q.expr)


def selectors(expr: str) -> list[tuple[str, list[str]]]:
    """(series name, label names matched) for every loginprobe_* selector in expr."""
    out = []
    for m in re.finditer(r"\b(loginprobe_[a-z0-9_]+)(\{([^}]*)\})?", expr):
        matchers = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(3) or "")
        out.append((m.group(1), matchers))
    return out


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- static checks ---------------------------------------------------------------------


def test_dashboards_are_what_the_generator_writes() -> None:
    rendered: dict[str, str] = load_generator().render()
    assert sorted(rendered) == [p.name for p in DASHBOARD_FILES]
    for path in DASHBOARD_FILES:
        assert path.read_text(encoding="utf-8") == rendered[path.name], (
            f"{path.name} is stale: run python grafana/dashboards.py")


def test_dashboards_load_as_grafana_expects() -> None:
    dashboards = load_dashboards()
    assert len(dashboards) == 4
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, d in dashboards.items():
        assert d["schemaVersion"] >= 36, name
        assert d["id"] is None, name  # provisioning assigns ids
        variables = {v["name"]: v for v in d["templating"]["list"]}
        ds = variables["datasource"]
        assert (ds["type"], ds["query"]) == ("datasource", "prometheus"), name
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert re.fullmatch(r"label_values\(loginprobe_\w+(\{.*\})?, \w+\)",
                                    v["definition"]), v["definition"]
        ids = [p["id"] for p in panels_of(d)]
        assert len(set(ids)) == len(ids), name
        for p in panels_of(d):
            assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", p["title"]
    by_uid = {d["uid"]: d for d in dashboards.values()}
    path_vars = {"check", "region", "carrier", "network_type"}
    for uid in ("loginprobe-overview", "loginprobe-check"):
        assert path_vars <= {v["name"] for v in by_uid[uid]["templating"]["list"]}, uid


def test_dashboards_use_only_contract_and_agent_metrics() -> None:
    allowed = series_labels()
    seen = set()
    for q in panel_queries() + variable_queries():
        for name, labels in selectors(q.expr):
            assert name in allowed, f"{q.where}: {name} is not in the contract"
            assert set(labels) <= set(allowed[name]), f"{q.where}: {name} has no {labels}"
            seen.add(name)
    assert {"loginprobe_attempts_total", "loginprobe_phase_duration_seconds_bucket",
            "loginprobe_agent_results_dropped_total"} <= seen


def test_agent_metrics_are_the_agents_own() -> None:
    """The fleet dashboard's agent-side metrics exist in agent/health.py (a counter's
    family there is named without _total)."""
    source = (ROOT / "loginprobe" / "agent" / "health.py").read_text(encoding="utf-8")
    for name in AGENT_METRICS:
        assert f'"{name.removesuffix("_total")}"' in source, name


@pytest.mark.parametrize("reason", list(Reason))
def test_step_labels_follow_the_reason_table(reason: Reason) -> None:
    """Every label_replace(..., "step", STEP, "reason", REGEX) in the dashboards maps each
    reason code to its step from loginprobe/contract.py, and only that one."""
    tables = set()
    for q in panel_queries():
        found = re.findall(r'"step", "(\w+)", "reason", "([^"]+)"', q.expr)
        if found:
            tables.add(tuple(found))
    assert len(tables) == 1, "the dashboards disagree on the reason -> step table"
    (table,) = tables
    steps = [step for step, regex in table if re.fullmatch(regex, reason.value)]
    assert steps == [reason.step.value]


# --- provisioning ----------------------------------------------------------------------


def test_provisioning_files_fit_together() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text("utf-8"))
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", DATASOURCE_UID)
    assert urllib.parse.urlsplit(source["url"]).hostname == "127.0.0.1"

    prov = yaml.safe_load((PROVISIONING / "dashboards" / "loginprobe.yaml").read_text("utf-8"))
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert DASHBOARD_FILES, "the folder the provider loads is empty"

    alerting = yaml.safe_load((PROVISIONING / "alerting" / "loginprobe.yaml").read_text("utf-8"))
    assert alerting["apiVersion"] == 1
    panels = {d["uid"]: {p["id"] for p in panels_of(d)} for d in load_dashboards().values()}
    uids = set()
    for group in alerting["groups"]:
        assert group["folder"] == provider["folder"]
        assert int(group["interval"].rstrip("sm")) % 10 == 0 or group["interval"].endswith("m")
        for rule in group["rules"]:
            uids.add(rule["uid"])
            refs = {d["refId"] for d in rule["data"]}
            assert rule["condition"] in refs, rule["title"]
            for d in rule["data"]:
                assert d["model"]["refId"] == d["refId"], rule["title"]
                if d["datasourceUid"] == "__expr__":
                    assert d["model"]["expression"] in refs, rule["title"]
                else:
                    assert d["datasourceUid"] == DATASOURCE_UID, rule["title"]
                    assert d["model"]["datasource"]["uid"] == DATASOURCE_UID, rule["title"]
            notes = rule["annotations"]
            dash = notes["__dashboardUid__"]
            assert dash in panels, rule["title"]
            assert int(notes["__panelId__"]) in panels[dash], rule["title"]
    assert len(uids) == sum(len(g["rules"]) for g in alerting["groups"])


# --- a real Prometheus with backfilled data --------------------------------------------

STEP = 60  # seconds between samples
HOURS = 2
PATHS = [  # region, carrier, network_type, agents
    ("eu", "vodafone", "wifi", ("eu-wifi-1", "eu-wifi-2")),
    ("eu", "vodafone", "cellular", ("eu-cell-1", "eu-cell-2")),
    ("us", "att", "cellular", ("us-cell-1", "us-cell-2")),
]
CHECKS = [("xmpp-alice", "xmpp", "xmpp://alice@xmpp.test"),
          ("mqtt-bob", "mqtts", "mqtts://bob@mqtt.test")]
BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf")
PHASES = {"dns": 0.004, "tcp": 0.02, "tls": 0.06, "login": 0.12}


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"


def openmetrics(end: int) -> str:
    """Two hours of what a collector and three agents' /metrics would show: two checks on
    three network paths, two agents each; mqtt-bob fails on us/att/cellular (auth_rejected)
    and xmpp-alice loses one attempt in eight to tcp_timeout on cellular (below the 20%
    alert threshold)."""
    lines = []
    start = end - HOURS * 3600
    for i, t in enumerate(range(start, end + 1, STEP)):
        for region, carrier, net, agents in PATHS:
            slow = 3.0 if net == "cellular" else 1.0
            for check, protocol, target in CHECKS:
                path = {"check": check, "protocol": protocol, "target": target,
                        "region": region, "carrier": carrier, "network_type": net}
                broken = check == "mqtt-bob" and region == "us"
                for agent in agents:
                    a = {**path, "agent": agent}
                    ok, fails = (0, {"auth_rejected": 4}) if broken else (
                        (7, {"tcp_timeout": 1}) if net == "cellular" and check == "xmpp-alice"
                        else (4, {}))
                    lines.append(f"loginprobe_attempts_total"
                                 f"{_labels(**a, result='success', reason='ok')} {ok * i} {t}")
                    for reason, n in fails.items():
                        lines.append(f"loginprobe_attempts_total"
                                     f"{_labels(**a, result='failure', reason=reason)} {n * i} {t}")
                    lines.append(f"loginprobe_success{_labels(**a)} {0 if broken else 1} {t}")
                    days = 10 if check == "mqtt-bob" else 90
                    lines.append(f"loginprobe_tls_cert_not_after_timestamp_seconds"
                                 f"{_labels(check=check, target=target, agent=agent)} "
                                 f"{end + days * 86400} {t}")
                n = 4 * len(agents) * i
                for phase, base in PHASES.items():
                    d = base * slow * (1.5 if i % 2 else 1.0)
                    for le in BUCKETS:
                        inside = le == "+Inf" or d <= float(le)
                        lines.append(f"loginprobe_phase_duration_seconds_bucket"
                                     f"{_labels(**path, phase=phase, le=le)} "
                                     f"{n if inside else 0} {t}")
                    lines.append(f"loginprobe_phase_duration_seconds_count"
                                 f"{_labels(**path, phase=phase)} {n} {t}")
                    lines.append(f"loginprobe_phase_duration_seconds_sum"
                                 f"{_labels(**path, phase=phase)} {n * d} {t}")
                total = sum(PHASES.values()) * slow
                for le in BUCKETS:
                    inside = le == "+Inf" or total <= float(le)
                    lines.append(f"loginprobe_duration_seconds_bucket{_labels(**path, le=le)} "
                                 f"{n if inside else 0} {t}")
                lines.append(f"loginprobe_duration_seconds_count{_labels(**path)} {n} {t}")
                lines.append(f"loginprobe_duration_seconds_sum{_labels(**path)} {n * total} {t}")
            for agent in agents:
                # The last agent dropped its stream ten minutes before the end.
                gone = agent == "us-cell-2" and t > end - 600
                where = {"region": region, "carrier": carrier, "network_type": net}
                lines.append(f"loginprobe_agent_connected{_labels(agent=agent, **where)}"
                             f" {0 if gone else 1} {t}")
                last = end - 600 if gone else t
                lines.append(f"loginprobe_agent_last_result_timestamp_seconds"
                             f"{_labels(agent=agent)} {last} {t}")
                lines.append(f"loginprobe_collector_results_received_total{_labels(agent=agent)}"
                             f" {8 * i} {t}")
                lines.append(f"loginprobe_collector_results_duplicate_total{_labels(agent=agent)}"
                             f" {i // 10} {t}")
                scrape = {"instance": f"{agent}:9465", "job": "loginprobe-agent"}
                lines.append(f"loginprobe_agent_connected{_labels(**scrape)} "
                             f"{0 if gone else 1} {t}")
                lines.append(f"loginprobe_agent_results_dropped_total"
                             f"{_labels(**scrape, reason='size')} {i // 30 if gone else 0} {t}")
                lines.append(f"loginprobe_agent_spool_results{_labels(**scrape)} "
                             f"{40 if gone else 0} {t}")
                lines.append(f"loginprobe_agent_spool_oldest_age_seconds{_labels(**scrape)} "
                             f"{600 if gone else 0} {t}")
            lines += _held_sessions(i, t, region, carrier, net, agents)
        for reason in ("unauthenticated", "bad_result"):
            lines.append(f"loginprobe_collector_results_rejected_total{_labels(reason=reason)}"
                         f" {i // 20} {t}")
    return "\n".join(lines) + "\n# EOF\n"


def _held_sessions(i: int, t: int, region: str, carrier: str, net: str,
                   agents: tuple[str, ...]) -> list[str]:
    """A held XMPP session per agent on the path: up, dropping (more often on cellular),
    reconnecting in 2 s (9 s on cellular), keepalives answered in 30 ms (150 ms)."""
    path = {"check": "xmpp-alice", "protocol": "xmpp", "target": "xmpp://alice@xmpp.test",
            "region": region, "carrier": carrier, "network_type": net}
    cell = net == "cellular"
    lines = []
    for agent in agents:
        lines.append(f"loginprobe_session_up{_labels(**path, agent=agent)} 1 {t}")
        lines.append(f"loginprobe_session_drops_total"
                     f"{_labels(**path, agent=agent, reason='keepalive_timeout')} "
                     f"{i // (5 if cell else 30)} {t}")
    for name, value, n in (("loginprobe_session_reconnect_duration_seconds", 9.0 if cell else 2.0,
                            i // (5 if cell else 30) * len(agents)),
                           ("loginprobe_keepalive_rtt_seconds", 0.15 if cell else 0.03,
                            2 * i * len(agents))):
        for le in BUCKETS:
            inside = le == "+Inf" or value <= float(le)
            lines.append(f"{name}_bucket{_labels(**path, le=le)} {n if inside else 0} {t}")
        lines.append(f"{name}_count{_labels(**path)} {n} {t}")
        lines.append(f"{name}_sum{_labels(**path)} {n * value} {t}")
    return lines


def _which(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install the Debian package prometheus (scripts/setup does)"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Prometheus:
    url: str
    at: int  # the time the data ends; every query is evaluated there

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """The API's JSON answer, also for a 4xx (a bad query answers 400 with its error)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
                body: dict[str, Any] = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        return body


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    end = int(time.time()) // STEP * STEP
    (tmp / "data.om").write_text(openmetrics(end), encoding="utf-8")
    backfill = subprocess.run(
        [_which("promtool"), "tsdb", "create-blocks-from", "openmetrics",
         str(tmp / "data.om"), str(tmp / "tsdb")],
        capture_output=True, text=True, timeout=300, check=False)
    assert backfill.returncode == 0, backfill.stderr
    # No scrape targets: the backfilled blocks are all it serves.
    (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n",
                                        encoding="utf-8")
    for _attempt in range(3):
        port = _free_port()
        log = (tmp / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [_which("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            ready = False
            while not ready and proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                        ready = r.status == 200
                except OSError:
                    time.sleep(0.2)
            if ready:
                yield Prometheus(url, end)
                return
            text = (tmp / "prometheus.log").read_text()
            assert proc.poll() is not None, f"prometheus not ready in 60 s:\n{text[-3000:]}"
            assert "address already in use" in text, text[-3000:]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    pytest.fail("prometheus found its port taken three times")


@pytest.mark.parametrize("q", panel_queries(), ids=lambda q: q.where)
def test_panel_query_returns_data(prometheus: Prometheus, q: Query) -> None:
    body = prometheus.get("/api/v1/query", query=substitute(q), time=str(prometheus.at))
    assert body["status"] == "success", body
    assert body["data"]["result"], f"{q.where}: no data for {substitute(q)}"


def table_panels() -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    return [(f"{name} / {p['title']}", p, variable_values(d))
            for name, d in load_dashboards().items() for p in panels_of(d)
            if p["type"] == "table"]


@pytest.mark.parametrize("where,panel,values", table_panels(), ids=lambda x: str(x)[:60])
def test_table_rows_line_up(prometheus: Prometheus, where: str, panel: dict[str, Any],
                            values: dict[str, str]) -> None:
    """A joined table's key is unique in every query's result; a merged table's queries
    all carry the same labels, so Grafana puts each row's values side by side."""
    (how,) = [t for t in panel["transformations"] if t["id"] in ("merge", "joinByField")]
    label_sets = []
    for t in panel["targets"]:
        q = Query(where, t["expr"], values)
        result = prometheus.get("/api/v1/query", query=substitute(q),
                                time=str(prometheus.at))["data"]["result"]
        assert result, where
        label_sets.append({frozenset(r["metric"]) for r in result})
        if how["id"] == "joinByField":
            keys = [r["metric"][how["options"]["byField"]] for r in result]
            assert len(keys) == len(set(keys)), f"{where}: {t['refId']} repeats a key"
    if how["id"] == "merge":
        assert all(len(s) == 1 for s in label_sets), where
        assert len(set().union(*label_sets)) == 1, f"{where}: queries differ in labels"


@pytest.mark.parametrize("q", variable_queries(), ids=lambda q: q.where)
def test_variable_query_finds_values(prometheus: Prometheus, q: Query) -> None:
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", substitute(q))
    assert m, q.expr
    body = prometheus.get("/api/v1/series", **{"match[]": m.group(1)},
                          start=str(prometheus.at - 3600), end=str(prometheus.at))
    assert body["status"] == "success", body
    assert {s.get(m.group(2)) for s in body["data"]} - {None}, f"{q.where}: no values"


def rule_queries() -> list[Query]:
    doc = yaml.safe_load((GRAFANA / "rules" / "loginprobe.rules.yml").read_text("utf-8"))
    return [Query(f"{g['name']} / {r.get('record') or r.get('alert')}", r["expr"], {})
            for g in doc["groups"] for r in g["rules"]]


@pytest.mark.parametrize("q", rule_queries(), ids=lambda q: q.where)
def test_rule_expression_runs_on_data(prometheus: Prometheus, q: Query) -> None:
    """promtool checks syntax; matching errors (many-to-many, duplicate series) only show
    when an expression meets series. Recorded series are absent here, so expressions built
    on them return nothing, which is fine: the Grafana copies below are written out."""
    body = prometheus.get("/api/v1/query", query=q.expr, time=str(prometheus.at))
    assert body["status"] == "success", body


@pytest.mark.parametrize("q", grafana_alert_queries(), ids=lambda q: q.where)
def test_grafana_alert_query_runs(prometheus: Prometheus, q: Query) -> None:
    """Alert queries parse and run; most return nothing on healthy data, so only the
    status is asserted (the promtool tests assert what they return)."""
    body = prometheus.get("/api/v1/query", query=q.expr, time=str(prometheus.at))
    assert body["status"] == "success", body


def test_the_broken_path_shows_in_the_alert_queries(prometheus: Prometheus) -> None:
    """The backfilled outage (mqtt-bob from us/att/cellular, both agents, auth_rejected)
    is what the Grafana failure-rate query returns, with all failures in step account."""
    queries = {q.where: q.expr for q in grafana_alert_queries()}
    rate = prometheus.get("/api/v1/query", query=queries["LoginFailureRateHigh / A"],
                          time=str(prometheus.at))["data"]["result"]
    assert [(r["metric"]["check"], r["metric"]["region"], float(r["value"][1]))
            for r in rate] == [("mqtt-bob", "us", 1.0)]
    account = prometheus.get("/api/v1/query", query=queries["LoginFailureRateHigh / ACC"],
                             time=str(prometheus.at))["data"]["result"]
    shares = {(r["metric"]["check"], r["metric"]["region"], r["metric"]["network_type"]):
              float(r["value"][1]) for r in account}
    assert shares[("mqtt-bob", "us", "cellular")] == 1.0
    assert shares[("xmpp-alice", "eu", "cellular")] == 0.0

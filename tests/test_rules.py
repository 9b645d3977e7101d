"""The alert rules under grafana/ through the real promtool: syntax, the unit tests, every
alert covered firing and quiet, only contract metrics, the reason-to-step table of the
notification against loginprobe/contract.py, and the Grafana-managed copies of the alerts
held to the same unit tests as the Prometheus rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loginprobe.contract import Reason

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "grafana" / "rules" / "loginprobe.rules.yml"
RULE_TESTS = sorted((ROOT / "grafana" / "rules" / "tests").glob("*.test.yml"))
GRAFANA_ALERTING = ROOT / "grafana" / "provisioning" / "alerting" / "loginprobe.yaml"

# CONTRACT.md section 4; histograms also have _bucket, _sum and _count series.
CONTRACT_METRICS = frozenset({
    "loginprobe_attempts_total",
    "loginprobe_success",
    "loginprobe_phase_duration_seconds",
    "loginprobe_duration_seconds",
    "loginprobe_tls_cert_not_after_timestamp_seconds",
    "loginprobe_agent_connected",
    "loginprobe_agent_last_result_timestamp_seconds",
    "loginprobe_collector_results_received_total",
    "loginprobe_collector_results_duplicate_total",
    "loginprobe_collector_results_rejected_total",
    # section 6, held sessions
    "loginprobe_session_up",
    "loginprobe_session_drops_total",
    "loginprobe_session_reconnect_duration_seconds",
    "loginprobe_keepalive_rtt_seconds",
})
HISTOGRAMS = ("loginprobe_phase_duration_seconds", "loginprobe_duration_seconds",
              "loginprobe_session_reconnect_duration_seconds", "loginprobe_keepalive_rtt_seconds")
CONTRACT_SERIES = CONTRACT_METRICS | {
    f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install the Debian package prometheus (scripts/setup does)"
    return path


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULES)["groups"]
    return groups


def alerting_rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def series_names(promql: str) -> set[str]:
    """The loginprobe_* series a PromQL text (or template) names; recorded series (with a
    colon) are ours, not metrics, and are left out."""
    tokens = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", promql)
    return {t for t in tokens if t.startswith("loginprobe_") and ":" not in t}


def test_rule_file_passes_promtool_check() -> None:
    out = run_promtool("check", "rules", RULES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests in grafana/rules/tests"
    out = run_promtool("test", "rules", *(p.name for p in RULE_TESTS), cwd=RULE_TESTS[0].parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULE_TESTS), out.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = load_yaml(path)
        assert doc["rule_files"] == ["../loginprobe.rules.yml"], path
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {r["alert"] for r in alerting_rules()}
    assert alerts == {
        "LoginFailureRateHigh", "LoginSLOBurnRate", "AgentStoppedReporting",
        "TLSCertificateExpiringSoon", "PhaseLatencyRegression", "LoginDown",
        "SessionDropRateRegression",
    }
    assert alerts - fires == set(), "alerts never seen firing in a test"
    assert alerts - quiet == set(), "alerts never asserted quiet in a test"


def test_every_alert_says_what_to_do() -> None:
    runbook = (ROOT / "grafana" / "RUNBOOK.md").read_text(encoding="utf-8")
    sections = {line[3:].strip().lower() for line in runbook.splitlines()
                if line.startswith("## ")}
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys()
        url = rule["annotations"]["runbook_url"]
        assert url == f"grafana/RUNBOOK.md#{rule['alert'].lower()}", rule["alert"]
        assert url.split("#")[1] in sections, f"RUNBOOK.md has no section {rule['alert']}"
        assert "for" in rule, rule["alert"]


def test_rules_use_only_contract_metrics() -> None:
    used: set[str] = set()
    for group in rule_groups():
        for rule in group["rules"]:
            used |= series_names(rule["expr"])
            for text in rule.get("annotations", {}).values():
                used |= series_names(text)
    assert used, "no metric found: the parser is broken"
    assert used <= CONTRACT_SERIES, used - CONTRACT_SERIES


def test_failure_rate_alert_follows_the_contract_formula() -> None:
    recorded = {r["record"]: r["expr"] for g in rule_groups() for r in g["rules"]
                if "record" in r}
    formula = recorded["check_region_carrier_network_type:loginprobe_attempts_failure:ratio_rate5m"]
    by = "sum by (check, region, carrier, network_type)"
    assert " ".join(formula.split()) == (
        f'{by} (rate(loginprobe_attempts_total{{result="failure"}}[5m])) / '
        f"{by} (rate(loginprobe_attempts_total[5m]))"
    )


def _step_check_files(tmp: Path) -> Path:
    """A copy of the failure-rate group whose alert keeps only the reason and step
    annotations, and one promtool test per failure reason expecting the step that
    loginprobe/contract.py gives it."""
    group = next(g for g in rule_groups() if g["name"] == "loginprobe.failure-rate")
    for rule in group["rules"]:
        if rule.get("alert") == "LoginFailureRateHigh":
            rule["annotations"] = {k: rule["annotations"][k] for k in ("reason", "step")}
    (tmp / "rules.yml").write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")

    path = {"check": "c", "region": "r", "carrier": "k", "network_type": "wifi"}
    tests = []
    for reason in Reason:
        if reason is Reason.OK:
            continue
        series = [
            {"series": "loginprobe_attempts_total{"
                       + ",".join(f'{k}="{v}"' for k, v in path.items())
                       + f',agent="{agent}",result="failure",reason="{reason.value}"}}',
             "values": "0+4x10"}
            for agent in ("a1", "a2")
        ]
        tests.append({
            "name": reason.value, "interval": "1m", "input_series": series,
            "alert_rule_test": [{
                "eval_time": "10m", "alertname": "LoginFailureRateHigh",
                "exp_alerts": [{
                    "exp_labels": {**path, "severity": "page"},
                    "exp_annotations": {"reason": reason.value, "step": reason.step.value},
                }],
            }],
        })
    test_file = tmp / "steps.test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": ["rules.yml"],
                                         "evaluation_interval": "20s", "tests": tests}),
                         encoding="utf-8")
    return test_file


def test_notification_names_the_step_of_every_reason(tmp_path: Path) -> None:
    test_file = _step_check_files(tmp_path)
    out = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# --- the Grafana-managed copies -------------------------------------------------------


def grafana_rules() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    doc = load_yaml(GRAFANA_ALERTING)
    assert doc["apiVersion"] == 1
    return [(g, r) for g in doc["groups"] for r in g["rules"]]


def alertname(title: str) -> str:
    """Grafana titles are unique per folder, so 'LoginSLOBurnRate (page)' stands for the
    Prometheus alert LoginSLOBurnRate with severity page."""
    return title.split(" (")[0]


def as_prometheus_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A Grafana rule as the Prometheus rule it means: `(A) op threshold`."""
    data = {d["refId"]: d for d in rule["data"]}
    condition = data[rule["condition"]]["model"]
    assert condition["type"] == "threshold", rule["title"]
    (cond,) = condition["conditions"]
    op = {"gt": ">", "lt": "<"}[cond["evaluator"]["type"]]
    (threshold,) = cond["evaluator"]["params"]
    query = data[condition["expression"]]
    assert query["datasourceUid"] != "__expr__", rule["title"]
    return {"alert": alertname(rule["title"]),
            "expr": f"({query['model']['expr'].strip()}) {op} {threshold}",
            "for": rule["for"], "labels": rule["labels"]}


def test_grafana_rules_mirror_prometheus_alerts() -> None:
    prom = {(r["alert"], r["labels"]["severity"]): r for r in alerting_rules()}
    graf = {(alertname(r["title"]), r["labels"]["severity"]): r for _, r in grafana_rules()}
    assert prom.keys() == graf.keys()
    for key, rule in prom.items():
        assert graf[key]["for"] == rule["for"], key
        assert graf[key]["labels"] == rule["labels"], key
    intervals = {g["name"]: g["interval"] for g in rule_groups()}
    for group, rule in grafana_rules():
        name = alertname(rule["title"])
        prom_group = next(g for g in rule_groups()
                          if any(r.get("alert") == name for r in g["rules"]))
        assert group["interval"] == intervals[prom_group["name"]], rule["title"]


def test_grafana_rules_pass_the_prometheus_unit_tests(tmp_path: Path) -> None:
    """Each Grafana rule, written back as a Prometheus rule, must fire and stay quiet at the
    same moments with the same labels as the Prometheus rule in every promtool test
    (annotations differ by design: Grafana's templates cannot query)."""
    groups: dict[str, dict[str, Any]] = {}
    for group, rule in grafana_rules():
        g = groups.setdefault(group["name"], {"name": group["name"],
                                              "interval": group["interval"], "rules": []})
        g["rules"].append(as_prometheus_rule(rule))
    (tmp_path / "grafana.rules.yml").write_text(
        yaml.safe_dump({"groups": list(groups.values())}), encoding="utf-8")
    check = run_promtool("check", "rules", tmp_path / "grafana.rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr

    names = []
    for path in RULE_TESTS:
        doc = load_yaml(path)
        doc["rule_files"] = ["grafana.rules.yml"]
        for group in doc["tests"]:
            group.pop("promql_expr_test", None)  # recorded series exist only in Prometheus
            for case in group.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    alert.pop("exp_annotations", None)
        (tmp_path / path.name).write_text(yaml.safe_dump(doc), encoding="utf-8")
        names.append(path.name)
    out = run_promtool("test", "rules", *names, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_annotation_templates_parse(tmp_path: Path) -> None:
    """Grafana's templates are Go templates with Prometheus's functions plus $values; with
    $values renamed to a map Prometheus defines, promtool parses them (a missing {{ end }}
    or an unknown function fails here, not in a notification)."""
    rules = []
    for _, rule in grafana_rules():
        notes = {k: v.replace("$values", "$labels") for k, v in rule["annotations"].items()
                 if not k.startswith("__")}
        rules.append({"alert": alertname(rule["title"]), "expr": "vector(1)",
                      "annotations": notes})
    (tmp_path / "templates.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "templates", "rules": rules}]}), encoding="utf-8")
    out = run_promtool("check", "rules", tmp_path / "templates.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_rules_use_only_contract_metrics_and_one_datasource() -> None:
    used: set[str] = set()
    for _, rule in grafana_rules():
        for query in rule["data"]:
            if query["datasourceUid"] == "__expr__":
                continue
            assert query["datasourceUid"] == "loginprobe-prometheus", rule["title"]
            assert query["model"]["instant"] is True, rule["title"]
            used |= series_names(query["model"]["expr"])
    assert used <= CONTRACT_SERIES, used - CONTRACT_SERIES


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.OK])
def test_grafana_step_queries_cover_every_reason(reason: Reason) -> None:
    """The NET/CFG/ACC/SRV share queries: each failure reason of a step falls in exactly
    that step's regex (internal_error, step none, in none)."""
    _, rule = next(x for x in grafana_rules() if x[1]["title"] == "LoginFailureRateHigh")
    steps = {"NET": "network", "CFG": "config", "ACC": "account", "SRV": "server"}
    hits = []
    for query in rule["data"]:
        if query["refId"] in steps:
            (regex,) = re.findall(r'reason=~"([^"]+)"', query["model"]["expr"])
            if re.fullmatch(regex, reason.value):
                hits.append(steps[query["refId"]])
    assert hits == ([] if reason.step.value == "none" else [reason.step.value])

"""Writes the loginprobe Grafana dashboards (grafana/dashboards/*.json) from one place.

Run `python grafana/dashboards.py` after a change and commit the JSON with it;
tests/test_dashboards.py fails when the JSON and this file disagree. The dashboards use only
the metrics of CONTRACT.md sections 4 and 6 (from the collector) and, on the fleet dashboard, the
agent's own /metrics (agent/health.py), whose series carry the scrape's `instance` label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from loginprobe.contract import NETWORK_TYPES, PHASES, Reason, Step

Json = dict[str, Any]

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39  # Grafana 10.x / 11.x
DS: Json = {"type": "prometheus", "uid": "${datasource}"}

# Panel ids the alert rules link to (annotations __dashboardUid__ / __panelId__).
CHECK_UID = "loginprobe-check"
CHECK_REASONS_PANEL = 20
FLEET_UID = "loginprobe-fleet"
FLEET_AGENTS_PANEL = 10

# Reason code -> troubleshooting step (CONTRACT.md section 3), from the contract's own table;
# label_replace anchors its regex at both ends.
STEP_REGEX: dict[str, str] = {
    step.value: "|".join(r.value for r in Reason if r.step is step) for step in Step
}

PATH_SEL = 'check=~"$check",region=~"$region",carrier=~"$carrier",network_type=~"$network_type"'
ATTEMPTS = "loginprobe_attempts_total"
PHASE_BUCKET = "loginprobe_phase_duration_seconds_bucket"
DURATION_BUCKET = "loginprobe_duration_seconds_bucket"


def with_step(expr: str) -> str:
    """Adds a `step` label derived from `reason` to every series of expr."""
    for step, regex in STEP_REGEX.items():
        expr = f'label_replace({expr}, "step", "{step}", "reason", "{regex}")'
    return expr


def success_ratio(sel: str, window: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return (
        f'sum{grouping} (rate({ATTEMPTS}{{result="success",{sel}}}[{window}]))'
        f" / sum{grouping} (rate({ATTEMPTS}{{{sel}}}[{window}]))"
    )


def quantile(q: float, bucket: str, sel: str, window: str, by: str) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) (rate({bucket}{{{sel}}}[{window}])))"
    )


# --- building blocks -------------------------------------------------------------------


def target(expr: str, legend: str = "", ref: str = "A", *, table: bool = False,
           heatmap: bool = False) -> Json:
    t: Json = {"refId": ref, "datasource": DS, "editorMode": "code", "expr": expr,
               "legendFormat": legend or "__auto", "range": not table, "instant": table}
    if table:
        t["format"] = "table"
    elif heatmap:
        t["format"] = "heatmap"
    return t


def grid(x: int, y: int, w: int, h: int) -> Json:
    return {"x": x, "y": y, "w": w, "h": h}


def timeseries(pid: int, title: str, pos: Json, targets: list[Json], unit: str, *,
               description: str = "", stack: bool = False, bars: bool = False,
               minimum: float | None = None, maximum: float | None = None) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if (stack or bars) else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: Json = {"unit": unit, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description,
        "datasource": DS, "gridPos": pos, "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(pid: int, title: str, pos: Json, expr: str, unit: str, *, description: str = "",
         steps: list[tuple[float | None, str]] | None = None, decimals: int | None = None) -> Json:
    thresholds = [{"color": c, "value": v} for v, c in (steps or [(None, "blue")])]
    defaults: Json = {"unit": unit, "thresholds": {"mode": "absolute", "steps": thresholds},
                      "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "id": pid, "type": "stat", "title": title, "description": description,
        "datasource": DS, "gridPos": pos, "targets": [target(expr, table=True)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "auto",
                    "justifyMode": "auto", "orientation": "auto"},
    }


def table(pid: int, title: str, pos: Json, targets: list[Json], join_on: str | None, *,
          description: str = "", units: dict[str, str] | None = None,
          rename: dict[str, str] | None = None, links: dict[str, str] | None = None) -> Json:
    """An instant-query table, one column per query: rows joined on the join_on label
    (unique per row in every query), or with join_on None merged on all labels (every
    query grouped by the same labels)."""
    overrides: list[Json] = []
    for field, unit in (units or {}).items():
        overrides.append({"matcher": {"id": "byName", "options": field},
                          "properties": [{"id": "unit", "value": unit}]})
    for field, url in (links or {}).items():
        overrides.append({"matcher": {"id": "byName", "options": field},
                          "properties": [{"id": "links", "value": [
                              {"title": "Open", "url": url}]}]})
    return {
        "id": pid, "type": "table", "title": title, "description": description,
        "datasource": DS, "gridPos": pos, "targets": targets,
        "fieldConfig": {"defaults": {"custom": {"filterable": True}}, "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {"id": "merge", "options": {}} if join_on is None else
            {"id": "joinByField", "options": {"byField": join_on, "mode": "outer"}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, **{f"Time {i}": True for i in range(1, 9)}},
                "renameByName": rename or {}}},
        ],
    }


def heatmap(pid: int, title: str, pos: Json, expr: str, description: str = "") -> Json:
    return {
        "id": pid, "type": "heatmap", "title": title, "description": description,
        "datasource": DS, "gridPos": pos,
        "targets": [target(expr, "{{le}}", heatmap=True)],
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False,
                                                             "viz": False}}},
                        "overrides": []},
        "options": {"calculate": False, "cellGap": 1,
                    "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64,
                              "exponent": 0.5, "fill": "dark-orange", "reverse": False},
                    "rowsFrame": {"layout": "le"}, "yAxis": {"unit": "s", "axisPlacement": "left"},
                    "tooltip": {"show": True, "yHistogram": True},
                    "legend": {"show": True}},
    }


def state_timeline(pid: int, title: str, pos: Json, expr: str, legend: str,
                   description: str = "") -> Json:
    return {
        "id": pid, "type": "state-timeline", "title": title, "description": description,
        "datasource": DS, "gridPos": pos, "targets": [target(expr, legend)],
        "fieldConfig": {"defaults": {
            "mappings": [{"type": "value", "options": {
                "0": {"text": "failed", "color": "red", "index": 0},
                "1": {"text": "ok", "color": "green", "index": 1}}}],
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                         {"color": "green", "value": 1}]}},
            "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                    "legend": {"showLegend": False}},
    }


def row(pid: int, title: str, y: int) -> Json:
    return {"id": pid, "type": "row", "title": title, "collapsed": False,
            "gridPos": grid(0, y, 24, 1), "panels": []}


def datasource_var() -> Json:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "",
            "includeAll": False, "multi": False, "options": []}


def query_var(name: str, metric: str, *, label: str = "", multi: bool = True,
              matchers: str = "") -> Json:
    """A variable from label_values(metric{matchers}, name); All means `.*`."""
    selector = f"{metric}{{{matchers}}}" if matchers else metric
    definition = f"label_values({selector}, {name})"
    var: Json = {
        "name": name, "label": label or name, "type": "query", "datasource": DS,
        "definition": definition,
        "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": [],
        "multi": multi, "includeAll": multi,
    }
    if multi:
        var["allValue"] = ".*"
        var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        var["current"] = {}
    return var


def custom_var(name: str, label: str, options: list[str], default: str) -> Json:
    return {
        "name": name, "label": label, "type": "custom", "query": ",".join(options),
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": o == default, "text": o, "value": o} for o in options],
        "multi": False, "includeAll": False, "hide": 0,
    }


def path_vars(check_multi: bool = True) -> list[Json]:
    """check, region, carrier, network_type, each narrowed by the ones before it."""
    return [
        query_var("check", ATTEMPTS, multi=check_multi),
        query_var("region", ATTEMPTS, matchers='check=~"$check"'),
        query_var("carrier", ATTEMPTS, matchers='check=~"$check",region=~"$region"'),
        query_var("network_type", ATTEMPTS, label="network type",
                  matchers='check=~"$check",region=~"$region",carrier=~"$carrier"'),
    ]


def dashboard(uid: str, title: str, description: str, variables: list[Json],
              panels: list[Json]) -> Json:
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["loginprobe"], "timezone": "browser", "editable": False,
        "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "timepicker": {}, "id": None,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "loginprobe", "type": "dashboards", "tags": ["loginprobe"],
                   "asDropdown": True, "includeVars": True, "keepTime": True}],
        "templating": {"list": [datasource_var(), *variables]},
        "panels": panels,
    }


SUCCESS_STEPS: list[tuple[float | None, str]] = [(None, "red"), (0.95, "orange"), (0.99, "green")]


# --- (a) overview ----------------------------------------------------------------------


def overview() -> Json:
    sel = PATH_SEL
    path = "check, region, carrier, network_type"
    fail = f'{ATTEMPTS}{{result="failure",{sel}}}'
    check_link = ("/d/loginprobe-check/loginprobe-check-detail?var-check=${__data.fields.check}"
                  "&var-region=${__data.fields.region}&var-carrier=${__data.fields.carrier}"
                  "&var-network_type=${__data.fields.network_type}&${__url_time_range}")
    panels = [
        stat(1, "Login success rate", grid(0, 0, 6, 4), success_ratio(sel, "$__range"),
             "percentunit", steps=SUCCESS_STEPS, decimals=2,
             description="Successful attempts / all attempts over the time range."),
        stat(2, "Attempts", grid(6, 0, 6, 4), f"sum(increase({ATTEMPTS}{{{sel}}}[$__range]))",
             "short", decimals=0, description="Login attempts over the time range."),
        stat(3, "Paths failing now", grid(12, 0, 6, 4),
             f"count(max by ({path}) (loginprobe_success{{{sel}}}) == 0) or vector(0)", "short",
             steps=[(None, "green"), (1, "red")],
             description="check x region x carrier x network type whose latest attempt "
                         "failed on every agent (loginprobe_success)."),
        stat(4, "Agents reporting", grid(18, 0, 6, 4),
             f"count(count by (agent) (loginprobe_success{{{sel}}})) or vector(0)", "short",
             description="Agents with a latest result for the selected checks and paths."),
        timeseries(5, "Login success rate by check and path", grid(0, 4, 24, 8),
                   [target(success_ratio(sel, "$__rate_interval", path),
                           "{{check}} {{region}}/{{carrier}}/{{network_type}}")],
                   "percentunit", maximum=1,
                   description="Per check and path, success / attempts (CONTRACT.md §4)."),
        timeseries(6, "Attempts by result", grid(0, 12, 12, 8),
                   [target(f"sum by (result) (rate({ATTEMPTS}{{{sel}}}[$__rate_interval]))",
                           "{{result}}")], "reqps", stack=True),
        timeseries(7, "Login duration p95 by check and path", grid(12, 12, 12, 8),
                   [target(quantile(0.95, DURATION_BUCKET, sel, "$__rate_interval", path),
                           "{{check}} {{region}}/{{carrier}}/{{network_type}}")], "s",
                   description="Whole attempt, loginprobe_duration_seconds."),
        timeseries(8, "Failures by reason", grid(0, 20, 12, 8),
                   [target(f"sum by (reason) (rate({fail}[$__rate_interval]))", "{{reason}}")],
                   "reqps", stack=True, bars=True,
                   description="CONTRACT.md §3 reason codes of failed attempts."),
        timeseries(9, "Failures by step", grid(12, 20, 12, 8),
                   [target("sum by (step) ("
                           + with_step(f"sum by (reason) (rate({fail}[$__rate_interval]))")
                           + ")", "{{step}}")],
                   "reqps", stack=True, bars=True,
                   description="Reasons grouped by troubleshooting step: network, config, "
                               "account, server."),
        timeseries(10, "Phase duration p95", grid(0, 28, 12, 8),
                   [target(quantile(0.95, PHASE_BUCKET, sel, "$__rate_interval", "phase"),
                           "{{phase}}")], "s"),
        table(11, "Paths over the time range", grid(12, 28, 12, 8), [
            target(f"sum by ({path}) (increase({ATTEMPTS}{{{sel}}}[$__range]))", ref="A",
                   table=True),
            target(success_ratio(sel, "$__range", path), ref="B", table=True),
            target(quantile(0.95, DURATION_BUCKET, sel, "$__range", path), ref="C", table=True),
        ], None, units={"Value #A": "short", "Value #B": "percentunit", "Value #C": "s"},
            rename={"Value #A": "attempts", "Value #B": "success rate", "Value #C": "p95"},
            links={"check": check_link},
            description="Click a check to open it in detail."),
        *session_panels(36),
    ]
    return dashboard("loginprobe-overview", "loginprobe / Overview",
                     "Login success, attempts, failures and latency by check, region, carrier "
                     "and network type.", path_vars(), panels)


# --- (b) one check in detail -----------------------------------------------------------


def check_detail() -> Json:
    sel = PATH_SEL
    fail = f'{ATTEMPTS}{{result="failure",{sel}}}'
    cert = 'loginprobe_tls_cert_not_after_timestamp_seconds{check=~"$check"}'
    panels: list[Json] = [
        stat(1, "Login success rate", grid(0, 0, 6, 4), success_ratio(sel, "$__range"),
             "percentunit", steps=SUCCESS_STEPS, decimals=2),
        stat(2, "Login duration p95", grid(6, 0, 6, 4),
             f"histogram_quantile(0.95, sum by (le) (rate({DURATION_BUCKET}{{{sel}}}[$__range])))",
             "s"),
        stat(3, "Certificate days left", grid(12, 0, 6, 4),
             f"min(({cert} > 0) - time()) / 86400", "d",
             steps=[(None, "red"), (14, "orange"), (30, "green")], decimals=1,
             description="Soonest notAfter any agent saw for this check."),
        stat(4, "Agents reporting", grid(18, 0, 6, 4),
             f"count(count by (agent) (loginprobe_success{{{sel}}})) or vector(0)", "short"),
        row(5, "Phase latency (dns → tcp → tls → login)", 4),
    ]
    # The phases every login has; ping and upgrade are optional and shown in the breakdown.
    for i, phase in enumerate(p for p in PHASES if p not in ("ping", "upgrade")):
        panels.append(heatmap(
            6 + i, f"{phase} phase", grid(6 * i, 5, 6, 8),
            f'sum by (le) (increase({PHASE_BUCKET}{{{sel},phase="{phase}"}}[$__rate_interval]))',
            description=f"Distribution of {phase} phase durations over time."))
    panels += [
        timeseries(CHECK_REASONS_PANEL, "Failure reasons over time", grid(0, 13, 12, 9),
                   [target(f"sum by (reason) (increase({fail}[$__rate_interval]))", "{{reason}}")],
                   "short", stack=True, bars=True,
                   description="Failed attempts per reason code (CONTRACT.md §3)."),
        timeseries(21, "Phase p50 and p95", grid(12, 13, 12, 9), [
            target(quantile(0.5, PHASE_BUCKET, sel, "$__rate_interval", "phase"),
                   "{{phase}} p50", "A"),
            target(quantile(0.95, PHASE_BUCKET, sel, "$__rate_interval", "phase"),
                   "{{phase}} p95", "B"),
        ], "s"),
        state_timeline(22, "Latest result per agent", grid(0, 22, 12, 8),
                       f"max by (agent) (loginprobe_success{{{sel}}})", "{{agent}}",
                       description="loginprobe_success: 1 the agent's latest attempt logged in."),
        table(23, "Success per agent over the time range", grid(12, 22, 12, 8), [
            target(success_ratio(sel, "$__range", "agent"), ref="A", table=True),
            target(f"sum by (agent) (increase({ATTEMPTS}{{{sel}}}[$__range]))", ref="B",
                   table=True),
            target(f"sum by (agent) (increase({fail}[$__range]))", ref="C", table=True),
        ], "agent", units={"Value #A": "percentunit", "Value #B": "short", "Value #C": "short"},
            rename={"Value #A": "success rate", "Value #B": "attempts", "Value #C": "failures"}),
        table(24, "Certificate per agent", grid(0, 30, 12, 7), [
            # min by: one row per agent, whichever collector replica holds it.
            target(f"min by (check, target, agent) (({cert} > 0) - time()) / 86400", ref="A",
                   table=True),
        ], "agent", units={"Value": "d"}, rename={"Value": "days left"}),
        table(25, "Failures by reason and step over the time range", grid(12, 30, 12, 7), [
            target("sort_desc(" + with_step(f"sum by (reason) (increase({fail}[$__range]))")
                   + ")", ref="A", table=True),
        ], "reason", units={"Value": "short"}, rename={"Value": "failures"}),
    ]
    return dashboard(CHECK_UID, "loginprobe / Check detail",
                     "One check: phase latency heatmaps, failure reasons over time, certificate "
                     "and per-agent results.", path_vars(check_multi=False), panels)


# --- (c) WiFi vs cellular --------------------------------------------------------------


def network_types() -> Json:
    base = 'check=~"$check",region=~"$region",carrier=~"$carrier"'
    sel_a, sel_b = f'{base},network_type="$a"', f'{base},network_type="$b"'
    both = f'{base},network_type=~"$a|$b"'
    types = list(NETWORK_TYPES)
    variables = [
        query_var("check", ATTEMPTS),
        query_var("region", ATTEMPTS, matchers='check=~"$check"'),
        query_var("carrier", ATTEMPTS, matchers='check=~"$check",region=~"$region"'),
        custom_var("a", "compare", types, "wifi"),
        custom_var("b", "with", types, "cellular"),
    ]
    pp = "percentunit"
    panels = [
        stat(1, "Success rate on $a", grid(0, 0, 6, 4), success_ratio(sel_a, "$__range"), pp,
             steps=SUCCESS_STEPS, decimals=2),
        stat(2, "Success rate on $b", grid(6, 0, 6, 4), success_ratio(sel_b, "$__range"), pp,
             steps=SUCCESS_STEPS, decimals=2),
        stat(3, "Success difference ($a - $b)", grid(12, 0, 6, 4),
             f"({success_ratio(sel_a, '$__range')}) - ({success_ratio(sel_b, '$__range')})", pp,
             decimals=2, description="Positive: logins succeed more often on $a."),
        stat(4, "Login p95 difference ($b - $a)", grid(18, 0, 6, 4),
             f"histogram_quantile(0.95, sum by (le) (rate({DURATION_BUCKET}{{{sel_b}}}[$__range])))"
             f" - histogram_quantile(0.95, sum by (le) "
             f"(rate({DURATION_BUCKET}{{{sel_a}}}[$__range])))",
             "s", description="Positive: a whole login takes longer on $b."),
        timeseries(5, "Success rate per network type", grid(0, 4, 12, 8),
                   [target(success_ratio(both, "$__rate_interval", "network_type"),
                           "{{network_type}}")], pp, maximum=1),
        timeseries(6, "Success rate difference ($a - $b)", grid(12, 4, 12, 8),
                   [target(f"({success_ratio(sel_a, '$__rate_interval')}) - "
                           f"({success_ratio(sel_b, '$__rate_interval')})", "$a - $b")], pp),
        timeseries(7, "Phase p50 per network type", grid(0, 12, 12, 8),
                   [target(quantile(0.5, PHASE_BUCKET, both, "$__rate_interval",
                                    "network_type, phase"), "{{network_type}} {{phase}}")], "s"),
        timeseries(8, "Phase p95 per network type", grid(12, 12, 12, 8),
                   [target(quantile(0.95, PHASE_BUCKET, both, "$__rate_interval",
                                    "network_type, phase"), "{{network_type}} {{phase}}")], "s"),
        timeseries(9, "Phase p95 difference ($b - $a)", grid(0, 20, 12, 8),
                   [target(f"{quantile(0.95, PHASE_BUCKET, sel_b, '$__rate_interval', 'phase')}"
                           f" - on (phase) "
                           f"{quantile(0.95, PHASE_BUCKET, sel_a, '$__rate_interval', 'phase')}",
                           "{{phase}}")], "s",
                   description="Which phase accounts for the difference: positive is slower "
                               "on $b."),
        timeseries(10, "Failures by reason per network type", grid(12, 20, 12, 8),
                   [target(f'sum by (network_type, reason) (increase({ATTEMPTS}'
                           f'{{result="failure",{both}}}[$__rate_interval]))',
                           "{{network_type}} {{reason}}")], "short", stack=True, bars=True),
        table(11, "Per check and network type over the time range", grid(0, 28, 24, 8), [
            target(f"sum by (check, network_type) (increase({ATTEMPTS}{{{both}}}[$__range]))",
                   ref="A", table=True),
            target(success_ratio(both, "$__range", "check, network_type"), ref="B", table=True),
            target(quantile(0.5, DURATION_BUCKET, both, "$__range", "check, network_type"),
                   ref="C", table=True),
            target(quantile(0.95, DURATION_BUCKET, both, "$__range", "check, network_type"),
                   ref="D", table=True),
        ], None, units={"Value #A": "short", "Value #B": pp, "Value #C": "s",
                           "Value #D": "s"},
            rename={"Value #A": "attempts", "Value #B": "success rate", "Value #C": "p50",
                    "Value #D": "p95"},
            description="Attempts and success rate as `loginprobe compare` reports them "
                        "for the same range; p50/p95 of the whole login."),
        table(12, "Phase latency per check and network type over the time range",
              grid(0, 36, 24, 9), [
                  target(f"histogram_quantile({q}, sum by (check, network_type, phase, le) "
                         f"(increase({PHASE_BUCKET}{{{both}}}[$__range])))", ref=ref, table=True)
                  for q, ref in ((0.5, "A"), (0.95, "B"))
              ], None, units={"Value #A": "s", "Value #B": "s"},
              rename={"Value #A": "p50", "Value #B": "p95"},
              description="The phase p50/p95 of `loginprobe compare --by network_type` for "
                          "the same range (the same PromQL, so the same digits)."),
    ]
    return dashboard("loginprobe-network-types", "loginprobe / WiFi vs cellular",
                     "Two network types side by side: success rate, phase latency and their "
                     "difference.", variables, panels)


# --- (d) agent fleet -------------------------------------------------------------------


def fleet() -> Json:
    conn = ('loginprobe_agent_connected{agent!="",agent=~"$agent",region=~"$region",'
            'carrier=~"$carrier",network_type=~"$network_type"}')
    last = 'loginprobe_agent_last_result_timestamp_seconds{agent=~"$agent"}'
    received = 'loginprobe_collector_results_received_total{agent=~"$agent"}'
    duplicate = 'loginprobe_collector_results_duplicate_total{agent=~"$agent"}'
    agent_side = ("From the agents' own /metrics (agent/health.py), where Prometheus scrapes "
                  "them; one series per scrape target (instance).")
    variables = [
        query_var("region", "loginprobe_agent_connected", matchers='agent!=""'),
        query_var("carrier", "loginprobe_agent_connected", matchers='agent!="",region=~"$region"'),
        query_var("network_type", "loginprobe_agent_connected", label="network type",
                  matchers='agent!="",region=~"$region",carrier=~"$carrier"'),
        query_var("agent", "loginprobe_agent_connected",
                  matchers='region=~"$region",carrier=~"$carrier",network_type=~"$network_type"'),
    ]
    panels = [
        stat(1, "Connected agents", grid(0, 0, 6, 4),
             f"count(max by (agent) ({conn}) > 0) or vector(0)", "short",
             description="Agents whose stream some collector holds."),
        stat(2, "Disconnected agents", grid(6, 0, 6, 4),
             f"count(max by (agent) ({conn}) == 0) or vector(0)", "short",
             steps=[(None, "green"), (1, "red")]),
        stat(3, "Agents silent over 5 minutes", grid(12, 0, 6, 4),
             f"count((time() - max by (agent) ({last})) > 300) or vector(0)", "short",
             steps=[(None, "green"), (1, "red")],
             description="The AgentStoppedReporting alert's first condition."),
        stat(4, "Results received", grid(18, 0, 6, 4),
             f"sum(rate({received}[$__range]))", "reqps"),
        table(FLEET_AGENTS_PANEL, "Agents", grid(0, 4, 24, 8), [
            target(f"max by (agent, region, carrier, network_type) ({conn})", ref="A",
                   table=True),
            target(f"time() - max by (agent) ({last})", ref="B", table=True),
            target(f"sum by (agent) (rate({received}[$__range]))", ref="C", table=True),
            target(f"sum by (agent) (rate({duplicate}[$__range]))", ref="D", table=True),
        ], "agent", units={"Value #A": "short", "Value #B": "s", "Value #C": "reqps",
                           "Value #D": "reqps"},
            rename={"Value #A": "connected", "Value #B": "last result age",
                    "Value #C": "received", "Value #D": "duplicates"}),
        timeseries(11, "Connected agents by region and network type", grid(0, 12, 12, 8),
                   [target("count by (region, network_type) "
                           f"(max by (agent, region, network_type) ({conn}) > 0)",
                           "{{region}} {{network_type}}")], "short", stack=True),
        timeseries(12, "Last result age (10 oldest)", grid(12, 12, 12, 8),
                   [target(f"topk(10, time() - max by (agent) ({last}))", "{{agent}}")], "s",
                   description="Lagging agents: seconds since the collector last accepted "
                               "one of their results."),
        timeseries(13, "Results received per agent", grid(0, 20, 8, 8),
                   [target(f"sum by (agent) (rate({received}[$__rate_interval]))", "{{agent}}")],
                   "reqps"),
        timeseries(14, "Duplicates per agent", grid(8, 20, 8, 8),
                   [target(f"sum by (agent) (rate({duplicate}[$__rate_interval]))", "{{agent}}")],
                   "reqps", description="Replays after a reconnect, acknowledged again."),
        timeseries(15, "Rejected by reason", grid(16, 20, 8, 8),
                   [target("sum by (reason) (rate(loginprobe_collector_results_rejected_total"
                           "[$__rate_interval]))", "{{reason}}")], "reqps", stack=True),
        timeseries(16, "Spool drops (agent /metrics)", grid(0, 28, 8, 8),
                   [target("sum by (instance, reason) "
                           "(increase(loginprobe_agent_results_dropped_total[$__rate_interval]))",
                           "{{instance}} {{reason}}")], "short", stack=True, bars=True,
                   description="Results an agent dropped unsent (spool size or age limit, "
                               "disk full). " + agent_side),
        timeseries(17, "Spool backlog (agent /metrics)", grid(8, 28, 8, 8),
                   [target("max by (instance) (loginprobe_agent_spool_results)",
                           "{{instance}}")], "short",
                   description="Results spooled and not yet acknowledged. " + agent_side),
        timeseries(18, "Oldest spooled result (agent /metrics)", grid(16, 28, 8, 8),
                   [target("max by (instance) (loginprobe_agent_spool_oldest_age_seconds)",
                           "{{instance}}")], "s",
                   description="How far behind an agent's uplink is. " + agent_side),
    ]
    return dashboard(FLEET_UID, "loginprobe / Agent fleet",
                     "Agents: connected, lagging, results received, duplicates, rejects and "
                     "spool drops.", variables, panels)


# --- held sessions (CONTRACT.md section 6), a panel group of the overview -----------------

SESSION_UP = "loginprobe_session_up"
SESSION_DROPS = "loginprobe_session_drops_total"
RECONNECT_BUCKET = "loginprobe_session_reconnect_duration_seconds_bucket"
KEEPALIVE_BUCKET = "loginprobe_keepalive_rtt_seconds_bucket"
SESSION_DROP_RATE_PANEL = 31  # the SessionDropRateRegression alert links here


def drops_per_session_hour(sel: str, window: str, by: str) -> str:
    """Drops per hour / sessions up on average: drops per session-hour, as the
    SessionDropRateRegression rule and `loginprobe compare` count them."""
    return (f"sum by ({by}) (rate({SESSION_DROPS}{{{sel}}}[{window}])) * 3600"
            f" / sum by ({by}) (avg_over_time({SESSION_UP}{{{sel}}}[{window}]))")


def session_panels(y: int) -> list[Json]:
    sel = PATH_SEL
    path = "check, region, carrier, network_type"
    legend = "{{check}} {{region}}/{{carrier}}/{{network_type}}"
    return [
        row(30, "Held sessions (checks with mode: session)", y),
        timeseries(SESSION_DROP_RATE_PANEL, "Drops per session-hour by check and path",
                   grid(0, y + 1, 12, 8),
                   [target(drops_per_session_hour(sel, "$__rate_interval", path), legend)],
                   "short", minimum=0,
                   description="How often a held session drops, per hour it was logged in "
                               "(loginprobe_session_drops_total / loginprobe_session_up)."),
        timeseries(32, "Session drops by reason", grid(12, y + 1, 12, 8),
                   [target(f"sum by (reason) (increase({SESSION_DROPS}{{{sel}}}"
                           f"[$__rate_interval]))", "{{reason}}")],
                   "short", stack=True, bars=True,
                   description="keepalive_timeout: the network; tcp_reset: a middlebox; "
                               "session_closed, server_unavailable: the server."),
        timeseries(33, "Reconnect time (drop to logged in again)", grid(0, y + 9, 12, 8), [
            target(quantile(0.5, RECONNECT_BUCKET, sel, "$__rate_interval", "network_type"),
                   "{{network_type}} p50", "A"),
            target(quantile(0.95, RECONNECT_BUCKET, sel, "$__rate_interval", "network_type"),
                   "{{network_type}} p95", "B"),
        ], "s", description="loginprobe_session_reconnect_duration_seconds: the server's "
                            "downtime plus the backoff, per network type."),
        timeseries(34, "Keepalive round trip p95 by network type", grid(12, y + 9, 12, 8),
                   [target(quantile(0.95, KEEPALIVE_BUCKET, sel, "$__rate_interval",
                                    "network_type"), "{{network_type}}")], "s",
                   description="loginprobe_keepalive_rtt_seconds: XEP-0199 ping or MQTT "
                               "PINGREQ, answered."),
        state_timeline(35, "Held sessions per agent", grid(0, y + 17, 24, 8),
                       f"max by (agent, check) ({SESSION_UP}{{{sel}}})", "{{agent}} {{check}}",
                       description="loginprobe_session_up: 1 logged in, 0 dropped and not "
                                   "back yet."),
    ]


DASHBOARDS = {
    "overview.json": overview,
    "check-detail.json": check_detail,
    "network-types.json": network_types,
    "agent-fleet.json": fleet,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

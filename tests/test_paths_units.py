"""Network paths without processes: the config, each path's options and labels, the
scheduler's fan-out to every path at once, the network context on the wire, and the
collector's metrics labelled per result."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.prometheus import parse_render
from loginprobe.agent.config import load_config
from loginprobe.agent.network_paths import ProbePath
from loginprobe.agent.scheduler import LOCAL, CheckSpec, Scheduler
from loginprobe.codec import Report, from_wire, to_wire
from loginprobe.collector.exporters.prometheus import ResultMetrics
from loginprobe.collector.ingest import FleetState, Ingest
from loginprobe.config import ConfigError
from loginprobe.contract import Reason
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.run import run_check
from loginprobe.result import NetworkContext, Phase, Result
from loginprobe.target import Target, parse_target

CONFIG = """\
collector: {address: 127.0.0.1:7443, plaintext: true}
labels: {region: eu-west, carrier: home-isp, site: lab-1}
paths:
  - name: wifi
    interface: wlan0
    labels: {asn: 3320}
  - name: lte
    interface: wwan0
    resolver: 192.0.2.53
    labels: {carrier: mobile-co, network_type: cellular, region: eu-central}
spool: {path: /tmp/agent-test-spool.db}
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_paths_merge_the_agents_labels_with_their_own(tmp_path: Path) -> None:
    wifi, lte = ProbePath.from_config(load(tmp_path, CONFIG))
    assert (wifi.name, wifi.interface, wifi.resolver, wifi.network_type) == (
        "wifi", "wlan0", None, None)  # not configured: detected from wlan0
    assert wifi.labels == {"region": "eu-west", "carrier": "home-isp", "site": "lab-1",
                           "asn": "3320"}
    assert (lte.resolver, lte.network_type) == (("192.0.2.53", 53), "cellular")
    assert lte.labels == {"region": "eu-central", "carrier": "mobile-co", "site": "lab-1"}
    # A check's options on a path: bound to it, the path's resolver unless the check has one.
    options = lte.options(ProbeOptions(timeout=3.0))
    assert (options.interface, options.resolver, options.timeout) == (
        "wwan0", ("192.0.2.53", 53), 3.0)
    own = ProbeOptions(resolver=("198.51.100.53", 5353))
    assert lte.options(own).resolver == ("198.51.100.53", 5353)


def test_no_paths_is_one_default_path_with_the_agents_labels(tmp_path: Path) -> None:
    text = CONFIG.split("paths:")[0] + "spool: {path: /tmp/x.db}\n"
    (default,) = ProbePath.from_config(load(tmp_path, text))
    assert (default.name, default.interface, default.source_address) == ("default", None, None)
    assert default.labels == {"region": "eu-west", "carrier": "home-isp", "site": "lab-1"}


@pytest.mark.parametrize(("old", "new", "words"), [
    ("name: lte", "name: wifi", "two paths are named 'wifi'"),
    ("interface: wwan0", "interface: a-very-long-name0",
     "paths.1.interface: too long: at most 15 characters"),
    ("resolver: 192.0.2.53", "resolver: dns.example", "paths.1.resolver"),
    ("network_type: cellular", "network_type: 5g", "paths.1.labels.network_type"),
    ("asn: 3320", "asn: -1", "paths.0.labels.asn"),
    ("interface: wlan0", "source_address: wlan0", "'wlan0' is not an IP address"),
])
def test_bad_paths_are_refused_by_file_and_line(tmp_path: Path, old: str, new: str,
                                                words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, CONFIG.replace(old, new))
    assert words in str(info.value) and "agent.yaml:" in str(info.value), info.value


def fake_result(target: Target) -> Result:
    return Result(url=target.url, protocol=target.protocol, success=True, reason=Reason.OK,
                  message="logged in", started_at=datetime.now(UTC), duration_ns=1,
                  phases=[], resolved_address="127.0.0.1")


def fake_context(interface: str | None, **kw: Any) -> NetworkContext:
    kind = kw["configured_type"] or {"wlan9": "wifi"}.get(interface or "", "unknown")
    return NetworkContext(network_type=kind, ssid="Cafe" if kind == "wifi" else None,
                          carrier=kw["carrier"], asn=kw["asn"], path=kw["path"],
                          interface=interface)


async def test_every_run_probes_every_path_at_the_same_moment() -> None:
    started: list[tuple[str | None, float]] = []
    reports: list[Report] = []

    async def probe(target: Target, options: ProbeOptions) -> Result:
        started.append((options.interface, asyncio.get_running_loop().time()))
        await asyncio.sleep(0.05)
        return fake_result(target)

    async def sink(report: Report) -> None:
        reports.append(report)

    paths = [
        ProbePath("wifi", interface="wlan9", labels={"region": "eu", "asn": "3320"},
                  learn=fake_context),
        ProbePath("lte", interface="wwan9", labels={"carrier": "mobile-co"},
                  network_type="cellular", learn=fake_context),
    ]
    sched = Scheduler(sink, paths, concurrency=10, probe=probe)
    sched.replace(LOCAL, [CheckSpec.build("c", "tcp://127.0.0.1:9", 0.3, None)])
    await asyncio.sleep(1.0)
    await sched.stop()
    assert len(started) >= 4 and len(reports) == len(started)
    # Paired: the two paths' attempts of one run start together, one run after another.
    for (a, ta), (b, tb) in zip(started[::2], started[1::2], strict=False):
        assert {a, b} == {"wlan9", "wwan9"} and abs(ta - tb) < 0.04
    by_path = {r.labels["path"]: r for r in reports}
    assert by_path["wifi"].labels == {"region": "eu", "carrier": "", "asn": "3320",
                                      "path": "wifi", "network_type": "wifi"}
    assert by_path["lte"].labels == {"region": "", "carrier": "mobile-co", "path": "lte",
                                     "network_type": "cellular"}
    wifi = by_path["wifi"].result.network
    assert wifi is not None and (wifi.ssid, wifi.asn, wifi.interface) == ("Cafe", 3320, "wlan9")
    # The traces of two paths' attempts are two traces.
    assert len({r.trace_id for r in reports}) == len(reports)


async def test_a_path_bound_to_an_interface_sends_dns_and_tcp_by_it(tmp_path: Path) -> None:
    """Bound to lo, an attempt to a loopback target succeeds and its context names lo and the
    source address; bound to an interface that does not exist, it cannot get out."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0,
                                        family=socket.AF_INET)
    port = server.sockets[0].getsockname()[1]
    try:
        lo = ProbePath("lo", interface="lo", network_type="wired")
        result = await run_check(parse_target(f"tcp://127.0.0.1:{port}"),
                                 lo.options(ProbeOptions(timeout=2.0)))
        assert result.reason is Reason.OK, result.message
        ctx = await lo.context(result.resolved_address)
        assert (ctx.interface, ctx.source_address, ctx.network_type) == (
            "lo", "127.0.0.1", "wired")
        gone = ProbePath("gone", interface="lp-nonexist0")
        result = await run_check(parse_target(f"tcp://127.0.0.1:{port}"),
                                 gone.options(ProbeOptions(timeout=2.0)))
        assert result.reason is Reason.TCP_UNREACHABLE and "lp-nonexist0" in result.message
        # DNS on a path that cannot get out fails in the dns phase, not by the default route.
        result = await run_check(parse_target(f"tcp://name.test:{port}"), gone.options(
            ProbeOptions(timeout=1.0, resolver=("127.0.0.1", 53))))
        assert result.phases[0].name == "dns" and not result.success
        assert result.reason.step == "network", result.reason
    finally:
        server.close()


def report(seq: int, labels: dict[str, str], ok: bool = True,
           phases: tuple[tuple[str, float], ...] = (("tcp", 0.004), ("login", 0.02))) -> Report:
    result = Result(
        url="mqtt://probe@mqtt.test:1883", protocol="mqtt", success=ok,
        reason=Reason.OK if ok else Reason.TCP_TIMEOUT, message="", duration_ns=30_000_000,
        started_at=datetime.now(UTC),
        phases=[Phase(name, True, 0, int(s * 1e9)) for name, s in phases],
        network=NetworkContext(network_type=labels.get("network_type", "unknown"), path="p",
                               interface="veth0", source_address="198.51.100.1",
                               signal_dbm=-61.0, asn=64500),
    )
    return Report(result, seq, "chat", os.urandom(16), labels=labels)


def test_the_network_context_crosses_the_wire() -> None:
    r = report(1, {"path": "wifi", "network_type": "wifi"})
    back = from_wire(to_wire(r))
    assert back.result.network == r.result.network
    assert back.result.to_dict()["network"]["source_address"] == "198.51.100.1"
    r.result.network = NetworkContext(network_type="unknown")  # nothing optional known
    assert from_wire(to_wire(r)).result.network == NetworkContext(network_type="unknown")
    r.result.network = None
    assert from_wire(to_wire(r)).result.network is None


def test_metrics_take_each_results_path_labels_and_fall_back_to_the_agents() -> None:
    fleet = FleetState()
    fleet.labels["a1"] = {"region": "eu-west", "carrier": "home-isp", "network_type": "wired"}
    metrics = ResultMetrics(fleet)
    ingest = Ingest(fleet, [metrics])
    ingest.batch("a1", {}, [
        to_wire(report(1, {"path": "wifi", "network_type": "wifi"})),
        to_wire(report(2, {"path": "lte", "network_type": "cellular", "carrier": "mobile-co"},
                       ok=False, phases=(("tcp", 0.3),))),
        to_wire(report(3, {})),  # an agent without paths: all the agent's
        to_wire(report(4, {"network_type": "satellite", "region": ""})),  # closed set; empty
    ])
    # The registry's fixed labels win over everything, as in Accepted.reports().
    ingest.batch("a1", {"region": "us-east"}, [to_wire(report(5, {"region": "eu"}))])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in parse_render(metrics.render) for s in m.samples
    }

    def get(name: str, **labels: str) -> float:
        want = {"check": "chat", "protocol": "mqtt", "target": "mqtt://probe@mqtt.test:1883",
                **labels}
        return samples[(name, tuple(sorted(want.items())))]

    wifi = {"region": "eu-west", "carrier": "home-isp", "network_type": "wifi"}
    lte = {"region": "eu-west", "carrier": "mobile-co", "network_type": "cellular"}
    wired = {"region": "eu-west", "carrier": "home-isp", "network_type": "wired"}
    assert get("loginprobe_attempts_total", agent="a1", result="success", reason="ok",
               **wifi) == 1
    assert get("loginprobe_attempts_total", agent="a1", result="failure",
               reason="tcp_timeout", **lte) == 1
    assert get("loginprobe_success", agent="a1", **lte) == 0
    assert get("loginprobe_success", agent="a1", **wired) == 1
    assert get("loginprobe_success", agent="a1", region="", carrier="home-isp",
               network_type="unknown") == 1
    assert get("loginprobe_success", agent="a1", region="us-east", carrier="home-isp",
               network_type="wired") == 1
    assert get("loginprobe_phase_duration_seconds_bucket", phase="tcp", le="0.25", **lte) == 0
    assert get("loginprobe_phase_duration_seconds_bucket", phase="tcp", le="0.5", **lte) == 1
    assert get("loginprobe_phase_duration_seconds_count", phase="login", **wifi) == 1
    assert get("loginprobe_phase_duration_seconds_sum", phase="tcp", **wifi) == 0.004
    assert get("loginprobe_duration_seconds_bucket", le="+Inf", **wifi) == 1
    assert ("loginprobe_phase_duration_seconds_count", ()) not in samples
    # The path's own name is no metric label (CONTRACT.md closes the set).
    assert not any("path" in dict(labels) for _, labels in samples)

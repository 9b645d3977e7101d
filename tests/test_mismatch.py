"""The shared "the other end speaks something else" classification and its follow-up: what it
finds on real servers, what it never does (send the password, outlast the deadline, run more
than once per check and interval), and a duration that ends at the verdict."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from devstack import fakes, faults
from devstack.servers import Servers
from loginprobe.agent.config import load_config
from loginprobe.agent.scheduler import CheckSpec, FollowUpGate
from loginprobe.codec import Report, from_wire, to_wire
from loginprobe.contract import Reason, Step
from loginprobe.probes import mismatch
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.result import Result
from tests.probing import check, closed_port, options


def assert_reason(result: Result, reason: Reason, step: Step) -> None:
    got = (result.reason, result.reason.step)
    assert got == (reason, step), result.to_dict(transcript=True)


# -- the classification ----------------------------------------------------------------------


def test_first_bytes_name_the_protocol() -> None:
    assert mismatch.sniff(b"\x16\x03\x01\x00\x2a") == "tls"
    assert mismatch.sniff(b"\x15\x03\x03\x00\x02\x02\x46") == "tls"
    assert mismatch.sniff(b"HTTP/1.1 400 Bad Request\r\n") == "http"
    assert mismatch.sniff(b"<?xml version='1.0'?><stream:stream") == "xmpp"
    assert mismatch.sniff(b"\x20\x02\x00\x05") == "mqtt"
    assert mismatch.sniff(b"SSH-2.0-OpenSSH_9.2\r\n") == "ssh"
    assert mismatch.sniff(b"\x00\xff garbage") is None
    assert mismatch.sniff(b"") is None


# -- what the follow-up finds on real servers ---------------------------------------------------


async def test_a_reset_with_evidence_is_a_mismatch_and_says_what_is_true(servers: Servers) -> None:
    result = await check(f"mqtt://alice@mqtt.test:{servers.mqtts_port}", options(servers))
    assert_reason(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG)
    finding = f"port {servers.mqtts_port} speaks MQTT over TLS: use mqtts://"
    assert result.findings == [finding]
    assert finding in result.message
    assert result.hint.startswith(f"Port {servers.mqtts_port} speaks MQTT over TLS")
    # The attempt's own phases stand: the follow-up adds none.
    assert [p.name for p in result.phases] == ["dns", "tcp", "login"]
    shown = result.to_dict(transcript=True)
    assert shown["findings"] == [finding]
    assert any(line["data"] == f"finding: {finding}" for line in shown["transcript"])


async def test_https_at_a_plain_mqtt_port(servers: Servers) -> None:
    result = await check(f"https://alice@http.test:{servers.mqtt_port}/login", options(servers))
    assert_reason(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG)
    assert result.findings[0] == f"port {servers.mqtt_port} speaks MQTT: use mqtt://"


async def test_a_firewall_reset_after_the_handshake_stays_tcp_reset(servers: Servers) -> None:
    # The same reset as mqtt:// at the TLS port, but every opening (TLS or not, any
    # protocol) is reset too: no evidence of another protocol, so the network is blamed.
    with faults.reset_after_handshake(servers.mqtt_port):
        result = await check(f"mqtt://alice@mqtt.test:{servers.mqtt_port}", options(servers))
    assert_reason(result, Reason.TCP_RESET, Step.NETWORK)
    assert any("resets every opening" in f for f in result.findings)
    assert [(p.name, p.ok) for p in result.phases] == [
        ("dns", True), ("tcp", True), ("login", False)
    ]


async def test_a_reset_from_a_port_that_speaks_the_protocol_stays_tcp_reset() -> None:
    # The attempt is reset; the follow-up's TLS and plaintext openings are reset as well.
    async with fakes.serve(fakes.reset) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}", options_for_fakes())
    assert_reason(result, Reason.TCP_RESET, Step.NETWORK)


async def test_a_refused_port_finds_the_sibling_that_answers(servers: Servers) -> None:
    # 127.0.0.2 has nothing on 1883; the servers' TLS broker is forwarded to its 8883.
    async with fakes.serve(fakes.forward(servers.mqtts_port), host="127.0.0.2", port=8883):
        result = await check("mqtt://alice@127.0.0.2", options(servers))
    assert_reason(result, Reason.TCP_REFUSED, Step.NETWORK)
    assert result.findings[0] == (
        "nothing listens on 1883, but 8883 answers MQTT over direct TLS: "
        "use mqtts://127.0.0.2:8883"
    )
    assert result.findings[0] in result.message
    assert "follow-up: port 443: refuses connections" in [
        t.text for t in result.transcript
    ]


async def test_a_refused_xmpp_port_finds_direct_tls_on_5223(servers: Servers) -> None:
    async with fakes.serve(fakes.forward(servers.xmpps_port), host="127.0.0.2", port=5223):
        result = await check("xmpp://alice@xmpp.test:5222?host=127.0.0.2", options(servers))
    assert_reason(result, Reason.TCP_REFUSED, Step.NETWORK)
    assert result.findings[0] == (
        "nothing listens on 5222, but 5223 answers XMPP over direct TLS: "
        "use xmpps://127.0.0.2:5223"
    )


async def test_switched_off(servers: Servers) -> None:
    result = await check(
        f"mqtts://alice@mqtt.test:{servers.mqtt_port}", options(servers, follow_up=False)
    )
    assert_reason(result, Reason.TCP_RESET, Step.NETWORK)
    assert result.findings == []
    assert not any("follow-up" in t.text for t in result.transcript)


async def test_the_gate_is_asked_and_obeyed(servers: Servers) -> None:
    asked: list[bool] = []

    def gate() -> bool:
        asked.append(True)
        return False

    result = await check(
        f"mqtts://alice@mqtt.test:{servers.mqtt_port}", options(servers, follow_up_gate=gate)
    )
    assert asked == [True]
    assert_reason(result, Reason.TCP_RESET, Step.NETWORK)
    # A success never asks.
    opts = options(servers, follow_up_gate=gate)
    await check(f"mqtt://alice@mqtt.test:{servers.mqtt_port}", opts)
    assert asked == [True]


def test_one_follow_up_per_check_per_interval() -> None:
    now = [100.0]
    gate = FollowUpGate(60.0, clock=lambda: now[0])
    assert gate() is True
    assert gate() is False  # another path of the same run
    now[0] += 59.0  # the next run, a little early
    assert gate() is True
    now[0] += 10.0
    assert gate() is False


# -- bounds --------------------------------------------------------------------------------------


def options_for_fakes(timeout: float = 3.0) -> ProbeOptions:
    return ProbeOptions(password="s3cret-Pw", timeout=timeout)


async def test_a_stalling_follow_up_does_not_stall_the_attempt() -> None:
    timeout = 2.0
    async with fakes.serve(fakes.first_then(fakes.reset, fakes.stall)) as port:
        start = time.monotonic()
        result = await check(f"mqtt://alice@127.0.0.1:{port}", options_for_fakes(timeout=timeout))
        elapsed = time.monotonic() - start
    assert_reason(result, Reason.TCP_RESET, Step.NETWORK)
    texts = [t.text for t in result.transcript]
    assert any(t.startswith("follow-up stopped at its") for t in texts), texts
    # Every follow-up line falls inside the deadline.
    assert all(t.offset_ns < timeout * 1e9 for t in result.transcript)
    assert elapsed < timeout + 1.0  # the deadline, plus closing the connections


async def test_no_time_left_means_no_follow_up(servers: Servers) -> None:
    async with fakes.serve(fakes.first_then(fakes.stall, fakes.stall)) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}", options_for_fakes(timeout=0.3))
    assert result.reason is Reason.LOGIN_TIMEOUT  # not a suspicious failure: no follow-up
    assert result.findings == []


def test_findings_travel_to_the_collector() -> None:
    result = Result(
        url="mqtt://alice@mqtt.test:8883", protocol="mqtt", success=False,
        reason=Reason.PROTOCOL_MISMATCH, message="reset", started_at=datetime.now(UTC),
        duration_ns=1, phases=[], findings=["port 8883 speaks TLS: use mqtts://"],
    )
    back = from_wire(to_wire(Report(result, seq=1, check="c", trace_id=b"\0" * 16))).result
    assert back.findings == result.findings
    assert back.hint == result.hint
    assert back.hint.startswith("Port 8883 speaks TLS: use mqtts://. ")
    json.dumps(back.to_dict())


# -- duration ends at the verdict -----------------------------------------------------------------


async def test_duration_ends_at_the_verdict_when_the_server_closes_late(servers: Servers) -> None:
    delay = 0.1
    handler = fakes.late_close(
        servers.xmpps_port, delay, client_tls=servers.client_context(), server_name="xmpp.test"
    )
    async with fakes.serve(handler, servers.server_context()) as port:
        result = await check(
            f"xmpps://alice@xmpp.test:{port}?host=127.0.0.1", options(servers)
        )
    assert result.reason is Reason.OK, result.to_dict(transcript=True)
    last_phase_end = max(p.start_ns + p.duration_ns for p in result.phases)
    closed_at = next(
        t.offset_ns
        for t in result.transcript
        if t.direction == "<" and "</stream:stream>" in t.text
    )
    # The server's close came `delay` after we asked for it; none of that is login time.
    assert result.duration_ns < closed_at
    assert result.duration_ns - last_phase_end < delay * 1e9 / 2


async def test_refused_without_siblings_says_so(servers: Servers) -> None:
    port = closed_port()
    result = await check(f"tcp://127.0.0.1:{port}", options(servers))
    assert_reason(result, Reason.TCP_REFUSED, Step.NETWORK)
    assert result.findings == []  # tcp:// has no well-known ports to try


# -- switching it off ------------------------------------------------------------------------


def test_a_checks_follow_up_key_reaches_its_options(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "collector: {address: 127.0.0.1:7443, plaintext: true}\n"
        f"spool: {{path: {tmp_path / 'spool.db'}}}\n"
        "checks:\n"
        "  - {name: with, url: 'tcp://127.0.0.1:9'}\n"
        "  - {name: without, url: 'tcp://127.0.0.1:9', follow_up: false}\n",
        encoding="utf-8",
    )
    on, off = (CheckSpec.from_config(c) for c in load_config(path).checks)
    assert on.options().follow_up is True
    assert off.options().follow_up is False


async def test_the_cli_flag_switches_it_off(servers: Servers) -> None:
    url = f"mqtts://alice@mqtt.test:{servers.mqtt_port}"
    common = [url, "--resolver", servers.resolver, "--ca-file", str(servers.ca_file), "--json"]
    shown = {}
    for flag in ([], ["--no-follow-up"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loginprobe.cli", "check", *common, *flag,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "LOGINPROBE_PASSWORD": servers.password},
        )
        out, _ = await proc.communicate()
        shown[bool(flag)] = json.loads(out)
    assert shown[False]["reason"] == "protocol_mismatch"
    assert shown[False]["findings"] == [
        f"port {servers.mqtt_port} speaks MQTT without TLS: use mqtt://"
    ]
    assert shown[False]["hint"].startswith(f"Port {servers.mqtt_port} speaks MQTT without TLS")
    assert shown[True]["reason"] == "tcp_reset"
    assert "findings" not in shown[True]

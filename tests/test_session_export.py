"""A held session end to end: a real agent holding a `mode: session` check against the real
mosquitto or prosody, a real collector, the server restarted under the session and the
collector restarted too: the session metrics of CONTRACT.md section 6, the session and
reconnect spans, the event-log lines, and every event received exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for
from devstack.servers import Servers
from tests.test_agent import assert_exactly_once
from tests.test_exports import attrs, receiver, scrape

SESSION_METRICS = {
    "loginprobe_session_up": ("gauge", {"check", "protocol", "target", "agent", "region",
                                        "carrier", "network_type"}),
    "loginprobe_session_drops": ("counter", {"check", "protocol", "target", "agent", "region",
                                             "carrier", "network_type", "reason"}),
    "loginprobe_session_reconnect_duration_seconds": (
        "histogram", {"check", "protocol", "target", "region", "carrier", "network_type"}),
    "loginprobe_keepalive_rtt_seconds": (
        "histogram", {"check", "protocol", "target", "region", "carrier", "network_type"}),
}


def sample(c: Collector, name: str, **labels: str) -> float:
    """The sum of the samples of name whose labels include these (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(scrape(c)):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def until(what: str, ready: Any, within: float = 20.0) -> None:
    # In a thread: the OTLP receiver runs on this event loop and must keep answering.
    await asyncio.to_thread(wait_for, what, ready, within)


@pytest.mark.parametrize("protocol,server,reason", [
    # prosody with stream management closes a resumable session without a stream error.
    ("mqtt", "mosquitto", "session_closed"), ("xmpp", "prosody", "session_closed")])
async def test_held_session_through_a_real_collector(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str,
    server: str, reason: str,
) -> None:
    monkeypatch.setenv("LOGINPROBE_TEST_HELD", servers.password)
    port = servers.xmpp_port if protocol == "xmpp" else servers.mqtt_port
    host = "xmpp.test" if protocol == "xmpp" else "127.0.0.1"
    url = f"{protocol}://alice@{host}:{port}"
    async with receiver() as (spans, address):
        token, digest = new_token()
        events = tmp_path / "events.jsonl"
        config = collector_config(
            tmp_path, pki=None, agents=[{"id": "a1", "token_sha256": digest}],
            traces={"endpoint": address, "insecure": True, "success_sample_ratio": 0.0},
            event_log={"file": str(events)})
        collector = Collector(tmp_path / "collector", config)
        await asyncio.to_thread(collector.start_healthy)
        agent = Agent(tmp_path / "agent", collector, token=token, checks=[{
            "name": "held", "url": url, "mode": "session", "keepalive": "0.3s",
            "password_env": "LOGINPROBE_TEST_HELD", "ca_file": str(servers.ca_file),
            "resolver": f"127.0.0.1:{servers.dns_port}"}])
        agent.start()
        try:
            await until("the session logged in", lambda: sample(
                collector, "loginprobe_session_up", check="held", agent="a1") == 1)

            await asyncio.sleep(1.0)  # keepalives, reported with the drop
            # The server restarts under the held session.
            await asyncio.to_thread(servers.server_down, server)
            down = time.monotonic()
            await until("the drop", lambda: sample(
                collector, "loginprobe_session_drops_total", reason=reason) == 1)
            assert sample(collector, "loginprobe_session_up", check="held") == 0
            await asyncio.sleep(0.5)
            servers.server_up(server)
            downtime = time.monotonic() - down
            await until("the reconnect", lambda: sample(
                collector, "loginprobe_session_reconnect_duration_seconds_count") == 1)
            assert sample(collector, "loginprobe_session_up", check="held") == 1
            took = sample(collector, "loginprobe_session_reconnect_duration_seconds_sum")
            assert took >= downtime - 0.3, (took, downtime)
            assert sample(collector, "loginprobe_keepalive_rtt_seconds_count") >= 2

            # Every session metric with exactly the contract's labels; keepalives and
            # drops are not login attempts.
            families = {f.name: f for f in text_string_to_metric_families(scrape(collector))}
            for name, (kind, labels) in SESSION_METRICS.items():
                family = families[name]
                assert family.type == kind and family.samples, name
                for s in family.samples:
                    assert set(s.labels) - {"le"} == labels, (name, s.labels)
            attempts = sum(s.value for s in families["loginprobe_attempts"].samples
                           if s.name == "loginprobe_attempts_total")
            reconnects = sum(1 for line in collector.results()
                             if line.get("session", {}).get("kind") == "reconnect")
            assert attempts == 1 + reconnects

            # The collector restarts under the held session: nothing is lost or doubled.
            await asyncio.to_thread(collector.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(collector.start_healthy)
            await asyncio.to_thread(wait_for, "the agent back", lambda: sample(
                collector, "loginprobe_agent_connected", agent="a1") == 1, 20.0)
        finally:
            assert await asyncio.to_thread(agent.stop) == 0, agent.output()
            await asyncio.to_thread(collector.stop)
        assert_exactly_once(collector, "a1", agent)
        kinds = [line["session"]["kind"] for line in collector.results()]
        assert kinds[0] == "login" and kinds.count("drop") == 1, kinds
        assert kinds.index("drop") < kinds.index("reconnect"), kinds

        lines = [json.loads(line) for line in events.read_text().splitlines()]
        dropped = [x for x in lines if x["event"] == "session_dropped"]
        recovered = [x for x in lines if x["event"] == "session_recovered"]
        assert len(dropped) == 1 and dropped[0]["reason"] == reason, lines
        assert dropped[0]["phase"] in ("idle", "keepalive") and dropped[0]["hint"]
        assert len(recovered) == 1 and recovered[0]["dropped_reason"] == reason
        assert recovered[0]["downtime_seconds"] >= downtime - 0.3
        # prosody offers stream management: the reconnect tried to resume (its restart had
        # ended the session, so it could not) and says so; MQTT has nothing to resume.
        assert recovered[0]["resumed"] is False
        logged = [line["session"] for line in collector.results()
                  if line["session"]["kind"] == "reconnect" and line["result"]["success"]]
        assert (logged[-1]["resume_ns"] > 0) == (protocol == "xmpp"), logged
        assert servers.password not in events.read_text()

        named = {s.name: s for _, s in spans.spans()}
        segment, back = named[f"session {protocol}"], named[f"reconnect {protocol}"]
        assert attrs(segment)["error.type"] == reason
        assert attrs(segment)["loginprobe.session.segment"] == 1
        assert segment.end_time_unix_nano > segment.start_time_unix_nano
        # The reconnect starts at the drop and holds the attempt that logged in again.
        # (Both in the agent's clock; the events carry milliseconds.)
        assert abs(back.start_time_unix_nano - segment.end_time_unix_nano) < 20e6
        login = [s for _, s in spans.spans()
                 if s.trace_id == back.trace_id and s.name == f"login {protocol}"]
        assert len(login) == 1 and login[0].parent_span_id == back.span_id
        assert attrs(back)["loginprobe.session.attempts"] >= 1

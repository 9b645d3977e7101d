"""The collector as a real process on loopback, driven by a raw gRPC client: credentials,
identity, bad input, dedupe, check assignment and reload, shutdown, and config errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack.certs import PKI
from devstack.fleet import ROOT, Collector, collector_config, new_token, wait_for, write_yaml
from loginprobe.codec import Report, to_wire
from loginprobe.collector.config import load_config
from loginprobe.contract import Reason
from loginprobe.result import Phase, Result
from loginprobe.wire import collector_pb2 as pb

TIMEOUT = 5.0
CONNECT = "/loginprobe.v1.CollectorService/Connect"


def _serialize(msg: pb.ConnectRequest | bytes) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def probe_result(seq: int, check: str = "c1", reason: Reason = Reason.OK,
                 labels: dict[str, str] | None = None) -> pb.ProbeResult:
    ok = reason is Reason.OK
    result = Result(url="tcp://127.0.0.1:1", protocol="tcp", success=ok, reason=reason,
                    message="", started_at=datetime.now(UTC), duration_ns=1000,
                    phases=[Phase("tcp", ok, 0, 1000)])
    return to_wire(Report(result, seq, check, os.urandom(16), labels=labels or {}))


def batch(*seqs: int) -> pb.ConnectRequest:
    return pb.ConnectRequest(results=pb.ResultBatch(results=[probe_result(s) for s in seqs]))


def hello(labels: dict[str, str] | None = None, last_acked: int = 0,
          spool_id: str = "") -> pb.ConnectRequest:
    return pb.ConnectRequest(hello=pb.Hello(version="test", labels=labels or {},
                                            last_acked_seq=last_acked, spool_id=spool_id))


class Stream:
    """One Connect stream, as an agent would open it but without the agent's code."""

    def __init__(self, collector: Collector, token: str | None = None,
                 cert: Any = None) -> None:
        self.channel = collector.channel(cert)
        connect = self.channel.stream_stream(
            CONNECT, request_serializer=_serialize,
            response_deserializer=pb.ConnectResponse.FromString)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.call = connect(metadata=metadata)

    async def send(self, msg: pb.ConnectRequest | bytes) -> None:
        await asyncio.wait_for(self.call.write(msg), TIMEOUT)

    async def read(self) -> pb.ConnectResponse:
        msg = await asyncio.wait_for(self.call.read(), TIMEOUT)
        assert msg is not grpc.aio.EOF, "the stream ended"
        assert isinstance(msg, pb.ConnectResponse)
        return msg

    async def open(self, labels: dict[str, str] | None = None, last_acked: int = 0,
                   spool_id: str = "") -> tuple[pb.Welcome, pb.CheckUpdate]:
        await self.send(hello(labels, last_acked, spool_id))
        welcome, checks = await self.read(), await self.read()
        assert welcome.HasField("welcome") and checks.HasField("checks")
        return welcome.welcome, checks.checks

    async def ack(self, msg: pb.ConnectRequest) -> int:
        await self.send(msg)
        reply = await self.read()
        assert reply.HasField("ack"), reply
        return reply.ack.seq

    async def status(self, *messages: pb.ConnectRequest | bytes) -> tuple[grpc.StatusCode, str]:
        """Send messages, then read until the collector ends the stream: its status. The
        collector may end it before a message is even sent, so a failed write is fine."""
        try:
            for msg in messages:
                await self.send(msg)
            while await asyncio.wait_for(self.call.read(), TIMEOUT) is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass
        return await self.call.code(), await self.call.details()

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


TOKENS = {name: new_token() for name in ("a1", "a2", "a3", "bad", "gone")}


@pytest.fixture(scope="module")
def collector(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """One TLS collector with bearer tokens, shared by the tests that do not restart it."""
    folder = tmp_path_factory.mktemp("collector")
    agents: list[dict[str, Any]] = [
        {"id": "a1", "token_sha256": TOKENS["a1"][1],
         "labels": {"region": "eu-west", "carrier": "acme"}},
        {"id": "a2", "token_sha256": TOKENS["a2"][1]},
        {"id": "bad", "token_sha256": TOKENS["bad"][1]},
        {"id": "gone", "token_sha256": TOKENS["gone"][1], "revoked": True},
    ]
    proc = Collector(folder, collector_config(folder, pki=pki, agents=agents,
                                              limits={"max_message_bytes": 65536,
                                                      "max_batch_results": 50}), pki)
    proc.start_healthy()
    yield proc
    assert proc.stop() == 0, proc.output()


def metric(c: Collector, name: str) -> float:
    return c.metrics().get(name, 0.0)


async def test_token_credentials_refused(collector: Collector) -> None:
    before = collector.metrics()
    cases = [
        (None, grpc.StatusCode.UNAUTHENTICATED, "no credential"),
        ("not-a-token", grpc.StatusCode.UNAUTHENTICATED, "unknown credential"),
        (TOKENS["a3"][0], grpc.StatusCode.UNAUTHENTICATED, "unknown credential"),
        (TOKENS["gone"][0], grpc.StatusCode.PERMISSION_DENIED, "agent gone is revoked"),
    ]
    for token, code, words in cases:
        s = Stream(collector, token)
        got, details = await s.status(hello())
        assert (got, words in details) == (code, True), details
        assert TOKENS["gone"][0] not in details
        await s.close()
    after = collector.metrics()
    key = 'loginprobe_collector_results_rejected_total{reason="%s"}'
    assert after[key % "unauthenticated"] - before[key % "unauthenticated"] == 3
    assert after[key % "permission_denied"] - before[key % "permission_denied"] == 1
    assert TOKENS["gone"][0] not in collector.output()


async def test_identity_comes_from_the_credential(collector: Collector) -> None:
    """a1 claims another region and a2's name in its labels: the registry fixes region and
    carrier, and everything is recorded under a1, the credential's agent."""
    s = Stream(collector, TOKENS["a1"][0])
    claimed = {"region": "us-east", "network_type": "cellular", "agent": "a2"}
    welcome, _ = await s.open(claimed)
    assert welcome.agent_id == "a1"
    assert dict(welcome.labels) == {"region": "eu-west", "carrier": "acme",
                                    "network_type": "cellular", "agent": "a2"}
    mark = welcome.last_processed_seq
    msg = pb.ConnectRequest(results=pb.ResultBatch(results=[
        probe_result(mark + 1, labels={"region": "us-east", "network_type": "cellular"})]))
    assert await s.ack(msg) == mark + 1
    line = [r for r in collector.results() if r["agent"] == "a1"][-1]
    assert line["seq"] == mark + 1 and line["check"] == "c1"
    assert line["result"]["reason"] == "ok"
    m = collector.metrics()
    assert m['loginprobe_agent_connected{agent="a1",carrier="acme",network_type="cellular",'
             'region="eu-west"}'] == 1
    assert m.get('loginprobe_collector_results_received_total{agent="a2"}', 0) == 0
    assert m['loginprobe_agent_last_result_timestamp_seconds{agent="a1"}'] > 0
    await s.close()


async def test_bad_messages_refused_while_another_stream_goes_on(collector: Collector) -> None:
    good = Stream(collector, TOKENS["a2"][0])
    welcome, _ = await good.open({"network_type": "wifi"})
    seq = welcome.last_processed_seq
    before = collector.metrics()
    big = pb.ConnectRequest(results=pb.ResultBatch(results=[
        probe_result(i, check="x" * 2000) for i in range(1, 40)]))
    cases: list[tuple[str, list[pb.ConnectRequest | bytes], grpc.StatusCode]] = [
        ("no_hello", [batch(1)], grpc.StatusCode.INVALID_ARGUMENT),
        ("malformed", [b"\xff\xff\xff\xff"], grpc.StatusCode.INVALID_ARGUMENT),
        ("malformed", [hello(), b"\x0a\x05abc"], grpc.StatusCode.INVALID_ARGUMENT),
        ("oversized", [hello(), big], grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("second_hello", [hello(), hello()], grpc.StatusCode.INVALID_ARGUMENT),
        ("out_of_order", [hello(), batch(10**6 + 5, 10**6 + 3)],
         grpc.StatusCode.INVALID_ARGUMENT),
        ("batch_too_large", [hello(), batch(*range(10**6, 10**6 + 51))],
         grpc.StatusCode.RESOURCE_EXHAUSTED),
    ]
    for reason, messages, code in cases:
        bad = Stream(collector, TOKENS["bad"][0])
        got, details = await bad.status(*messages)
        assert got == code, (reason, details)
        await bad.close()
        seq += 1
        assert await good.ack(batch(seq)) == seq, f"the good stream stalled after {reason}"
    after = collector.metrics()
    key = 'loginprobe_collector_results_rejected_total{reason="%s"}'
    for reason in {c[0] for c in cases}:
        want = sum(c[0] == reason for c in cases)
        assert after[key % reason] - before[key % reason] == want, reason
    # out_of_order refused the whole batch: nothing of it was processed.
    assert not [r for r in collector.results() if r["agent"] == "bad"]
    await good.close()


async def test_duplicates_are_acked_and_counted_once(collector: Collector) -> None:
    received = 'loginprobe_collector_results_received_total{agent="a2"}'
    duplicate = 'loginprobe_collector_results_duplicate_total{agent="a2"}'
    s = Stream(collector, TOKENS["a2"][0])
    welcome, _ = await s.open()
    base = welcome.last_processed_seq
    m0 = collector.metrics()
    assert await s.ack(batch(*range(base + 1, base + 6))) == base + 5
    assert await s.ack(batch(*range(base + 3, base + 8))) == base + 7  # 3 of 5 again
    await s.close()
    # A reconnect replays everything: the collector already has it all.
    s = Stream(collector, TOKENS["a2"][0])
    welcome, _ = await s.open()
    assert welcome.last_processed_seq == base + 7
    assert await s.ack(batch(*range(base + 1, base + 8))) == base + 7
    # An invalid result is dropped and counted, but acknowledged so it cannot block.
    bad = probe_result(base + 8)
    bad.reason = "no_such_reason"
    assert await s.ack(pb.ConnectRequest(results=pb.ResultBatch(results=[bad]))) == base + 8
    await s.close()
    m1 = collector.metrics()
    assert m1[received] - m0.get(received, 0) == 7
    assert m1[duplicate] - m0.get(duplicate, 0) == 3 + 7
    invalid = 'loginprobe_collector_results_rejected_total{reason="invalid_result"}'
    assert m1[invalid] - m0[invalid] == 1
    seqs = [r["seq"] for r in collector.results() if r["agent"] == "a2" and r["seq"] > base]
    assert seqs == list(range(base + 1, base + 8))


async def test_batches_over_the_rate_are_delayed_not_refused(collector: Collector) -> None:
    """20 batches/s per agent (the default): 40 batches take about a second longer than
    the first 20 (the burst), and all of them are acknowledged."""
    s = Stream(collector, TOKENS["a1"][0])
    welcome, _ = await s.open()
    seq = welcome.last_processed_seq
    await asyncio.sleep(1.1)  # a full bucket
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(1, 41):
        assert await s.ack(batch(seq + i)) == seq + i
    assert 0.8 < loop.time() - started < 3.0
    await s.close()


async def test_newer_stream_of_the_same_agent_wins(collector: Collector) -> None:
    old = Stream(collector, TOKENS["a2"][0])
    await old.open()
    new = Stream(collector, TOKENS["a2"][0])
    welcome, _ = await new.open()
    code, details = await old.status()
    assert code == grpc.StatusCode.ABORTED and "newer stream wins" in details
    seq = welcome.last_processed_seq + 1
    assert await new.ack(batch(seq)) == seq
    await old.close()
    await new.close()


async def test_mtls_identity_and_refusals(pki: PKI, tmp_path: Path) -> None:
    agents: list[dict[str, Any]] = [
        {"id": "m1", "cert_cn": "agent-m1", "labels": {"region": "eu-west"}},
        {"id": "m2", "cert_san": "spiffe://fleet/m2"},
        {"id": "m3", "cert_cn": "agent-m3", "revoked": True},
    ]
    c = Collector(tmp_path, collector_config(tmp_path, pki=pki, agents=agents, mtls=True), pki)
    c.start_healthy()
    try:
        s = Stream(c, cert=pki.issue("agent-m1"))
        welcome, _ = await s.open({"region": "us-east"})
        assert (welcome.agent_id, welcome.labels["region"]) == ("m1", "eu-west")
        await s.close()
        s = Stream(c, cert=pki.issue("whatever", uris=("spiffe://fleet/m2",)))
        assert (await s.open())[0].agent_id == "m2"
        await s.close()
        other_ca = PKI(tmp_path / "other")
        refusals = [
            (pki.issue("agent-m3"), grpc.StatusCode.PERMISSION_DENIED),
            (pki.issue("agent-unknown"), grpc.StatusCode.UNAUTHENTICATED),
            # No certificate, or one of another CA: the TLS handshake itself fails.
            (None, grpc.StatusCode.UNAVAILABLE),
            (other_ca.issue("agent-m1"), grpc.StatusCode.UNAVAILABLE),
        ]
        for cert, code in refusals:
            s = Stream(c, cert=cert)
            got = await s.status(hello())
            assert got[0] == code, got
            await s.close()
    finally:
        assert c.stop() == 0, c.output()


async def test_assignment_by_selector_and_reload_without_reconnect(
        pki: PKI, tmp_path: Path) -> None:
    t1, t2, t3, t4 = new_token(), new_token(), new_token(), new_token()
    registry = tmp_path / "agents.yaml"
    agents: list[dict[str, Any]] = [
        {"id": "eu-cell", "token_sha256": t1[1], "labels": {"region": "eu-west"}},
        {"id": "us", "token_sha256": t2[1], "labels": {"region": "us-east"}},
        {"id": "doomed", "token_sha256": t3[1]},
    ]
    write_yaml(registry, {"agents": agents})
    checks: list[dict[str, Any]] = [
        {"name": "everyone", "url": "tcp://127.0.0.1:1"},
        {"name": "eu", "url": "https://alice@login.test/", "password_ref": "ALICE",
         "selector": {"region": "eu-west"}},
        {"name": "eu-cell", "url": "mqtts://bob@mqtt.test", "interval": "30s", "timeout": "5s",
         "selector": {"region": "eu-west", "network_type": "cellular"}},
    ]
    config = collector_config(tmp_path, pki=pki, agents=[], checks=checks)
    config["agents_file"] = str(registry)
    del config["agents"]
    c = Collector(tmp_path, config, pki)
    c.start_healthy()
    try:
        eu, us, doomed = (Stream(c, t[0]) for t in (t1, t2, t3))
        _, eu_checks = await eu.open({"network_type": "cellular"})
        _, us_checks = await us.open({"network_type": "cellular", "region": "eu-west"})
        await doomed.open()
        assert eu_checks.full and us_checks.full
        assert {k.name for k in eu_checks.upsert} == {"everyone", "eu", "eu-cell"}
        assert {k.name for k in us_checks.upsert} == {"everyone"}
        cell = next(k for k in eu_checks.upsert if k.name == "eu-cell")
        assert (cell.interval.seconds, cell.timeout.seconds) == (30, 5)
        eu_check = next(k for k in eu_checks.upsert if k.name == "eu")
        assert eu_check.password_ref == "ALICE"

        # Checks change (main file + SIGHUP): each stream gets only its changes.
        checks[1]["interval"] = "2m"
        checks[0]["selector"] = {"region": "us-east"}
        checks.append({"name": "us-only", "url": "tcp://127.0.0.1:2",
                       "selector": {"region": "us-east"}})
        config["checks"] = checks
        c.rewrite(config)
        c.signal(signal.SIGHUP)
        eu_update = (await eu.read()).checks
        assert not eu_update.full
        assert [k.name for k in eu_update.upsert] == ["eu"]
        assert eu_update.upsert[0].interval.seconds == 120
        assert list(eu_update.remove) == ["everyone"]
        us_update = (await us.read()).checks
        assert [k.name for k in us_update.upsert] == ["us-only"] and not us_update.remove
        # The same streams still carry results.
        assert await eu.ack(batch(1)) == 1

        # The registry file changes (no signal): revoked agents are cut off, new ones may
        # connect, fixed labels move an agent to other checks.
        agents[2]["revoked"] = True
        agents[1]["labels"] = {"region": "eu-west"}
        agents.append({"id": "newcomer", "token_sha256": t4[1]})
        write_yaml(registry, {"agents": agents})
        code, details = await doomed.status()
        assert code == grpc.StatusCode.PERMISSION_DENIED and "revoked" in details
        moved = (await us.read()).checks
        assert {k.name for k in moved.upsert} == {"eu", "eu-cell"}
        assert set(moved.remove) == {"everyone", "us-only"}
        newcomer = Stream(c, t4[0])
        assert (await newcomer.open())[0].agent_id == "newcomer"

        # A broken reload is refused and the running config stays.
        registry.write_text("agents:\n  - id: x\n    tokn_sha256: 00\n")
        wait_for("the refused reload", lambda: "config reload refused" in c.output())
        assert "agents.yaml:3" in c.output()
        assert await eu.ack(batch(2)) == 2
        for s in (eu, us, doomed, newcomer):
            await s.close()
    finally:
        assert c.stop() == 0, c.output()


async def test_graceful_shutdown_ends_streams_and_exits_0(tmp_path: Path) -> None:
    token, digest = new_token()
    c = Collector(tmp_path, collector_config(
        tmp_path, pki=None, agents=[{"id": "p1", "token_sha256": digest}], log_format="json"))
    c.start_healthy()
    logged = [json.loads(line) for line in c.output().splitlines()]
    assert any(e["level"] == "warning" and "PLAINTEXT" in e["message"] for e in logged)
    s = Stream(c, token)
    await s.open()
    assert await s.ack(batch(1, 2)) == 2
    c.signal(signal.SIGTERM)
    code, details = await s.status()
    assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
    await s.close()
    assert await asyncio.to_thread(c.wait, 10) == 0, c.output()
    assert json.loads(c.output().splitlines()[-1])["message"] == "stopped"


async def test_results_log_survives_kill_9(tmp_path: Path) -> None:
    """Killed after writing but before acknowledging: the restarted collector knows the
    agent's mark from the log, so the replay is counted as duplicates, never twice."""
    token, digest = new_token()
    c = Collector(tmp_path, collector_config(
        tmp_path, pki=None, agents=[{"id": "k1", "token_sha256": digest}]))
    c.start_healthy()
    s = Stream(c, token)
    await s.open()
    assert await s.ack(batch(1, 2, 3)) == 3
    await s.send(batch(4, 5))  # the ack may or may not leave before the kill
    wait_for("seq 5 in the results log", lambda: any(r["seq"] == 5 for r in c.results()))
    c.kill()
    await s.close()
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"agent": "k1", "seq": 6, "check"')  # half a line, as a kill mid-write leaves
    c.start_healthy()
    s = Stream(c, token)
    welcome, _ = await s.open(last_acked=3)
    assert welcome.last_processed_seq == 5
    assert await s.ack(batch(4, 5, 6)) == 6
    await s.close()
    assert [r["seq"] for r in c.results()] == [1, 2, 3, 4, 5, 6]
    assert c.metrics()['loginprobe_collector_results_duplicate_total{agent="k1"}'] == 2
    assert c.stop() == 0


def run_collector(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loginprobe.cli", "collector", "--config",
                           str(config)], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_a_config_error_is_said_once_of_a_key_the_file_has(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("allow_plaintext_loopback: true\nagents:\n  - id: a\n    token_sha256: abc\n")
    done = run_collector(config)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "cert_san" not in done.stderr  # a key the file does not have
    config.write_text("")
    done = run_collector(config)
    assert done.returncode == 2
    assert done.stderr == f"loginprobe collector: {config}: the file is empty\n"


@pytest.mark.parametrize(("text", "where", "words"), [
    ("listen: 127.0.0.1:7443\nallow_plaintext_loopback: true\nlisen: x\n", 3,
     "lisen: unknown key 'lisen': did you mean 'listen'?"),
    ("allow_plaintext_loopback: true\nchecks:\n  - name: c\n    url: ftp://x\n", 4,
     "unsupported scheme"),
    ("listen: 192.0.2.1:7443\nallow_plaintext_loopback: true\n", 2,
     "only allowed on a loopback"),
    ("allow_plaintext_loopback: true\nagents:\n  - id: a\n    token_sha256: abc\n", 4,
     "agents.0.token_sha256: expected the SHA-256 of the agent's token as 64 hex digits"),
    ("allow_plaintext_loopback: true\nagents:\n  - id: a\n  - id: b\n    cert_cn: b\n", 3,
     "exactly one credential"),
    ("allow_plaintext_loopback: true\nchecks:\n  - name: c\n    url: tcp://h:1\n"
     "    interval: 5s\n    timeout: 10s\n", 6, "must not exceed the interval"),
    ("allow_plaintext_loopback: true\n\tlisten: x\n", 2, "invalid YAML"),
    ("allow_plaintext_loopback: true\nagents:\n  - {id: a, cert_cn: x}\n  - {id: b, cert_cn: x}\n",
     2, "two agents share cert_cn 'x'"),
])
def test_invalid_config_exits_2_naming_file_and_line(
        tmp_path: Path, text: str, where: int, words: str) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(text)
    done = run_collector(config)
    assert done.returncode == 2, done.stderr
    assert f"{config}:{where}:" in done.stderr and words in done.stderr, done.stderr
    assert "listening" not in done.stderr


def test_unreadable_tls_files_are_config_errors(tmp_path: Path, pki: PKI) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    config = tmp_path / "collector.yaml"
    config.write_text(f"listen: 127.0.0.1:7443\ntls:\n  cert: {tmp_path}/bad.pem\n"
                      f"  key: {pki.server.key}\n")
    done = run_collector(config)
    assert done.returncode == 2
    assert f"{config}:3: tls.cert" in done.stderr and "no readable PEM" in done.stderr


def test_a_taken_port_is_one_clear_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "collector.yaml"
        config.write_text(f"listen: 127.0.0.1:{taken.getsockname()[1]}\n"
                          "allow_plaintext_loopback: true\nmetrics_listen: null\n"
                          f"state: {tmp_path}/collector.state\n")
        done = run_collector(config)
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


def test_the_example_config_is_valid(tmp_path: Path, pki: PKI) -> None:
    text = (ROOT / "deploy" / "collector.example.yaml").read_text()
    text = text.replace("/etc/loginprobe/collector.crt", str(pki.server.cert))
    text = text.replace("/etc/loginprobe/collector.key", str(pki.server.key))
    (tmp_path / "collector.yaml").write_text(text)
    loaded = load_config(tmp_path / "collector.yaml")
    assert [a.id for a in loaded.agents] == ["paris-orange-4g", "paris-office", "old-laptop"]
    assert [c.name for c in loaded.config.checks] == [
        "chat-login", "chat-login-websocket", "broker-login-eu-cellular", "matrix-login"]


def test_invalid_agents_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text("agents:\n  - id: a\n    revoked: maybe\n")
    config = tmp_path / "collector.yaml"
    config.write_text(f"allow_plaintext_loopback: true\nagents_file: {tmp_path}/agents.yaml\n")
    done = run_collector(config)
    assert done.returncode == 2
    assert f"{tmp_path / 'agents.yaml'}:3:" in done.stderr, done.stderr

"""The uplink against a stub collector, for what the real one does not do on demand: a clock
100 s ahead, a small batch limit, and a collector that has processed more than the spool
remembers (a lost spool)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack.fleet import free_port as closed_port
from loginprobe.agent import uplink as uplink_module
from loginprobe.agent.backoff import Backoff
from loginprobe.agent.config import AgentConfig
from loginprobe.agent.health import AgentMetrics, health_text
from loginprobe.agent.network_paths import ProbePath
from loginprobe.agent.scheduler import ASSIGNED, Scheduler
from loginprobe.agent.spool import Spool
from loginprobe.agent.uplink import Uplink, encode
from loginprobe.codec import Report
from loginprobe.contract import Reason
from loginprobe.result import Result
from loginprobe.wire import collector_pb2 as pb

SKEW_NS = 100 * 10**9


@dataclass
class Stub:
    """One Connect handler: Welcome from a clock SKEW_NS ahead, one assigned check, an Ack
    for every batch; it remembers what it got."""

    last_processed: int
    max_batch: int
    password_ref: str = ""
    hello: pb.Hello | None = None
    batches: list[list[pb.ProbeResult]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, requests: Any, context: Any) -> AsyncIterator[pb.ConnectResponse]:
        first = await anext(requests)
        self.hello = first.hello
        welcome = pb.Welcome(agent_id="stubbed", max_batch_results=self.max_batch,
                             last_processed_seq=self.last_processed)
        welcome.hello_received_at.FromNanoseconds(time.time_ns() + SKEW_NS)
        welcome.sent_at.FromNanoseconds(time.time_ns() + SKEW_NS)
        yield pb.ConnectResponse(welcome=welcome)
        check = pb.Check(name="assigned", url="tcp://127.0.0.1:1")  # refused: quick
        check.interval.FromNanoseconds(100_000_000)
        upsert = [check]
        if self.password_ref:
            chat = pb.Check(name="chat-login", url="xmpp://probe@xmpp.test",
                            password_ref=self.password_ref)
            chat.interval.FromNanoseconds(100_000_000)
            upsert.append(chat)
        yield pb.ConnectResponse(checks=pb.CheckUpdate(full=True, upsert=upsert))
        async for msg in requests:
            self.batches.append(list(msg.results.results))
            self.arrived.set()
            yield pb.ConnectResponse(ack=pb.Ack(seq=msg.results.results[-1].seq))


@dataclass
class Rig:
    stub: Stub
    spool: Spool
    uplink: Uplink

    def seqs(self) -> list[int]:
        return [r.seq for batch in self.stub.batches for r in batch]

    async def until(self, ready: Any) -> None:
        async with asyncio.timeout(10):
            while not ready():
                self.stub.arrived.clear()
                await self.stub.arrived.wait()


def old_report() -> Report:
    result = Result(url="tcp://127.0.0.1:1", protocol="tcp", success=False,
                    reason=Reason.TCP_REFUSED, message="refused",
                    started_at=datetime.now(UTC), duration_ns=1000, phases=[])
    return Report(result, 0, "old", os.urandom(16))


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, stub: Stub, spooled: int) -> AsyncIterator[Rig]:
    """The stub on a port, and the agent's spool (with spooled old results), scheduler and
    uplink running against it. A context manager rather than a fixture: gRPC's server must
    live in the test's own event loop."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "loginprobe.v1.CollectorService", {"Connect": grpc.stream_stream_rpc_method_handler(
            stub.connect, request_deserializer=pb.ConnectRequest.FromString,
            response_serializer=pb.ConnectResponse.SerializeToString)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cfg = AgentConfig.model_validate({
        "collector": {"address": f"127.0.0.1:{port}", "plaintext": True},
        "labels": {"region": "eu-west", "network_type": "wifi"},
        "spool": {"path": str(tmp_path / "spool.db")},
    })
    spool = Spool(cfg.spool.path, cfg.spool.max_bytes, cfg.spool.max_age)
    await spool.open()
    for _ in range(spooled):  # what an outage left behind
        await spool.append(partial(encode, old_report()))
    scheduler = Scheduler(lambda r: spool.append(partial(encode, r)),
                          ProbePath.from_config(cfg), concurrency=4)
    uplink = Uplink(cfg, spool, scheduler)
    task = asyncio.create_task(uplink.run())
    try:
        yield Rig(stub, spool, uplink)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduler.stop()
        await spool.close()
        await server.stop(0)


async def test_replay_skips_what_was_processed_and_keeps_to_the_batch_limit(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, Stub(last_processed=10, max_batch=7), spooled=50) as r:
        await r.until(lambda: len(r.seqs()) >= 45)
        seqs = r.seqs()
        assert seqs[:40] == list(range(11, 51))  # 1..10 processed already, the rest in order
        assert seqs == list(range(11, 11 + len(seqs)))  # then new results, no gap, no repeat
        assert all(len(b) <= 7 for b in r.stub.batches)
        hello = r.stub.hello
        assert hello is not None and hello.last_acked_seq == 0
        assert dict(hello.labels) == {"region": "eu-west", "network_type": "wifi"}
        await r.until(lambda: r.spool.acked_seq >= 50)


async def test_the_clock_offset_from_welcome_corrects_every_new_result(tmp_path: Path) -> None:
    async with rig(tmp_path, Stub(last_processed=0, max_batch=100), spooled=0) as r:
        await r.until(lambda: bool(r.stub.batches))
        new = r.stub.batches[0][0]
        assert new.check == "assigned"
        assert abs(new.clock_offset_ns - SKEW_NS) < 50_000_000
        assert abs(new.started_at_unix_nano - (time.time_ns() + SKEW_NS)) < 5 * 10**9
        assert r.uplink.scheduler.clock_offset_ns == new.clock_offset_ns
        assert len(new.trace_id) == 16 and new.labels["region"] == "eu-west"


async def test_a_lost_spool_continues_after_what_the_collector_has(tmp_path: Path) -> None:
    async with rig(tmp_path, Stub(last_processed=1000, max_batch=100), spooled=5) as r:
        await r.until(lambda: len(r.seqs()) >= 3)
        # Seqs at or below 1000 would be taken for replays and dropped as duplicates.
        assert r.seqs()[:3] == [1001, 1002, 1003]


async def test_a_check_needing_a_password_the_agent_lacks_is_refused_visibly(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, Stub(last_processed=0, max_batch=100, password_ref="chat"),
                   spooled=0) as r:
        await r.until(lambda: len(r.seqs()) >= 3)
        assert {b.check for batch in r.stub.batches for b in batch} == {"assigned"}
        assert r.uplink.scheduler.count(ASSIGNED) == 1
        assert set(r.uplink.refused) == {"chat-login"}
        text = health_text(r.uplink)
        assert text.startswith("ok: connected to the collector as stubbed\n")
        assert ("refused check 'chat-login': it needs the password 'chat', which this agent's "
                "config does not define under passwords:") in text
        metrics = {m.name: m.samples[0].value for m in AgentMetrics(
            r.spool, r.uplink.scheduler, r.uplink).collect()}
        assert metrics["loginprobe_agent_checks_refused"] == 1
        assert metrics["loginprobe_agent_uplink_down_seconds"] == 0


async def test_a_collector_that_is_away_is_said_with_how_long_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "loginprobe.agent.uplink")
    cfg = AgentConfig.model_validate({
        "collector": {"address": f"127.0.0.1:{closed_port()}", "plaintext": True},
        "spool": {"path": str(tmp_path / "spool.db")},
    })
    spool = Spool(cfg.spool.path, cfg.spool.max_bytes, cfg.spool.max_age)
    await spool.open()
    scheduler = Scheduler(lambda r: spool.append(partial(encode, r)),
                          ProbePath.from_config(cfg), concurrency=1)
    # A backoff at its cap at once, so the test sees the repeated warning in a second.
    uplink = Uplink(cfg, spool, scheduler, backoff=Backoff(base=0.05, cap=0.05))
    uplink_module.OUTAGE_WARN_INTERVAL = 0.3
    task = asyncio.create_task(uplink.run())
    try:
        await asyncio.sleep(1.0)
        text = health_text(uplink)
        assert text.startswith("ok: not connected to the collector for ")
        assert "UNAVAILABLE" in text and "0 results wait in the spool" in text
        assert 0.9 <= uplink.down_seconds < 5
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        # The first failure, then again while at the cap, rate-limited: not every retry.
        retries = [r for r in caplog.records if "reconnecting" in r.getMessage()]
        assert 2 <= len(warnings) <= 5 < len(retries), [r.getMessage() for r in warnings]
        assert "not connected for" in warnings[-1].getMessage()
    finally:
        uplink_module.OUTAGE_WARN_INTERVAL = 60.0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduler.stop()
        await spool.close()


async def test_the_collector_address_names_every_replica_in_order(tmp_path: Path) -> None:
    """A list of addresses, and a name resolving to several (each then verified by TLS
    against that name), become the endpoints the agent moves through on a broken stream."""
    cfg = AgentConfig.model_validate({
        "collector": {"address": ["10.0.0.1:7443", "replicas.example:7443", "[::1]:7443"],
                      "token_env": "HOME"},
        "spool": {"path": str(tmp_path / "spool.db")},
    })
    assert AgentConfig.model_validate({**cfg.model_dump(mode="json"), "collector": {
        "address": "10.0.0.1:7443, 10.0.0.2:7443", "token_env": "HOME"}}
    ).collector.addresses == ["10.0.0.1:7443", "10.0.0.2:7443"]

    async def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        assert host == "replicas.example"
        return [(0, 0, 0, "", (ip, port)) for ip in ("192.0.2.1", "192.0.2.2", "2001:db8::3")]

    uplink = Uplink(cfg, Spool(tmp_path / "s.db", 1 << 20, 3600), Scheduler(
        lambda r: asyncio.sleep(0), ProbePath.from_config(cfg), concurrency=1))
    assert await uplink.endpoints(resolve) == [
        ("10.0.0.1:7443", None), ("192.0.2.1:7443", "replicas.example"),
        ("192.0.2.2:7443", "replicas.example"), ("[2001:db8::3]:7443", "replicas.example"),
        ("[::1]:7443", None)]

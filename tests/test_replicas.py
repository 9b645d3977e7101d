"""Several collector replicas sharing their exactly-once state in a real redis-server: a
replay landing on any replica counts once, Redis away means no acks (and recovery by
itself), and a Redis that lost its data counts no old result again."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.fleet import Collector, collector_config, new_token, wait_for
from devstack.redis import Redis
from tests.test_collector import Stream, batch

TOKEN, DIGEST = new_token()
AGENTS = [{"id": "r1", "token_sha256": DIGEST}]


def replica(folder: Path, redis: Redis) -> Collector:
    return Collector(folder, collector_config(folder, pki=None, agents=AGENTS, state=redis.url))


def received(c: Collector, what: str = "received") -> float:
    return c.metrics().get(f'loginprobe_collector_results_{what}_total{{agent="r1"}}', 0.0)


def healthz(c: Collector) -> str:
    url = c.metrics_url.replace("/metrics", "/healthz")
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    with Redis(tmp_path / "redis") as r:
        yield r


@pytest.fixture
def pair(tmp_path: Path, redis: Redis) -> Iterator[tuple[Collector, Collector]]:
    a, b = replica(tmp_path / "a", redis), replica(tmp_path / "b", redis)
    try:
        yield a.start_healthy(), b.start_healthy()
    finally:
        a.kill()
        b.kill()


async def test_a_batch_whose_ack_was_lost_replayed_to_another_replica_counts_once(
    pair: tuple[Collector, Collector], redis: Redis
) -> None:
    a, b = pair
    s = Stream(a, TOKEN)
    await s.open(spool_id="s1")
    await s.send(batch(1, 2, 3))
    wait_for("replica a to process the batch", lambda: received(a) == 3)
    await s.close()  # the ack is never read: lost with the stream
    s = Stream(b, TOKEN)
    welcome, _ = await s.open(last_acked=0, spool_id="s1")  # the agent replays from 1
    assert welcome.last_processed_seq == 3
    assert await s.ack(batch(1, 2, 3, 4, 5)) == 5
    await s.close()
    assert (received(a), received(b), received(b, "duplicate")) == (3, 2, 3)
    assert redis.get("loginprobe:mark:r1/s1") == "5"


async def test_redis_restarted_empty_counts_no_old_result_again(
    pair: tuple[Collector, Collector], redis: Redis, tmp_path: Path
) -> None:
    a, b = pair
    s = Stream(a, TOKEN)
    await s.open(spool_id="s1")
    assert await s.ack(batch(1, 2, 3)) == 3
    await s.send(batch(4, 5))
    wait_for("replica a to process 4 and 5", lambda: received(a) == 5)
    await s.close()  # 4 and 5: processed, their ack lost
    redis.kill()
    redis.start(empty=True)
    assert redis.command("DBSIZE") == ":0"
    # The replay lands on the replica that processed it: it remembers the mark.
    s = Stream(a, TOKEN)
    welcome, _ = await s.open(last_acked=3, spool_id="s1")
    assert welcome.last_processed_seq == 5
    assert await s.ack(batch(4, 5, 6)) == 6
    await s.close()
    # The other replica learns the mark from Redis again, or from the agent's hello.
    s = Stream(b, TOKEN)
    welcome, _ = await s.open(last_acked=6, spool_id="s1")
    assert welcome.last_processed_seq == 6
    assert await s.ack(batch(6, 7)) == 7
    await s.close()
    assert received(a) + received(b) == 7
    assert redis.get("loginprobe:mark:r1/s1") == "7"


async def test_redis_away_means_no_acks_and_the_stream_recovers_by_itself(
    pair: tuple[Collector, Collector], redis: Redis
) -> None:
    a, _ = pair
    s = Stream(a, TOKEN)
    await s.open(spool_id="s1")
    assert await s.ack(batch(1, 2)) == 2
    redis.kill()
    await s.send(batch(3, 4))
    ack = asyncio.ensure_future(s.call.read())  # not cancelled by a timeout: it ends the call
    done, _ = await asyncio.wait({ack}, timeout=3.0)
    assert not done  # no ack while Redis is away
    assert received(a) == 2  # and nothing processed
    assert "not acknowledging results: the state store redis://127.0.0.1" in healthz(a)
    assert a.metrics()["loginprobe_collector_state_up"] == 0.0
    redis.start()  # its append-only file kept the marks
    done, _ = await asyncio.wait({ack}, timeout=10.0)  # the same stream goes on
    assert done and ack.result().ack.seq == 4
    assert await s.ack(batch(5)) == 5
    await s.close()
    assert received(a) == 5 and received(a, "duplicate") == 0
    assert healthz(a) == "ok: serving\n"
    assert a.metrics()["loginprobe_collector_state_up"] == 1.0
    log = a.output()
    assert log.count("unreachable") == 1 and log.count("reachable again") == 1

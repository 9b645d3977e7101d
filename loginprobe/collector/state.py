"""Where each agent's processed high-water mark is kept so that a restart, or another replica,
counts no replay twice: a local state file (one collector alone, the default) or Redis
(several replicas sharing one state)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis", "rediss", "unix")


def is_redis(state: str) -> bool:
    return urlsplit(state).scheme in REDIS_SCHEMES


def mark_key(agent: str, spool_id: str) -> str:
    """Marks are per agent and spool: two boxes sharing one credential have two spools, and
    neither's results are taken for the other's replays. Agents too old to send a spool id
    keep one mark per agent."""
    return f"{agent}/{spool_id}" if spool_id else agent


class StateError(Exception):
    """The state cannot be used at start; the message is one sentence for the operator."""


class StateUnavailable(Exception):
    """The shared state cannot be reached now: nothing may be acknowledged until it can."""


class StateFile:
    """One line per advance, `"KEY" SEQ`, appended and flushed to the kernel once per batch
    (what survives a kill -9, as the results log does; fsync would add power-loss safety at
    ~1 ms a batch). Read back at start, keeping each key's highest; rewritten whole (a
    temporary file renamed over it) at start and whenever it holds four times more lines
    than keys. An exclusive lock keeps a second collector off the same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marks: dict[str, int] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise StateError(f"cannot open the state file {path}: {exc.strerror}; give the "
                             "collector a writable folder for it (state: in its config)") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise StateError(f"the state file {path} is in use by another collector; give "
                             "each its own, or share the state through Redis "
                             "(state: redis://…)") from None
        self._file.seek(0)
        for line in self._file:
            key, _, seq = line.rpartition(" ")
            if not line.endswith("\n") or not key:
                break  # half a line from a kill mid-write
            try:
                name, n = json.loads(key), int(seq)
            except ValueError:
                break
            if n > self.marks.get(name, 0):
                self.marks[name] = n
        self.lines = 0
        self._compact()

    def record(self, key: str, seq: int) -> None:
        self._file.write(f"{json.dumps(key)} {seq}\n")
        self._file.flush()
        self.marks[key] = seq
        self.lines += 1
        if self.lines > 4 * len(self.marks) + 1000:
            self._compact()

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(f"{json.dumps(k)} {v}\n" for k, v in self.marks.items()))
            f.flush()
            os.fsync(f.fileno())
        new = tmp.open("a", encoding="utf-8")
        fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the new inode is ours before it shows
        tmp.replace(self.path)
        self._file.close()
        self._file = new
        self.lines = len(self.marks)

    def close(self) -> None:
        self._file.close()


# For each KEYS[i], a mark: ARGV[2i-1] the highest seq now processed (a batch's last, or
# the agent's acknowledged seq at hello), ARGV[2i] a floor this replica knows of (the mark
# it last saw). Returns each mark as it was before, floor included, and stores the new one:
# one atomic step for the advances of every stream that came in meanwhile.
_ADVANCE = """
local out = {}
for i = 1, #KEYS do
  local stored = tonumber(redis.call('GET', KEYS[i]) or '0')
  local before = math.max(stored, tonumber(ARGV[2 * i]))
  local after = math.max(before, tonumber(ARGV[2 * i - 1]))
  if after ~= stored then redis.call('SET', KEYS[i], string.format('%d', after)) end
  out[i] = string.format('%d', before)
end
return out
"""
_GROUP = 500  # advances in one script call at most
# Calls in flight at once: one would do for throughput, but then every advance waits out a
# whole round trip before its group can go (a slow or busy Redis would add it to acks).
_IN_FLIGHT = 4


def _where(url: str) -> str:
    """The URL without a password, for logs and /healthz."""
    u = urlsplit(url)
    host = u.hostname or ""
    return f"{u.scheme}://{host}:{u.port or 6379}{u.path}" if u.scheme != "unix" else (
        f"unix://{u.path}")


class RedisState:
    """High-water marks in Redis, advanced by a Lua script. A few calls at a time: a
    stream whose advance finds a free slot sends it at once, in the same step of the event
    loop as its sinks; advances that arrive while all slots are busy go together in the
    next (a group commit: one round trip for many batches under load, and few
    connections). Fails
    closed: an error raises StateUnavailable, which the caller answers by not
    acknowledging; the first failure is logged once, and so is the recovery."""

    prefix = "loginprobe:mark:"

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        import redis.asyncio as aioredis  # imported only when configured

        self.url = url
        self.where = _where(url)
        # No retries inside the client: the stream's own retry decides, and says so.
        self._redis: Any = aioredis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None,
            health_check_interval=0)
        self._script = self._redis.register_script(_ADVANCE)
        self.available = True
        self.down_since: float | None = None
        self.error = ""
        self.failures = 0  # calls that failed, for loginprobe_collector_state_errors_total
        self.calls = 0  # round trips, for the benchmark's operations per batch
        self._pending: list[tuple[str, int, int, asyncio.Future[int]]] = []
        self._in_flight = 0  # calls in flight, or successors about to send
        self._next: set[asyncio.Task[None]] = set()  # those successors (kept referenced)

    async def advance(self, key: str, seq: int, floor: int) -> int:
        """Store max(mark, floor, seq); return max(mark, floor) as it was before."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((key, seq, floor, future))
        if self._in_flight < _IN_FLIGHT:
            self._in_flight += 1
            await self._send()  # this stream leads: its advance leaves now
        return await future

    async def _send(self) -> None:
        """One script call for what is pending; then the next group's call, in a task of
        its own so that no stream's ack waits for others' groups."""
        import redis.exceptions

        group, self._pending = self._pending[:_GROUP], self._pending[_GROUP:]
        self.calls += 1
        try:
            befores = await self._script(
                keys=[self.prefix + key for key, _, _, _ in group],
                args=[n for _, seq, floor, _ in group for n in (seq, floor)])
        except (redis.exceptions.RedisError, OSError) as exc:
            self._down(exc)
            self._fail(group)
        except BaseException:
            # The leading stream was cancelled mid-call: the others of its group try again
            # (an advance is idempotent: the marks only grow).
            self._fail(group)
            raise
        else:
            self._up()
            for (*_, future), before in zip(group, befores, strict=True):
                if not future.done():  # its stream may have ended meanwhile
                    future.set_result(int(before))
        finally:
            if self._pending:
                task = asyncio.get_running_loop().create_task(self._send())
                self._next.add(task)
                task.add_done_callback(self._next.discard)
            else:
                self._in_flight -= 1

    def _fail(self, group: list[tuple[str, int, int, asyncio.Future[int]]]) -> None:
        for *_, future in group:
            if not future.done():
                future.set_exception(
                    StateUnavailable(f"the state store {self.where} is unreachable"))

    def _up(self) -> None:
        if not self.available:
            log.info("state store %s reachable again after %.0fs; acknowledging results again",
                     self.where, time.monotonic() - (self.down_since or time.monotonic()))
            self.available, self.down_since, self.error = True, None, ""

    async def until_available(self, key: str, seq: int, floor: int, every: float = 0.5) -> int:
        """advance(), retried until the store answers: fail closed, nothing is acknowledged
        meanwhile (the agent keeps its results spooled, gRPC's flow control holds back what
        it sends), and the stream goes on by itself once the store is back."""
        while True:
            try:
                return await self.advance(key, seq, floor)
            except StateUnavailable:
                await asyncio.sleep(every)

    async def ping(self) -> None:
        """A probe while no agent sends: keeps /healthz true when the fleet is quiet."""
        import redis.exceptions

        try:
            await self._redis.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            self._down(exc)
            return
        self._up()

    def _down(self, exc: BaseException) -> None:
        self.failures += 1
        self.error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        if self.available:
            self.available, self.down_since = False, time.monotonic()
            log.error("state store %s unreachable (%s): not acknowledging any result until it "
                      "returns; agents keep theirs spooled", self.where, self.error)

    def health(self) -> str | None:
        """None while acknowledging; else the sentence /healthz shows."""
        if self.available:
            return None
        since = time.monotonic() - (self.down_since or time.monotonic())
        return (f"not acknowledging results: the state store {self.where} has been "
                f"unreachable for {since:.0f}s ({self.error}); agents keep theirs spooled\n")

    async def watch(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            await self.ping()

    async def close(self) -> None:
        await self._redis.aclose()


class StateMetrics(Collector):
    """The shared state's health on /metrics."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "loginprobe_collector_state_up",
            "1 while the shared state (Redis) answers and results are acknowledged; 0 while "
            "it does not and nothing is.")
        up.add_metric([], 1 if self.state.available else 0)
        errors = CounterMetricFamily(
            "loginprobe_collector_state_errors",
            "Calls to the shared state (Redis) that failed; each holds back one ack.")
        errors.add_metric([], self.state.failures)
        yield from (up, errors)

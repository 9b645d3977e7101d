"""The bounded on-disk spool: a result is committed here before it counts as produced, keeps
its sequence number forever, and is deleted only once the collector has acknowledged it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

DROP_REASONS = ("size", "age", "disk_full")
_WHY = {
    "size": "the spool reached its limit of {0.max_bytes} bytes",
    "age": "results older than {0.max_age:g}s",
    "disk_full": "the disk holding the spool is full",
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY, created REAL NOT NULL,
                                    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS results_created ON results (created);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _is_full(exc: sqlite3.Error) -> bool:
    return "database or disk is full" in str(exc)


# What to do when the spool cannot be written: the agent will not run without one, since
# every result it measured would be lost.
_WRITABLE = ("give the agent a folder it can write (spool.path in its config; a volume "
             "mounted read-write in a container)")


class SpoolError(Exception):
    """The spool cannot be opened; the message is one sentence for the operator."""


class Spool:
    """SQLite in WAL mode, used from one worker thread so the event loop never waits on disk
    and statements never interleave. Counters are plain attributes, read without locks."""

    def __init__(
        self, path: Path, max_bytes: int, max_age: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._db: sqlite3.Connection | None = None
        self.next_seq = 1
        self.acked_seq = 0
        self.spool_id = ""  # random, for the life of the spool: whose sequence numbers
        self.depth = 0  # results stored
        self.bytes = 0  # their serialized size
        self.oldest_created: float | None = None  # unix time of the oldest stored result
        self.produced_total = 0  # committed since this process started
        self.dropped = dict.fromkeys(DROP_REASONS, 0)  # persisted across restarts
        self._dropping: set[str] = set()  # reasons already logged in this episode
        self._dropped_dirty = False
        # Set after each commit; the uplink clears it before it reads, then waits on it.
        self.changed = asyncio.Event()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- the async API, one worker-thread call each ---------------------------------------

    async def open(self) -> None:
        await self._call(self._open)

    async def append(self, encode: Callable[[int], bytes]) -> int | None:
        """Store encode(seq) under the next seq; return seq once committed, or None when the
        disk is full (the result is dropped and counted, the agent carries on)."""
        seq = await self._call(self._append, encode)
        if seq is not None:
            self.changed.set()
        return seq

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to limit stored results with a seq above seq, in order."""
        return await self._call(self._read_after, seq, limit)

    async def ack(self, seq: int) -> None:
        """The collector has processed everything up to seq: forget it."""
        await self._call(self._ack, seq)

    async def skip_to(self, seq: int) -> None:
        """The collector has processed seq, which this spool never produced: the spool was
        lost or replaced. Continue after it, or new results would be taken for replays."""
        await self._call(self._skip_to, seq)

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._close)
        self._pool.shutdown()

    # -- worker thread ---------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool's folder {self.path.parent}: "
                             f"{exc.strerror}") from None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise SpoolError(f"cannot open the spool {self.path} ({exc}): {_WRITABLE}") from None
        try:
            # One agent per spool: two would hand out the same sequence numbers. EXCLUSIVE
            # locking holds the file lock from the first write until close.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA busy_timeout=0")
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise SpoolError(f"the spool {self.path} cannot use WAL mode")
            # FULL: a committed result survives power loss too, and so does next_seq, which
            # must never be handed out twice.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=4194304")
            db.execute("BEGIN IMMEDIATE")
            db.executescript(_SCHEMA)  # executescript commits
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" in str(exc):
                raise SpoolError(f"the spool {self.path} is in use by another agent") from None
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise SpoolError(f"the spool {self.path} is read-only: {_WRITABLE}") from None
            raise SpoolError(f"cannot open the spool {self.path}: {exc}") from None
        self._db = db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.acked_seq = meta.get("acked_seq", 0)
        for reason in DROP_REASONS:
            self.dropped[reason] = meta.get(f"dropped_{reason}", 0)
        last = db.execute("SELECT max(seq) FROM results").fetchone()[0] or 0
        self.next_seq = max(meta.get("next_seq", 1), last + 1, self.acked_seq + 1)
        if "spool_id" not in meta:
            # Made once with the spool (or on the first open of an older one), kept for life.
            meta["spool_id"] = secrets.randbits(62)
            db.execute("INSERT INTO meta (key, value) VALUES ('spool_id', ?)",
                       (meta["spool_id"],))
        self.spool_id = f"{meta['spool_id']:016x}"
        self._refresh()
        log.info(
            "spool %s: %d results waiting (seq %d..%d), next seq %d",
            self.path, self.depth, self.acked_seq + 1, self.next_seq - 1, self.next_seq,
        )

    def _refresh(self) -> None:
        """Count what is stored; at open only, later the counters follow each change."""
        assert self._db is not None
        self.depth, self.bytes, self.oldest_created = self._db.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0),"
            " (SELECT created FROM results ORDER BY seq LIMIT 1) FROM results"
        ).fetchone()

    def _transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run work in one transaction. On a full disk, checkpoint first and try once more:
        moving the WAL's pages home lets SQLite truncate it, often all the room there is."""
        db = self._db
        assert db is not None
        for retry in (True, False):
            try:
                db.execute("BEGIN IMMEDIATE")
                out = work(db)
                db.execute("COMMIT")
                return out
            except sqlite3.OperationalError as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if not (retry and _is_full(exc)):
                    raise
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raise AssertionError("unreachable")

    def _append(self, encode: Callable[[int], bytes]) -> int | None:
        seq, data, now = self.next_seq, encode(self.next_seq), self._clock()

        def insert(db: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            db.execute("INSERT INTO results (seq, created, data) VALUES (?, ?, ?)",
                       (seq, now, data))
            self._set("next_seq", seq + 1)
            drops = self._enforce_limits(now, self.bytes + len(data))
            if drops or self._dropped_dirty:
                for reason, total in self.dropped.items():
                    self._set(f"dropped_{reason}", total + drops.get(reason, (0, 0))[0])
            return drops

        try:
            drops = self._transact(insert)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            # The seq is not used up: nothing with it was stored or sent.
            self._count_drops("disk_full", 1)
            self._dropped_dirty = True  # saved with the next append that fits
            return None
        # Only now, after the commit, do the counters change.
        self.next_seq = seq + 1
        self.produced_total += 1
        self.depth += 1
        self.bytes += len(data)
        self._dropped_dirty = False
        self._dropping.discard("disk_full")
        for reason, (n, size) in drops.items():
            self.depth -= n
            self.bytes -= size
            self._count_drops(reason, n)
        if drops or self.oldest_created is None:
            self.oldest_created = self._oldest()
        return seq

    def _enforce_limits(self, now: float, total_bytes: int) -> dict[str, tuple[int, int]]:
        """Inside the append's transaction: delete the oldest results beyond the age and size
        limits, so a long outage costs the oldest measurements, never the newest. Returns
        reason -> (results, bytes) dropped."""
        assert self._db is not None
        drops = {}
        cutoff = now - self.max_age
        if self.oldest_created is not None and self.oldest_created < cutoff:
            n, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM results WHERE created < ?",
                (cutoff,),
            ).fetchone()
            self._db.execute("DELETE FROM results WHERE created < ?", (cutoff,))
            drops["age"] = (n, size)
            total_bytes -= size
        if total_bytes > self.max_bytes:
            upto, n, freed = 0, 0, 0
            cur = self._db.execute("SELECT seq, length(data) FROM results ORDER BY seq")
            for seq, size in cur:
                upto, n, freed = seq, n + 1, freed + size
                if total_bytes - freed <= self.max_bytes:
                    break
            cur.close()  # before the DELETE: no read may stay open on the rows it removes
            self._db.execute("DELETE FROM results WHERE seq <= ?", (upto,))
            drops["size"] = (n, freed)
        return drops

    def _oldest(self) -> float | None:
        assert self._db is not None
        row = self._db.execute("SELECT created FROM results ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def _count_drops(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.dropped[reason] += n
        if reason not in self._dropping:  # once per episode, not once per result
            self._dropping.add(reason)
            log.warning(
                "spool %s: dropping results (%s); counted in "
                "loginprobe_agent_results_dropped_total{reason=%r}, logged once until the "
                "collector acknowledges again",
                self.path, _WHY[reason].format(self), reason,
            )

    def _set(self, key: str, value: int) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        assert self._db is not None
        return self._db.execute(
            "SELECT seq, data FROM results WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()

    def _ack(self, seq: int) -> None:
        seq = min(seq, self.next_seq - 1)  # never believe an ack for what we did not produce
        if seq <= self.acked_seq:
            return

        def delete(db: sqlite3.Connection) -> tuple[int, int]:
            n, size = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM results WHERE seq <= ?",
                (seq,),
            ).fetchone()
            db.execute("DELETE FROM results WHERE seq <= ?", (seq,))
            self._set("acked_seq", seq)
            return n, size

        try:
            n, size = self._transact(delete)
        except sqlite3.OperationalError as exc:
            # Harmless to skip: the rows stay and a later ack deletes them.
            log.warning("spool %s: could not delete acknowledged results: %s", self.path, exc)
            return
        self.acked_seq = seq
        self.depth -= n
        self.bytes -= size
        self.oldest_created = self._oldest()
        self._dropping -= {"size", "age"}  # the outage is over: a new one is logged again

    def _skip_to(self, seq: int) -> None:
        if seq < self.next_seq:
            return
        log.warning(
            "spool %s: the collector has already processed seq %d but this spool would "
            "continue at %d (spool lost or replaced?); continuing at %d",
            self.path, seq, self.next_seq, seq + 1,
        )
        self._transact(lambda db: self._set("next_seq", seq + 1))
        self.next_seq = seq + 1
        self._ack(seq)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

"""The agent's spool on a real SQLite file: order, acks, restarts, kill -9, its limits and a
really full disk."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from loginprobe.agent.spool import Spool, SpoolError

ROOT = Path(__file__).resolve().parent.parent


def payload(seq: int, size: int = 100) -> bytes:
    return f"result {seq} ".encode().ljust(size, b".")


def disk_usage(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age=3600)
    await s.open()
    yield s
    await s.close()


async def reopen(s: Spool, **limits: float) -> Spool:
    await s.close()
    again = Spool(s.path, int(limits.get("max_bytes", s.max_bytes)),
                  limits.get("max_age", s.max_age))
    await again.open()
    return again


async def test_results_come_back_in_order_until_acknowledged(spool: Spool) -> None:
    seqs = [await spool.append(payload) for _ in range(10)]
    assert seqs == list(range(1, 11))
    rows = await spool.read_after(0, 4)
    assert [(s, d) for s, d in rows] == [(s, payload(s)) for s in (1, 2, 3, 4)]
    await spool.ack(6)
    assert [s for s, _ in await spool.read_after(0, 100)] == [7, 8, 9, 10]
    assert (spool.depth, spool.bytes, spool.acked_seq) == (4, 400, 6)
    await spool.ack(3)  # an older cumulative ack changes nothing
    assert spool.acked_seq == 6 and spool.depth == 4


async def test_seq_never_repeats_after_a_restart_even_with_everything_acked(
    spool: Spool,
) -> None:
    for _ in range(5):
        await spool.append(payload)
    await spool.ack(5)
    assert spool.depth == 0
    spool = await reopen(spool)
    try:
        assert (spool.next_seq, spool.acked_seq) == (6, 5)
        assert await spool.append(payload) == 6
    finally:
        await spool.close()


async def test_an_ack_beyond_what_was_produced_is_not_believed(spool: Spool) -> None:
    await spool.append(payload)
    await spool.ack(1000)
    assert spool.acked_seq == 1
    assert await spool.append(payload) == 2


async def test_skip_to_continues_after_what_the_collector_already_has(spool: Spool) -> None:
    await spool.append(payload)
    await spool.skip_to(500)
    assert spool.depth == 0 and spool.acked_seq == 500
    assert await spool.append(payload) == 501


async def test_a_second_agent_cannot_open_the_same_spool(spool: Spool) -> None:
    other = Spool(spool.path, 1 << 20, 3600)
    with pytest.raises(SpoolError, match="in use by another agent"):
        await other.open()


async def test_size_limit_drops_the_oldest_counts_them_and_bounds_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Spool(tmp_path / "spool.db", max_bytes=50_000, max_age=3600)
    await s.open()
    caplog.set_level(logging.WARNING, "loginprobe.agent.spool")
    try:
        for _ in range(1500):  # 150 kB through a 50 kB spool
            await s.append(lambda seq: payload(seq, 100))
        assert s.bytes <= 50_000 and s.depth == 500
        assert s.dropped["size"] == 1000
        rows = await s.read_after(0, 10_000)
        assert [seq for seq, _ in rows] == list(range(1001, 1501))  # the newest kept
        # Logged once for the whole episode, not 1000 times.
        assert sum("dropping results" in r.message for r in caplog.records) == 1
        # The data plus page overhead, and the WAL, which is capped at 4 MiB.
        assert disk_usage(tmp_path) < 2 * 50_000 + 4 * 2**20

        # An ack ends the episode: the next overflow is logged again.
        await s.ack(1200)
        for _ in range(400):
            await s.append(lambda seq: payload(seq, 100))
        assert sum("dropping results" in r.message for r in caplog.records) == 2
    finally:
        await s.close()
    # The drop counter is persisted with the spool.
    again = Spool(tmp_path / "spool.db", max_bytes=50_000, max_age=3600)
    await again.open()
    assert again.dropped["size"] == 1000 + 200
    await again.close()


async def test_age_limit_drops_what_is_too_old(tmp_path: Path) -> None:
    now = [1000.0]
    s = Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age=60, clock=lambda: now[0])
    await s.open()
    try:
        for _ in range(10):
            await s.append(payload)
            now[0] += 10  # results at t=1000..1090
        await s.append(payload)  # at t=1100: everything before t=1040 is too old
        assert s.dropped["age"] == 4
        assert [seq for seq, _ in await s.read_after(0, 100)] == list(range(5, 12))
        assert s.oldest_created == 1040.0 and s.depth == 7
    finally:
        await s.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem, so 'database or disk is full' comes from the kernel."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(path: Path) -> None:
    """Take every free byte of path's filesystem, as another program might."""
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


async def test_a_full_disk_drops_and_counts_and_the_spool_goes_on(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Spool(tiny_disk / "spool.db", max_bytes=100 << 20, max_age=3600)
    await s.open()
    caplog.set_level(logging.WARNING, "loginprobe.agent.spool")
    try:
        for _ in range(10):
            await s.append(payload)
        fill(tiny_disk / "ballast")
        stored = list(range(1, 11))
        for _ in range(2000):
            seq = await s.append(lambda seq: payload(seq, 1000))
            if seq is not None:
                stored.append(seq)
        assert s.dropped["disk_full"] > 0
        assert stored == list(range(1, len(stored) + 1))  # no seq burnt by a failed write
        assert s.produced_total == len(stored) == s.depth
        assert sum("disk holding the spool is full" in r.message for r in caplog.records) == 1

        # The other program frees its space: the spool carries on where it was.
        (tiny_disk / "ballast").unlink()
        assert await s.append(payload) == stored[-1] + 1
        await s.ack(stored[-1] + 1)
        assert s.depth == 0
    finally:
        await s.close()
    again = Spool(tiny_disk / "spool.db", max_bytes=100 << 20, max_age=3600)
    await again.open()
    assert again.dropped["disk_full"] == s.dropped["disk_full"]  # saved when room came back
    await again.close()


WRITER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from loginprobe.agent.spool import Spool

    async def main():
        s = Spool(Path(sys.argv[1]), 1 << 30, 3600)
        await s.open()
        while True:
            seq = await s.append(lambda seq: b"result %d" % seq)
            print(seq, flush=True)  # only after the commit

    asyncio.run(main())
""")


async def test_everything_committed_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    committed = 0
    while committed < 300:
        committed = int(await proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    s = Spool(path, 1 << 30, 3600)
    await s.open()
    try:
        rows = await s.read_after(0, 100_000)
        seqs = [seq for seq, _ in rows]
        # Every result reported committed is there, in order, without gaps; one more may
        # have committed between its print and the kill.
        assert seqs[:committed] == list(range(1, committed + 1))
        assert seqs == list(range(1, len(seqs) + 1))
        assert all(data == b"result %d" % seq for seq, data in rows)
        assert s.next_seq == len(seqs) + 1
    finally:
        await s.close()
    # And the file is a normal SQLite database in WAL mode.
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

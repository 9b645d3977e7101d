"""Memory and CPU of idle held sessions: N MQTT sessions held against the servers' mosquitto
in one process; RSS growth per session, and CPU between keepalives. With --agent, as the
agent holds them: N checks with mode: session in its scheduler, every event through a real
SQLite spool; then also the CPU of a round of keepalives (--keepalive seconds apart).

    python -m bench.session_hold [--sessions 1000] [--idle 20]
    python -m bench.session_hold --agent [--sessions 1000] [--idle 20] [--keepalive 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from functools import partial
from pathlib import Path

from devstack.servers import Servers
from loginprobe.agent.config import PasswordSource
from loginprobe.agent.network_paths import ProbePath
from loginprobe.agent.scheduler import LOCAL, CheckSpec, Scheduler
from loginprobe.agent.sessions import sdk_backoff
from loginprobe.agent.spool import Spool
from loginprobe.agent.uplink import encode
from loginprobe.codec import Report
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.session import Event, SessionOptions, hold_session
from loginprobe.target import parse_target


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench(servers: Servers, sessions: int, idle: float) -> None:
    target = parse_target(f"mqtt://alice@127.0.0.1:{servers.mqtt_port}")
    options = ProbeOptions(password=servers.password, timeout=30.0)
    # Keepalives far apart: the idle window measures a session between them.
    opts = SessionOptions(keepalive=idle * 10, keepalive_timeout=10.0)
    answered, failed = 0, 0
    done = asyncio.Event()

    def emit(event: Event) -> None:
        nonlocal answered, failed
        if event["event"] == "login":
            answered += 1
            failed += not event["success"]
            if answered == sessions:
                done.set()

    before = rss_mib()
    tasks = []
    for _ in range(sessions):
        tasks.append(asyncio.create_task(hold_session(target, options, opts, sdk_backoff(), emit)))
        await asyncio.sleep(0.002)  # a gentle ramp, so mosquitto's accept queue keeps up
    await done.wait()
    held = rss_mib()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(idle)
    cpu = (cpu_seconds() - cpu0) / (time.monotonic() - wall0)
    print(f"sessions held:           {sessions - failed} ({failed} failed logins)")
    print(f"RSS before / held:       {before:.1f} MiB / {held:.1f} MiB")
    print(f"RSS per held session:    {(held - before) * 1024 / sessions:.1f} KiB")
    print(f"CPU between keepalives:  {cpu * 100:.2f} % of a core over {idle:g}s idle")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def bench_agent(servers: Servers, sessions: int, idle: float, keepalive: float) -> None:
    """The agent's way: a scheduler holding N session checks, events into a real spool."""
    os.environ["LOGINPROBE_BENCH_PASSWORD"] = servers.password
    url = f"mqtt://alice@127.0.0.1:{servers.mqtt_port}"
    with tempfile.TemporaryDirectory() as folder:
        spool = Spool(Path(folder) / "spool.db", 256 * 2**20, 7 * 86400.0)
        await spool.open()
        logins = 0
        done = asyncio.Event()

        async def sink(report: Report) -> None:
            nonlocal logins
            await spool.append(partial(encode, report))
            if report.session is not None and report.session.kind == "login":
                logins += 1
                if logins == sessions:
                    done.set()

        before = rss_mib()
        sched = Scheduler(sink, [ProbePath("default")], concurrency=64)
        password = PasswordSource(env="LOGINPROBE_BENCH_PASSWORD")
        for i in range(sessions):
            # Keepalives far apart for the idle window, as above; --keepalive afterwards.
            sched.upsert(LOCAL, [CheckSpec.build(
                f"held-{i}", url, 60.0, 30.0, password=password, mode="session",
                keepalive=idle * 10)])
            await asyncio.sleep(0.002)
        await done.wait()
        held = rss_mib()
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(idle)
        cpu = (cpu_seconds() - cpu0) / (time.monotonic() - wall0)
        print(f"agent sessions held:     {sessions} (events spooled: {spool.produced_total})")
        print(f"RSS before / held:       {before:.1f} MiB / {held:.1f} MiB")
        print(f"RSS per held session:    {(held - before) * 1024 / sessions:.1f} KiB")
        print(f"CPU between keepalives:  {cpu * 100:.2f} % of a core over {idle:g}s idle")
        # Now with keepalives every `keepalive` seconds: a changed check restarts its
        # session, so measure from the first round of keepalives on.
        await sched.stop()
        sched = Scheduler(sink, [ProbePath("default")], concurrency=64)
        logins, done = 0, asyncio.Event()
        for i in range(sessions):
            sched.upsert(LOCAL, [CheckSpec.build(
                f"held-{i}", url, 60.0, 30.0, password=password, mode="session",
                keepalive=keepalive)])
            await asyncio.sleep(0.002)
        await done.wait()
        await asyncio.sleep(keepalive)
        window = 2 * keepalive
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(window)
        cpu = (cpu_seconds() - cpu0) / (time.monotonic() - wall0)
        rounds = window / keepalive
        print(f"CPU with keepalives:     {cpu * 100:.2f} % of a core, keepalive every "
              f"{keepalive:g}s ({cpu * keepalive / sessions * 1e6:.0f} us of CPU per "
              f"keepalive; {rounds:g} rounds)")
        print(f"RSS with keepalives:     {rss_mib():.1f} MiB")
        await sched.stop()
        await spool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--agent", action="store_true",
                        help="hold them as the agent does (scheduler, spool)")
    parser.add_argument("--keepalive", type=float, default=10.0,
                        help="with --agent: the keepalive interval of the second phase")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, args.sessions * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    with Servers() as servers:
        if args.agent:
            asyncio.run(bench_agent(servers, args.sessions, args.idle, args.keepalive))
        else:
            asyncio.run(bench(servers, args.sessions, args.idle))


if __name__ == "__main__":
    main()

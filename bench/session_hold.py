"""Memory and CPU of idle held sessions: N MQTT sessions held against the servers' mosquitto
in one process; RSS growth per session, and CPU between keepalives.

    python -m bench.session_hold [--sessions 1000] [--idle 20]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

from devstack.servers import Servers
from loginprobe.agent.sessions import sdk_backoff
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, args.sessions * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    with Servers() as servers:
        asyncio.run(bench(servers, args.sessions, args.idle))


if __name__ == "__main__":
    main()

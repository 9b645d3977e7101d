"""Agent footprint with 1,000 checks scheduled: resident memory, and CPU between probes.

    python3 -m bench.agent_footprint                  # 1,000 checks, 30 s windows
    python3 -m bench.agent_footprint --checks 1000 --window 60

A real collector assigns the checks (tcp:// against a bare accept loop); the agent runs on
one core, the collector and the listener on the other. First every check is scheduled an
hour apart, so the window shows what the agent costs between probes (the scheduler's timers,
gRPC keepalives); then the same checks every 60 s (16.7 probes/s), for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PROBE_CPU,
    SERVER_CPU,
    Acceptor,
    load_note,
    machine,
    process_cpu_seconds,
)
from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident now and at its peak (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(agent: Agent, window: float) -> tuple[float, int]:
    """CPU share of one core over window seconds, and probes run in it."""
    cpu0, produced0 = process_cpu_seconds(agent.pid), agent.metric(
        "loginprobe_agent_results_produced_total")
    time.sleep(window)
    cpu1, produced1 = process_cpu_seconds(agent.pid), agent.metric(
        "loginprobe_agent_results_produced_total")
    return (cpu1 - cpu0) / window, int(produced1 - produced0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checks", type=int, default=1000)
    p.add_argument("--window", type=float, default=30.0, help="seconds measured per phase")
    args = p.parse_args()
    print(f"# agent footprint: {machine()}; {load_note()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    token, token_hash = new_token()
    with Acceptor() as target:
        url = f"tcp://127.0.0.1:{target.port}"

        def settings(interval: str) -> dict[str, Any]:
            return collector_config(
                folder / "c", pki=None, agents=[{"id": "bench", "token_sha256": token_hash}],
                checks=[{"name": f"check-{i:04}", "url": url, "interval": interval,
                         "timeout": "5s"} for i in range(args.checks)],
            )

        collector = Collector(folder / "c", settings("1h")).start_healthy(cpu=SERVER_CPU)
        agent = Agent(folder / "a", collector, token=token)
        try:
            agent.start(cpu=PROBE_CPU)
            started = time.monotonic()
            wait_for(f"{args.checks} assigned checks", lambda: agent.metric(
                'loginprobe_agent_checks{source="assigned"}') == args.checks, 60)
            print(f"# {args.checks} checks assigned and scheduled "
                  f"{time.monotonic() - started:.1f}s after start")
            time.sleep(5)  # past start-up: imports, first hello, the full CheckUpdate
            for interval, what in (("1h", "between probes"), ("60s", "probing")):
                if interval != "1h":
                    collector.rewrite(settings(interval))
                    wait_for("the new interval", lambda: agent.output().count(
                        "changed check") == args.checks, 30)
                share, probes = measure(agent, args.window)
                now, peak = rss_mib(agent.pid)
                print(f"{what:15} every {interval:4}  CPU {share * 100:6.2f} % of one core   "
                      f"RSS {now:6.1f} MiB (peak {peak:.1f})   "
                      f"{probes} probes in {args.window:g}s")
            assert agent.stop() == 0
        finally:
            for proc in (agent, collector):
                if proc.running():
                    proc.kill()
            collector.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

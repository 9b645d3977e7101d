"""Reconnect: how soon results flow again after the collector comes back from a kill -9.

    python3 -m bench.agent_reconnect                  # 10 rounds, collector down 3 s each
    python3 -m bench.agent_reconnect --rounds 20 --outage 10

One agent streams a check every 0.1 s to a real collector (TLS, bearer token). Each round
kills the collector, keeps it down, starts it again and times, from the moment its health
service says SERVING: the agent's stream back up (this includes what is left of the
agent's backoff delay, full jitter up to its cap) and the first new result written by the
collector (the results log). The reconnect itself is the agent's attempt that worked (TCP,
TLS, hello, welcome, as the agent logs it) plus the time from welcome to the first result
written: the replay of what was spooled during the outage.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import PROBE_CPU, SERVER_CPU, Acceptor, load_note, machine, median
from devstack.certs import PKI
from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for


def results_size(collector: Collector) -> int:
    path = Path(str(collector.settings["results_log"]))
    return path.stat().st_size if path.exists() else 0


def last_connect_seconds(agent: Agent) -> float:
    """How long the agent's last successful attempt took, from its log line."""
    return float(re.findall(r"connected to the collector .* in (\d+) ms", agent.output())[-1]) / 1e3


def poll(ready: Callable[[], bool], timeout: float = 60.0) -> float:
    """Poll every 5 ms; the monotonic time at which ready() first held."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("no reconnect")
        time.sleep(0.005)
    return time.monotonic()


def one_round(agent: Agent, collector: Collector, outage: float) -> tuple[float, float, float]:
    """Kill the collector, wait, start it: seconds from SERVING to the stream up and to
    the first new result, and how long the agent's successful attempt took."""
    collector.kill()
    time.sleep(outage)
    collector.start(cpu=SERVER_CPU)
    back = poll(collector.healthy)
    size = results_size(collector)
    up = poll(lambda: agent.metric("loginprobe_agent_uplink_connected") == 1.0)
    flowing = poll(lambda: results_size(collector) > size)
    return up - back, flowing - back, last_connect_seconds(agent)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--outage", type=float, default=3.0, help="seconds the collector is down")
    args = p.parse_args()
    print(f"# agent reconnect: {machine()}; {load_note()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-reconnect-"))
    pki = PKI(folder / "pki")
    token, token_hash = new_token()
    with Acceptor() as target:
        settings = collector_config(
            folder / "c", pki=pki, agents=[{"id": "bench", "token_sha256": token_hash}],
            checks=[{"name": "fast", "url": f"tcp://127.0.0.1:{target.port}",
                     "interval": "0.1s", "timeout": "0.1s"}],
        )
        collector = Collector(folder / "c", settings, pki).start_healthy(cpu=SERVER_CPU)
        agent = Agent(folder / "a", collector, token=token)
        to_stream, to_flow, itself = [], [], []
        try:
            agent.start(cpu=PROBE_CPU)
            wait_for("results", lambda: results_size(collector) > 0, 30)
            for _ in range(args.rounds):
                up, flowing, connect = one_round(agent, collector, args.outage)
                to_stream.append(up)
                to_flow.append(flowing)
                itself.append(connect + flowing - up)
                print(f"collector SERVING -> stream up {up:6.3f}s   "
                      f"-> results flowing {flowing:6.3f}s   "
                      f"(reconnect itself {itself[-1]:5.3f}s)", flush=True)
            assert agent.stop() == 0
        finally:
            for proc in (agent, collector):
                if proc.running():
                    proc.kill()
    print(f"median: stream up {median(to_stream):.3f}s, results flowing {median(to_flow):.3f}s, "
          f"reconnect itself {median(itself):.3f}s; worst {max(to_flow):.3f}s "
          f"(reconnect itself at worst {max(itself):.3f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

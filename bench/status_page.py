"""The /status page at fleet size: render CPU time and memory for 1,000 agents x 20 checks,
each with a full ring of kept attempts (status.max_attempts), half the checks failing on
one agent in ten.

    python3 -m bench.status_page [--agents 1000] [--checks 20] [--attempts 10] [--runs 5]

In-process: the collector's own StatusStore fed the protobufs ingest hands the sinks, and
StatusPage rendering the overview and one attempts page as the WSGI app would.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import tracemalloc

from bench.collector_ingest import _template
from bench.common import machine
from loginprobe.collector.ingest import Accepted, FleetState
from loginprobe.collector.status import StatusPage, StatusStore
from loginprobe.wire import collector_pb2 as pb

PATHS = ["wifi", "cellular"]


def _fleet(agents: int, checks: int, attempts: int) -> StatusStore:
    template = pb.ProbeResult.FromString(b"\x08\x01" + _template())
    fleet = FleetState()
    store = StatusStore(fleet, max_attempts=attempts)
    now = time.time_ns()
    for a in range(agents):
        agent = f"agent-{a:04d}"
        labels = {"region": f"region-{a % 10}", "path": PATHS[a // 40 % 2]}
        fleet.labels[agent] = fleet.connected[agent] = labels
        for n in range(attempts):
            batch = []
            for c in range(checks):
                msg = pb.ProbeResult()
                msg.CopyFrom(template)
                msg.check = f"check-{c:02d}"
                msg.url = f"xmpp://probe@xmpp{c:02d}.example.net:5222"
                msg.labels.clear()
                msg.labels.update(labels)
                msg.started_at_unix_nano = now - (attempts - n) * 15 * 10**9
                if a % 10 == 0 and c % 2 == 0:
                    msg.success, msg.reason, msg.step = False, "auth_rejected", "account"
                    msg.message = "SASL failure: not-authorized"
                batch.append(msg)
            store.write(Accepted(agent, {}, batch))
    return store


def _render(page: StatusPage, query: str) -> int:
    environ = {"QUERY_STRING": query, "REMOTE_ADDR": "127.0.0.1"}
    return sum(len(b) for b in page(environ, lambda *_: None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--attempts", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    gc.collect()
    tracemalloc.start()
    store = _fleet(args.agents, args.checks, args.attempts)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    page = StatusPage(store)
    for name, query in (("overview", ""),
                        ("attempts", "check=check-00&agent=agent-0000&path=wifi")):
        times, size = [], 0
        for _ in range(args.runs):
            cpu = time.process_time()
            size = _render(page, query)
            times.append(time.process_time() - cpu)
        print(f"{name:9} {statistics.median(times) * 1000:8.1f} ms CPU (median of {args.runs}),"
              f" {size / 1024:.0f} KiB of HTML")
    print(f"store     {held / 2**20:8.1f} MiB for {args.agents} agents x {args.checks} checks x "
          f"{args.attempts} attempts kept ({len(store.series)} series, pid {os.getpid()})")


if __name__ == "__main__":
    main()

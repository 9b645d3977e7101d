"""Matrix logins per CPU-second of the probing process, beside HTTPS Basic logins against
nginx in the same rounds: matrix-synapse behind nginx's TLS, the servers on one core, each
run a fresh prober process pinned to the other (bench/probe_throughput.py's workers).

    .venv/bin/python -m bench.matrix_login                 # 5 rounds
    .venv/bin/python -m bench.matrix_login --runs 3 --concurrency 10

A matrix:// attempt is one TLS connection carrying four requests: the .well-known lookup,
/_matrix/client/versions, the password login and, after the verdict, the logout. A run
with any failed attempt is discarded and run again (probe_throughput.one_run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from bench.common import PROBE_CPU, SERVER_CPU, load_note, machine, median, pin
from bench.probe_throughput import one_run
from devstack.servers import Servers
from devstack.synapse import Synapse

# (name, what one attempt is, attempts per run); synapse, on one busy core, answers a few
# hundred logins a second, so its runs are shorter.
CASES = [
    ("https", "https:// Basic login via run_check (TLS + GET, nginx)", 2000),
    ("matrix", "matrix:// login via run_check (TLS + .well-known + versions + login, "
     "then logout; synapse behind nginx)", 400),
    ("matrix-bare", "matrix:// where .well-known is 404 (the server is its own homeserver)",
     400),
]


@contextlib.contextmanager
def servers_on_their_core() -> Iterator[tuple[Servers, Synapse]]:
    """The servers and synapse, started from this process while it is pinned to the
    servers' core (children inherit the affinity); this process goes back afterwards."""
    before = os.sched_getaffinity(0)
    pin(SERVER_CPU)
    try:
        with Servers() as servers, Synapse(servers) as synapse:
            os.sched_setaffinity(0, before)
            yield servers, synapse
    finally:
        os.sched_setaffinity(0, before)


def spec(name: str, attempts: int, servers: Servers, synapse: Synapse,
         args: argparse.Namespace) -> dict[str, Any]:
    urls = {
        # By name too, so that every case asks the servers' DNS as the matrix ones do.
        "https": f"https://{servers.user}@http.test:{servers.https_port}/login",
        "matrix": f"matrix://{synapse.user}@matrix.test:{synapse.port}",
        "matrix-bare": f"matrix://{synapse.user}@matrix.test:{synapse.bare_port}",
    }
    return {
        "kind": "loginprobe", "loop": "asyncio", "url": urls[name],
        "attempts": max(1, int(attempts * args.scale)), "concurrency": args.concurrency,
        "password": servers.password, "ca_file": str(servers.ca_file),
        "resolver": servers.resolver,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20, help="attempts in flight")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply attempts per run")
    args = parser.parse_args()
    print(f"# matrix_login: {machine()}")
    print(f"# prober on core {PROBE_CPU}, servers on core {SERVER_CPU}; "
          f"{args.concurrency} in flight; median of {args.runs} runs; {load_note()}")
    for name, what, attempts in CASES:
        print(f"#   {name:12} {what}; {int(attempts * args.scale)} attempts per run")
    rates: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    walls: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    with servers_on_their_core() as (servers, synapse):
        devices = len(synapse.devices(synapse.user))
        # Round-robin, one run of each case per round: a busy spell skews them alike.
        for round_ in range(args.runs):
            for name, _, attempts in CASES:
                rate, wall, _ = one_run(spec(name, attempts, servers, synapse, args))
                rates[name].append(rate)
                walls[name].append(wall)
            print(f"# round {round_ + 1}/{args.runs} done; {load_note()}", flush=True)
        left = len(synapse.devices(synapse.user)) - devices
    for name, _, _ in CASES:
        print(f"{name:12} {median(rates[name]):7.0f} /CPU-s  "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates[name])})  "
              f"{median(walls[name]):6.0f} /s wall", flush=True)
    print(f"# devices left on the account after every run: {left} (each login logged out)")
    print(f"# done; {load_note()}")


if __name__ == "__main__":
    main()

"""How close the tcp and tls phases are to what a packet capture of the same connections
says, at 1 and at 100 attempts in flight; blackbox_exporter's probe_duration_seconds beside.

    .venv/bin/python -m bench.timing_accuracy            # as root: tshark captures loopback
    .venv/bin/python -m bench.timing_accuracy -k 300 --loads 1,100

For each attempt the capture gives SYN -> SYN/ACK (the tcp truth) and ClientHello -> the
client's Finished (the tls truth: in TLS 1.3 the client's second flight, its first data
after the ClientHello). Our attempts are matched to their connection by the local port the
transcript names; blackbox_exporter does not say its source port, so each of its probes is
sent to a loopback address of its own (bench.acceptor --addresses) and matched by that.
The prober runs on one core, the servers and tshark on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.acceptor import extra_address
from bench.common import (
    PROBE_CPU,
    SERVER_CPU,
    Acceptor,
    Blackbox,
    Servers,
    load_note,
    machine,
    median,
    percentile,
    pin,
    pinned,
    python,
    raise_nofile,
    run_json,
)
from bench.probe_throughput import HTTPClient, lanes, metric

TARGET_US = 50.0  # the bound on the median tcp error, at both loads
_LOCAL_PORT = re.compile(r"TCP connected to \S+ port \d+ from \S+ port (\d+)")


@dataclass
class Conn:
    """What the capture saw of one TCP connection, in ns from the capture's start."""

    syn: int | None = None
    synack: int | None = None
    client_data: list[int] = field(default_factory=list)  # client -> server, with payload
    client_hello: int | None = None
    count: int = 0  # SYNs seen: more than one means the 4-tuple was reused, so ambiguous


def _ns(relative: str) -> int:
    whole, _, frac = relative.partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def _flag(value: str) -> bool:
    return value in ("1", "True", "true")


def read_capture(path: Path, server_port: int) -> dict[tuple[str, int], Conn]:
    """Connections to server_port by (client-side key): (client address, client port) for
    the prober that names its port, and the server address when the port is unknown."""
    fields = [
        "frame.time_relative",
        "ip.src",
        "tcp.srcport",
        "ip.dst",
        "tcp.dstport",
        "tcp.flags.syn",
        "tcp.flags.ack",
        "tcp.len",
        "tls.handshake.type",
    ]
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=\t"]
        + [arg for f in fields for arg in ("-e", f)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    conns: dict[tuple[str, int], Conn] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < len(fields):
            continue
        t, src, sport, dst, dport, syn, ack, length, hs_type = parts[: len(fields)]
        to_server = int(dport) == server_port
        key = (src, int(sport), dst) if to_server else (dst, int(dport), src)
        conn = conns.setdefault((f"{key[0]}|{key[2]}", key[1]), Conn())
        when = _ns(t)
        if _flag(syn) and not _flag(ack) and to_server:
            conn.count += 1
            conn.syn = when
        elif _flag(syn) and _flag(ack) and not to_server and conn.synack is None:
            conn.synack = when
        elif to_server and length and int(length) > 0:
            if "1" in hs_type.split(",") and conn.client_hello is None:
                conn.client_hello = when
            conn.client_data.append(when)
    return conns


@contextlib.contextmanager
def capture(port: int) -> Iterator[Path]:
    """tshark on loopback for one port, on the servers' core; yields the pcapng path once
    packets are really being captured."""
    if shutil.which("tshark") is None:
        sys.exit("apt-get install tshark (and run as root)")
    folder = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    path, summary = folder / "lo.pcapng", folder / "summary.txt"
    with summary.open("wb") as out:
        proc = subprocess.Popen(
            # -B: a 64 MiB kernel buffer so a burst of handshakes drops no packet. -P -l: a
            # line per packet as it is captured, which is how we know capture has begun.
            [
                "tshark",
                "-i",
                "lo",
                "-B",
                "64",
                "-f",
                f"tcp port {port}",
                "-w",
                str(path),
                "-P",
                "-l",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(SERVER_CPU),
        )
    assert proc.stderr is not None
    # "Capturing on 'Loopback: lo'" comes before the capture really runs: the first
    # packets after it can still be missed. Knock (connect and close) until one is seen;
    # those connections match no attempt.
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            pass
        time.sleep(0.1)
        if summary.stat().st_size > 0:
            break
    else:
        proc.kill()
        sys.exit(f"tshark captured nothing on lo port {port}; run as root")
    try:
        yield path
    finally:
        time.sleep(0.3)  # the last FINs
        proc.send_signal(signal.SIGINT)
        _, said = proc.communicate(timeout=30)
        # A dropped packet can only cost a match, never a wrong one; still, say so.
        for line in said.splitlines():
            if "dropped" in line:
                print(f"#   tshark: {line.strip()}")


def stats_us(pairs: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """(median |error|, p95 |error|, median signed error, median capture) in µs for
    (measured ns, captured ns) pairs."""
    absolute = [abs(m - c) / 1000 for m, c in pairs]
    return (
        median(absolute),
        percentile(absolute, 95),
        median([(m - c) / 1000 for m, c in pairs]),
        median([c / 1000 for _, c in pairs]),
    )


def report(row: str, runs: list[list[tuple[float, float]]]) -> None:
    """One line per row: the median over runs of each run's statistics."""
    done = [stats_us(pairs) for pairs in runs if pairs]
    if not done:
        print(f"{row}: no matched attempts")
        return
    med, p95, signed, truth = (median([d[i] for d in done]) for i in range(4))
    verdict = ""
    if "tcp phase" in row:
        verdict = f"  {'within' if med <= TARGET_US else 'OVER'} the {TARGET_US:g} µs target"
    print(
        f"{row}: |error| median {med:8.1f} µs, p95 {p95:8.1f} µs; signed {signed:+8.1f} µs; "
        f"capture {truth:7.1f} µs; n={sum(len(p) for p in runs)} "
        f"(run medians: {', '.join(f'{d[0]:.1f}' for d in done)}){verdict}",
        flush=True,
    )


# -- loginprobe, in this process on the probing core --------------------------------------


async def our_attempts(url: str, ca_file: str, count: int, in_flight: int) -> list[Any]:
    from loginprobe.probes.attempt import ProbeOptions
    from loginprobe.probes.run import run_check
    from loginprobe.result import Result
    from loginprobe.target import parse_target

    target = parse_target(url)
    options = ProbeOptions(ca_file=ca_file, timeout=10.0)
    results: list[Result] = []

    async def one() -> str | None:
        result = await run_check(target, options)
        results.append(result)
        return None if result.success else f"{result.reason}: {result.message}"

    await lanes(in_flight, min(50, count), one)  # warm-up, not captured for matching
    results.clear()
    failures = await lanes(in_flight, count, one)
    if failures:
        sys.exit(f"{url}: attempts failed, figures discarded: {dict(failures)}")
    return results


def measure_ours(
    url: str, port: int, ca_file: str, count: int, in_flight: int
) -> dict[str, list[tuple[float, float]]]:
    with capture(port) as pcap:
        results = asyncio.run(our_attempts(url, ca_file, count, in_flight))
    conns = read_capture(pcap, port)
    shutil.rmtree(pcap.parent, ignore_errors=True)
    pairs: dict[str, list[tuple[float, float]]] = {"tcp": [], "tls": []}
    unmatched = 0
    for result in results:
        local = next(
            (m for line in result.transcript if (m := _LOCAL_PORT.search(line.text))), None
        )
        conn = conns.get(("127.0.0.1|127.0.0.1", int(local.group(1)))) if local else None
        if conn is None or conn.count != 1 or conn.syn is None or conn.synack is None:
            unmatched += 1
            continue
        phases = {p.name: p.duration_ns for p in result.phases}
        pairs["tcp"].append((phases["tcp"], conn.synack - conn.syn))
        if "tls" in phases and conn.client_hello is not None:
            after = [t for t in conn.client_data if t > conn.client_hello]
            if after:  # the client's Finished: its first data after the ClientHello
                pairs["tls"].append((phases["tls"], after[0] - conn.client_hello))
    if unmatched:
        print(f"#   {unmatched} of {len(results)} attempts not found in the capture")
    return pairs


# -- blackbox_exporter, driven from the servers' core --------------------------------------


def worker_blackbox(spec: dict[str, Any]) -> dict[str, Any]:
    """Probes each address once, in_flight at a time; returns address -> probe duration."""

    async def main() -> dict[str, Any]:
        clients = [
            HTTPClient(*await asyncio.open_connection("127.0.0.1", spec["bb_port"]))
            for _ in range(spec["in_flight"])
        ]
        free = list(clients)
        todo = list(spec["addresses"])
        durations: dict[str, float] = {}

        async def one() -> str | None:
            address, client = todo.pop(), free.pop()
            try:
                body = await client.get(
                    f"/probe?module=tcp_connect&target={address}:{spec['port']}"
                )
            finally:
                free.append(client)
            if metric(body, "probe_success") != 1:
                return "probe_success 0"
            durations[address] = metric(body, "probe_duration_seconds") or 0.0
            return None

        failures = await lanes(len(clients), len(todo), one)
        for client in clients:
            client.writer.close()
        return {"durations": durations, "failures": dict(failures)}

    return asyncio.run(main())


def measure_blackbox(
    bb: Blackbox, port: int, addresses: list[str], in_flight: int
) -> list[tuple[float, float]]:
    spec = {"bb_port": bb.port, "port": port, "addresses": addresses, "in_flight": in_flight}
    with capture(port) as pcap:
        out = run_json(
            [python(), "-m", "bench.timing_accuracy", "--worker", json.dumps(spec)], SERVER_CPU
        )
    if out["failures"]:
        sys.exit(f"blackbox tcp_connect failed, figures discarded: {out['failures']}")
    conns = read_capture(pcap, port)
    shutil.rmtree(pcap.parent, ignore_errors=True)
    by_server = {key.split("|")[1]: c for (key, _), c in conns.items()}
    pairs = []
    for address, seconds in out["durations"].items():
        conn = by_server.get(address)
        if conn and conn.count == 1 and conn.syn is not None and conn.synack is not None:
            pairs.append((seconds * 1e9, float(conn.synack - conn.syn)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--attempts", type=int, default=1000, help="per row and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loads", default="1,100", help="attempts in flight")
    parser.add_argument("--blackbox-loads", default="1,100,128")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_blackbox(json.loads(args.worker))))
        return

    loads = [int(x) for x in args.loads.split(",")]
    bb_loads = [int(x) for x in args.blackbox_loads.split(",") if x]
    bb = Blackbox.available() and bool(bb_loads)
    raise_nofile(4096)
    print(f"# timing_accuracy: {machine()}")
    print(
        f"# prober on core {PROBE_CPU}; servers and tshark on core {SERVER_CPU}; "
        f"{args.attempts} attempts per row and run; median of {args.runs} runs; {load_note()}"
    )
    # Each capture is read on its own, so blackbox's addresses only need to be distinct
    # within one row of one run.
    with Servers() as servers, Acceptor(addresses=args.attempts if bb else 0) as acceptor:
        pin(PROBE_CPU)  # after starting the servers, which were pinned to the other core
        ca_file = servers.info["ca_file"]
        https = servers.info["https_port"]
        tcp_url = f"tcp://127.0.0.1:{acceptor.port}"
        tls_url = f"tls://127.0.0.1:{https}"
        rows: dict[str, list[list[tuple[float, float]]]] = {}
        for _ in range(args.runs):
            for n in loads:
                tcp = measure_ours(tcp_url, acceptor.port, ca_file, args.attempts, n)
                rows.setdefault(f"loginprobe tcp:// tcp phase {n:3} in flight", []).append(
                    tcp["tcp"]
                )
                tls = measure_ours(tls_url, https, ca_file, args.attempts, n)
                rows.setdefault(f"loginprobe tls:// tcp phase {n:3} in flight", []).append(
                    tls["tcp"]
                )
                rows.setdefault(f"loginprobe tls:// tls phase {n:3} in flight", []).append(
                    tls["tls"]
                )
            if bb:
                with Blackbox(ca_file) as exporter:
                    mine = [extra_address(j) for j in range(args.attempts)]
                    for n in bb_loads:
                        rows.setdefault(
                            f"blackbox tcp_connect duration {n:3} in flight", []
                        ).append(measure_blackbox(exporter, acceptor.port, mine, n))
            print(f"# run done; {load_note()}", flush=True)
        for row, runs in rows.items():
            report(row, runs)
    if not bb:
        print("blackbox_exporter: apt-get install prometheus-blackbox-exporter")
    print(f"# done; {load_note()}")


if __name__ == "__main__":
    main()

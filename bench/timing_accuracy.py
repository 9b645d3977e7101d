"""How close the tcp, tls and login phases (and the server's time) are to what a packet
capture of the same connections says, at 1 and at 100 attempts in flight; blackbox_exporter's
probe_duration_seconds beside.

    .venv/bin/python -m bench.timing_accuracy            # as root: tshark captures loopback
    .venv/bin/python -m bench.timing_accuracy -k 300 --loads 1,100 --only tls,mqtts

For each attempt the capture gives SYN -> SYN/ACK (the tcp truth); ClientHello -> the
client's Finished (the tls truth: in TLS 1.3 the client's second flight, its first data
after the ClientHello), ClientHello -> the server's last handshake record before it (the
handshake without our processing of the server's flight), ClientHello -> the server's first
bytes (the tls server-time truth); and for MQTT over TLS, CONNECT out (the client's data
after its Finished) -> CONNACK in (the server's first small record after it; its session
tickets are larger), the login truth and, one exchange, its server time too. Our attempts
are matched to their connection by the local port the transcript names; blackbox_exporter
does not say its source port, so each of its probes is sent to a loopback address of its own
(bench.acceptor --addresses, with --tls for its TLS probes) and matched by that. The prober
runs on one core, the servers and tshark on the other.
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

# Bounds on the median |error| at both loads: tcp, tls and login phases, server time.
TARGETS_US = (("tcp phase", 50.0), ("tls phase", 200.0), ("login phase", 200.0),
              ("server time", 50.0))
_LOCAL_PORT = re.compile(r"TCP connected to \S+ port \d+ from \S+ port (\d+)")


@dataclass
class Conn:
    """What the capture saw of one TCP connection, in ns from the capture's start."""

    syn: int | None = None
    synack: int | None = None
    client_data: list[int] = field(default_factory=list)  # client -> server, with payload
    server_data: list[tuple[int, int]] = field(default_factory=list)  # (time, bytes) back
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
        elif not to_server and length and int(length) > 0:
            conn.server_data.append((when, int(length)))
    return conns


CONNACK_MAX_BYTES = 100  # a CONNACK in a TLS 1.3 record is 26 bytes; a session ticket ~250


def truths(conn: Conn, version: str = "TLSv1.3") -> dict[str, int]:
    """What the capture says of one TLS connection, in ns; keys as measure_ours'."""
    out: dict[str, int] = {}
    hello = conn.client_hello
    if hello is None:
        return out
    after = [t for t in conn.client_data if t > hello]
    back = [(t, n) for t, n in conn.server_data if t > hello]
    if back:
        out["tls_server"] = back[0][0] - hello
    if version == "TLSv1.2":
        # Two round trips: the handshake ends when the server's Finished arrives, its answer
        # to our second flight (the client's first data after the ClientHello).
        if after:
            finished = next((t for t, _ in back if t > after[0]), None)
            if finished is not None:
                out["tls"] = out["tls_last"] = finished - hello
                out["tls_server"] = out.get("tls_server", 0) + finished - after[0]
        return out
    if after:
        finished = after[0]
        out["tls"] = finished - hello
        flight = [t for t, _ in back if t < finished]
        if flight:
            out["tls_last"] = flight[-1] - hello
    if len(after) > 1:
        connect = after[1]
        connack = next((t for t, n in back if t > connect and n < CONNACK_MAX_BYTES), None)
        if connack is not None:
            out["login"] = out["login_server"] = connack - connect
    return out


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
    bound = next((us for what, us in TARGETS_US
                  if what in row and "blackbox" not in row and "last record" not in row), None)
    if bound is not None:
        verdict = f"  {'within' if med <= bound else 'OVER'} the {bound:g} µs target"
    print(
        f"{row}: |error| median {med:8.1f} µs, p95 {p95:8.1f} µs; signed {signed:+8.1f} µs; "
        f"capture {truth:7.1f} µs; n={sum(len(p) for p in runs)} "
        f"(run medians: {', '.join(f'{d[0]:.1f}' for d in done)}){verdict}",
        flush=True,
    )


# -- loginprobe, in this process on the probing core --------------------------------------


async def our_attempts(
    url: str, ca_file: str, count: int, in_flight: int, password: str | None
) -> list[Any]:
    from loginprobe.probes.attempt import ProbeOptions
    from loginprobe.probes.run import run_check
    from loginprobe.result import Result
    from loginprobe.target import parse_target

    target = parse_target(url)
    options = ProbeOptions(ca_file=ca_file, timeout=10.0, password=password)
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


# What we report (phase, and whether its duration or its server time) for each truth.
_OURS = {
    "tls": ("tls", "duration"), "tls_last": ("tls", "duration"),
    "tls_server": ("tls", "server"), "login": ("login", "duration"),
    "login_server": ("login", "server"),
}


def measure_ours(
    url: str, port: int, ca_file: str, count: int, in_flight: int, password: str | None = None
) -> dict[str, list[tuple[float, float]]]:
    with capture(port) as pcap:
        results = asyncio.run(our_attempts(url, ca_file, count, in_flight, password))
    conns = read_capture(pcap, port)
    shutil.rmtree(pcap.parent, ignore_errors=True)
    pairs: dict[str, list[tuple[float, float]]] = {"tcp": [], **{k: [] for k in _OURS}}
    clocks: dict[str, int] = {}
    unmatched = 0
    for result in results:
        local = next(
            (m for line in result.transcript if (m := _LOCAL_PORT.search(line.text))), None
        )
        conn = conns.get(("127.0.0.1|127.0.0.1", int(local.group(1)))) if local else None
        if conn is None or conn.count != 1 or conn.syn is None or conn.synack is None:
            unmatched += 1
            continue
        phases = {p.name: p for p in result.phases}
        for p in result.phases:
            clocks[f"{p.name}:{p.clock}"] = clocks.get(f"{p.name}:{p.clock}", 0) + 1
        pairs["tcp"].append((phases["tcp"].duration_ns, conn.synack - conn.syn))
        version = result.tls.version if result.tls else "TLSv1.3"
        for key, truth in truths(conn, version).items():
            name, what = _OURS[key]
            phase = phases.get(name)
            if phase is None:
                continue
            ours = phase.duration_ns if what == "duration" else phase.server_ns
            if ours is not None:
                pairs[key].append((ours, truth))
    if unmatched:
        print(f"#   {unmatched} of {len(results)} attempts not found in the capture")
    print(f"#   {url.split(':')[0]} {in_flight} in flight, phase clocks: {clocks}", flush=True)
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
                    f"/probe?module={spec['module']}&target={address}:{spec['port']}"
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
    bb: Blackbox, port: int, addresses: list[str], in_flight: int, module: str = "tcp_connect"
) -> list[tuple[float, float]]:
    """probe_duration_seconds against the capture: SYN -> SYN/ACK for tcp_connect, SYN ->
    the client's Finished for a TLS module (its probe is the connect and the handshake)."""
    spec = {"bb_port": bb.port, "port": port, "addresses": addresses, "in_flight": in_flight,
            "module": module}
    with capture(port) as pcap:
        out = run_json(
            [python(), "-m", "bench.timing_accuracy", "--worker", json.dumps(spec)], SERVER_CPU
        )
    if out["failures"]:
        sys.exit(f"blackbox {module} failed, figures discarded: {out['failures']}")
    conns = read_capture(pcap, port)
    shutil.rmtree(pcap.parent, ignore_errors=True)
    by_server = {key.split("|")[1]: c for (key, _), c in conns.items()}
    pairs = []
    for address, seconds in out["durations"].items():
        conn = by_server.get(address)
        if not (conn and conn.count == 1 and conn.syn is not None and conn.synack is not None):
            continue
        if module == "tcp_connect":
            pairs.append((seconds * 1e9, float(conn.synack - conn.syn)))
        elif "tls" in (found := truths(conn)) and conn.client_hello is not None:
            pairs.append((seconds * 1e9, float(conn.client_hello + found["tls"] - conn.syn)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--attempts", type=int, default=1000, help="per row and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loads", default="1,100", help="attempts in flight")
    parser.add_argument("--blackbox-loads", default="1,100,128")
    parser.add_argument("--only", default="tcp,tls,mqtts", help="of tcp, tls, mqtts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_blackbox(json.loads(args.worker))))
        return

    loads = [int(x) for x in args.loads.split(",")]
    bb_loads = [int(x) for x in args.blackbox_loads.split(",") if x]
    only = set(args.only.split(","))
    bb = Blackbox.available() and bool(bb_loads)
    raise_nofile(4096)
    print(f"# timing_accuracy: {machine()}")
    print(
        f"# prober on core {PROBE_CPU}; servers and tshark on core {SERVER_CPU}; "
        f"{args.attempts} attempts per row and run; median of {args.runs} runs; {load_note()}"
    )
    rows: dict[str, list[list[tuple[float, float]]]] = {}

    def add(name: str, pairs: list[tuple[float, float]]) -> None:
        rows.setdefault(name, []).append(pairs)

    # Each capture is read on its own, so blackbox's addresses only need to be distinct
    # within one row of one run.
    extra = args.attempts if bb else 0
    with Servers() as servers, Acceptor(addresses=extra) as acceptor:
        pki = Path(servers.info["tmpdir"]) / "pki"
        tls_pair = (str(pki / "valid.crt"), str(pki / "valid.key"))
        with Acceptor(addresses=extra, tls=tls_pair) as tls_acceptor:
            pin(PROBE_CPU)  # after starting the servers, which were pinned to the other core
            ca_file = servers.info["ca_file"]
            https, mqtts = servers.info["https_port"], servers.info["mqtts_port"]
            user, password = servers.info["user"], servers.info["password"]
            for _ in range(args.runs):
                for n in loads:
                    if "tcp" in only:
                        tcp = measure_ours(f"tcp://127.0.0.1:{acceptor.port}", acceptor.port,
                                           ca_file, args.attempts, n)
                        add(f"loginprobe tcp:// tcp phase {n:3} in flight", tcp["tcp"])
                    if "tls" in only:
                        tls = measure_ours(f"tls://127.0.0.1:{https}", https, ca_file,
                                           args.attempts, n)
                        add(f"loginprobe tls:// tcp phase {n:3} in flight", tls["tcp"])
                        add(f"loginprobe tls:// tls phase {n:3} in flight", tls["tls"])
                        add(f"loginprobe tls:// tls phase vs server's last record {n:3} in flight",
                            tls["tls_last"])
                        add(f"loginprobe tls:// tls server time {n:3} in flight",
                            tls["tls_server"])
                    if "mqtts" in only:
                        mq = measure_ours(f"mqtts://{user}@127.0.0.1:{mqtts}", mqtts, ca_file,
                                          args.attempts, n, password)
                        add(f"loginprobe mqtts:// tls phase {n:3} in flight", mq["tls"])
                        add(f"loginprobe mqtts:// tls phase vs server's last record {n:3} in "
                            "flight", mq["tls_last"])
                        add(f"loginprobe mqtts:// tls server time {n:3} in flight",
                            mq["tls_server"])
                        add(f"loginprobe mqtts:// login phase {n:3} in flight", mq["login"])
                        add(f"loginprobe mqtts:// login server time {n:3} in flight",
                            mq["login_server"])
                if bb:
                    with Blackbox(ca_file) as exporter:
                        mine = [extra_address(j) for j in range(args.attempts)]
                        for n in bb_loads:
                            if "tcp" in only:
                                add(f"blackbox tcp_connect duration {n:3} in flight",
                                    measure_blackbox(exporter, acceptor.port, mine, n))
                            if "tls" in only or "mqtts" in only:
                                add(f"blackbox tls duration (SYN -> Finished) {n:3} in flight",
                                    measure_blackbox(exporter, tls_acceptor.port, mine, n,
                                                     "tls_named"))
                print(f"# run done; {load_note()}", flush=True)
    for row, runs in rows.items():
        report(row, runs)
    if not bb:
        print("blackbox_exporter: apt-get install prometheus-blackbox-exporter")
    print(f"# done; {load_note()}")


if __name__ == "__main__":
    main()

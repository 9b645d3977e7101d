"""Probes per CPU-second of the probing process: tcp://, tls://, MQTT-over-TLS and XMPP
STARTTLS+SCRAM logins through run_check, the same logins over WebSocket with TLS
(mqtt+wss://, xmpp+wss://, with the upgrade phase's median duration), bare asyncio loops
for reference, and blackbox_exporter doing the same TCP and TLS probes, each pinned to one
core with the servers on the other.

    .venv/bin/python -m bench.probe_throughput                 # everything, 5 runs each
    .venv/bin/python -m bench.probe_throughput --runs 3 --only tcp,mqtts

Every run is a fresh process: a warm-up, then N attempts with a fixed number in flight,
timed by the process's own CPU clock (user + system). A run with any failed attempt is
discarded (and said so) and run again; a figure for failures is worthless.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bench.common import (
    PROBE_CPU,
    SERVER_CPU,
    Acceptor,
    Blackbox,
    Servers,
    cpu_seconds,
    load_note,
    machine,
    median,
    process_cpu_seconds,
    python,
    raise_nofile,
    run_json,
)

WARMUP = 200  # attempts before the clock starts: imports, caches, the first TLS context


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    attempts: int
    target: float | None  # probes per CPU-second we must reach, if any
    prober: str  # loginprobe, asyncio, blackbox
    loops: tuple[str, ...] = ("asyncio", "uvloop")


SCENARIOS = [
    Scenario("tcp", "tcp:// via run_check (connect only)", 20000, 5000, "loginprobe"),
    Scenario(
        "tls", "tls:// via run_check (TCP + TLS 1.2 handshake, nginx)", 4000, None, "loginprobe"
    ),
    Scenario(
        "mqtts",
        "mqtts:// login via run_check (TLS + CONNECT/CONNACK + DISCONNECT)",
        4000,
        800,
        "loginprobe",
    ),
    Scenario(
        "xmpp",
        "xmpp:// login via run_check (STARTTLS + SCRAM + bind, prosody)",
        600,
        None,
        "loginprobe",
    ),
    Scenario(
        "mqtt+wss",
        "mqtt+wss:// login via run_check (TLS + upgrade + CONNECT/CONNACK, mosquitto)",
        2000,
        None,
        "loginprobe",
    ),
    Scenario(
        "xmpp+wss",
        "xmpp+wss:// login via run_check (TLS + upgrade + SCRAM + bind, prosody)",
        600,
        None,
        "loginprobe",
    ),
    Scenario("raw-tcp", "bare asyncio loop: sock_connect + close", 20000, None, "asyncio"),
    Scenario(
        "raw-tls",
        "bare asyncio loop: open_connection(ssl=ctx) + close (nginx)",
        4000,
        None,
        "asyncio",
    ),
    Scenario("bb-tcp", "blackbox_exporter tcp_connect", 20000, None, "blackbox", ("go",)),
    Scenario(
        "bb-tls", "blackbox_exporter tcp + tls: true (nginx)", 5000, None, "blackbox", ("go",)
    ),
]


# -- workers: each runs in its own pinned process and prints one JSON line ---------------


def run_loop(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]], loop: str) -> dict[str, Any]:
    if loop == "uvloop":
        # Optional bench extra, never a runtime dependency; imported by name so mypy and
        # machines without it are content.
        uvloop = importlib.import_module("uvloop")
        result: dict[str, Any] = uvloop.run(main())
        return result
    return asyncio.run(main())


async def lanes(
    count: int, attempts: int, one: Callable[[], Awaitable[str | None]]
) -> Counter[str]:
    """attempts calls of one, count at a time; one returns None or why it failed."""
    remaining = attempts
    failures: Counter[str] = Counter()

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            failure = await one()
            if failure is not None:
                failures[failure] += 1

    await asyncio.gather(*(lane() for _ in range(count)))
    return failures


async def measured(
    attempts: int, concurrency: int, one: Callable[[], Awaitable[str | None]]
) -> dict[str, Any]:
    failures = await lanes(concurrency, min(WARMUP, attempts), one)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    failures += await lanes(concurrency, attempts, one)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    return {"cpu": cpu, "wall": wall, "attempts": attempts, "failures": dict(failures)}


def worker_loginprobe(spec: dict[str, Any]) -> dict[str, Any]:
    from loginprobe.address import parse_resolver
    from loginprobe.probes.attempt import ProbeOptions
    from loginprobe.probes.run import run_check
    from loginprobe.target import parse_target

    target = parse_target(spec["url"])
    resolver = spec.get("resolver")
    options = ProbeOptions(
        password=spec["password"], ca_file=spec["ca_file"], timeout=10.0,
        resolver=parse_resolver(resolver) if resolver else None,
    )

    phases: dict[str, list[int]] = {}

    async def one() -> str | None:
        result = await run_check(target, options)
        if result.success:
            for phase in result.phases:
                phases.setdefault(phase.name, []).append(phase.duration_ns)
            return None
        # The last event before the failure says where a phase-less timeout was waiting.
        events = [line.text for line in result.transcript if line.direction == "*"]
        before = events[-2] if len(events) > 1 else "nothing"
        return f"{result.reason}: {result.message} (after: {before[:60]})"

    async def main() -> dict[str, Any]:
        out = await measured(spec["attempts"], spec["concurrency"], one)
        # The median duration of each phase over the run, warm-up included (ms).
        out["phases"] = {name: median(ns) / 1e6 for name, ns in phases.items()}
        return out

    return run_loop(main, spec["loop"])


def worker_raw(spec: dict[str, Any]) -> dict[str, Any]:
    port = spec["port"]
    ctx = ssl.create_default_context(cafile=spec["ca_file"])

    async def tcp() -> str | None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError as exc:
            return str(exc)
        finally:
            sock.close()
        return None

    async def tls() -> str | None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        except OSError as exc:
            return str(exc)
        writer.close()
        await writer.wait_closed()
        return None

    async def main() -> dict[str, Any]:
        one = tls if spec["tls"] else tcp
        return await measured(spec["attempts"], spec["concurrency"], one)

    return run_loop(main, spec["loop"])


class HTTPClient:
    """One keep-alive HTTP/1.1 connection to blackbox_exporter, GET only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, path: str) -> str:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        return body.decode()


def metric(body: str, name: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def worker_blackbox(spec: dict[str, Any]) -> dict[str, Any]:
    """The load generator for blackbox_exporter; runs on the servers' core and reads the
    exporter's CPU from /proc, since the exporter is the process being measured."""
    path = f"/probe?module={spec['module']}&target=127.0.0.1:{spec['port']}"

    async def main() -> dict[str, Any]:
        clients = [
            HTTPClient(*await asyncio.open_connection("127.0.0.1", spec["bb_port"]))
            for _ in range(spec["concurrency"])
        ]
        free = list(clients)

        async def one() -> str | None:
            client = free.pop()
            try:
                body = await client.get(path)
            finally:
                free.append(client)
            return None if metric(body, "probe_success") == 1 else "probe_success 0"

        await lanes(len(clients), min(WARMUP, spec["attempts"]), one)
        cpu0, wall0 = process_cpu_seconds(spec["bb_pid"]), time.perf_counter()
        failures = await lanes(len(clients), spec["attempts"], one)
        cpu = process_cpu_seconds(spec["bb_pid"]) - cpu0
        wall = time.perf_counter() - wall0
        for client in clients:
            client.writer.close()
        return {"cpu": cpu, "wall": wall, "attempts": spec["attempts"], "failures": dict(failures)}

    return run_loop(main, "asyncio")


WORKERS = {"loginprobe": worker_loginprobe, "asyncio": worker_raw, "blackbox": worker_blackbox}


# -- the orchestrator ------------------------------------------------------------------


def uvloop_installed() -> bool:
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def spec_for(
    scenario: Scenario, loop: str, env: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    servers, tcp_port, bb = env["servers"], env["tcp_port"], env.get("blackbox")
    attempts = max(1, int(scenario.attempts * args.scale))
    spec: dict[str, Any] = {
        "kind": scenario.prober,
        "loop": loop,
        "attempts": attempts,
        "concurrency": args.concurrency,
        "password": servers["password"],
        "ca_file": servers["ca_file"],
    }
    urls = {
        "tcp": f"tcp://127.0.0.1:{tcp_port}",
        "tls": f"tls://127.0.0.1:{servers['https_port']}",
        "mqtts": f"mqtts://{servers['user']}@127.0.0.1:{servers['mqtts_port']}",
        "xmpp": f"xmpp://{servers['user']}@xmpp.test:{servers['xmpp_port']}?host=127.0.0.1",
    }
    if "mqtt_wss_port" in servers:
        # Direct to mosquitto and prosody, as mqtts:// and xmpp:// are. xmpp+wss:// has no
        # ?host=, so its xmpp.test is looked up (the servers' unbound) on every attempt.
        urls["mqtt+wss"] = f"mqtt+wss://{servers['user']}@127.0.0.1:{servers['mqtt_wss_port']}"
        urls["xmpp+wss"] = (
            f"xmpp+wss://{servers['user']}@xmpp.test:{servers['xmpp_wss_port']}/xmpp-websocket"
        )
        spec["resolver"] = servers["resolver"]
    if scenario.name in urls:
        spec["url"] = urls[scenario.name]
    if scenario.name.endswith("tcp"):
        spec.update(port=tcp_port, tls=False, module="tcp_connect")
    if scenario.name.endswith("tls"):
        spec.update(port=servers["https_port"], tls=True, module="tls_connect")
    if bb is not None:
        spec.update(bb_port=bb.port, bb_pid=bb.proc.pid)
    return spec


def one_run(spec: dict[str, Any], tries: int = 3) -> tuple[float, float, dict[str, float]]:
    """(probes per CPU-second, probes per wall-second) of one fresh worker process whose
    every attempt succeeded. A run with a failure is discarded and said so; it is tried
    again, since others' tests on a shared machine (nftables faults, a busy server core)
    can fail a few attempts; a target that keeps failing ends the benchmark."""
    # The measured process gets the probing core; blackbox's load generator is not the
    # measured process (blackbox is, and it is already on the probing core), so it goes to
    # the servers' core.
    cpu = SERVER_CPU if spec["kind"] == "blackbox" else PROBE_CPU
    what = spec.get("url") or spec["kind"]
    for _ in range(tries):
        out = run_json(
            [python(), "-m", "bench.probe_throughput", "--worker", json.dumps(spec)], cpu
        )
        if not out["failures"]:
            phases = out.get("phases", {})
            return out["attempts"] / out["cpu"], out["attempts"] / out["wall"], phases
        print(f"# {what} {spec['loop']}: run discarded, attempts failed: {out['failures']}")
    sys.exit(f"{what}: attempts failed in {tries} runs in a row; no figures")


def report(
    scenario: Scenario, loop: str, rates: list[float], walls: list[float],
    phases: list[dict[str, float]],
) -> None:
    target = scenario.target
    verdict = f"{median(rates) / target:5.2f}x target {target:g}" if target else ""
    # Each phase's median over the runs' medians, where the run measured phases.
    names = [n for n in ("dns", "tcp", "tls", "upgrade", "login") if any(n in p for p in phases)]
    timing = " ".join(
        f"{n} {median([p[n] for p in phases if n in p]):.2f}" for n in names
    )
    print(
        f"{scenario.name:8} {loop:8} {median(rates):7.0f} /CPU-s  "
        f"(runs: {', '.join(f'{r:.0f}' for r in rates)})  "
        f"{median(walls):6.0f} /s wall  {verdict}"
        + (f"  phases ms: {timing}" if timing else ""),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50, help="attempts in flight")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply attempts per run")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        raise_nofile(4 * spec["concurrency"] + 256)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return

    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    print(f"# probe_throughput: {machine()}")
    print(
        f"# prober on core {PROBE_CPU}, servers on core {SERVER_CPU}; "
        f"{args.concurrency} in flight; median of {args.runs} runs; {load_note()}"
    )
    for s in chosen:
        print(f"#   {s.name:8} {s.what}; {int(s.attempts * args.scale)} attempts per run")
    module = (
        "devstack.websocket" if any("+ws" in s.name for s in chosen) else "devstack.servers"
    )
    with Servers(module) as servers, Acceptor() as acceptor:
        env: dict[str, Any] = {
            "servers": servers.info,
            "tcp_port": acceptor.port,
            "uvloop": uvloop_installed(),
        }
        cases = []
        for scenario in chosen:
            for loop in scenario.loops:
                if loop == "uvloop" and not env["uvloop"]:
                    print(f"{scenario.name:8} uvloop: not installed (pip install uvloop)")
                elif scenario.prober == "blackbox" and not Blackbox.available():
                    print(f"{scenario.name:8} apt-get install prometheus-blackbox-exporter")
                else:
                    cases.append((scenario, loop))
        with contextlib.ExitStack() as stack:
            if any(s.prober == "blackbox" for s, _ in cases):
                # Started once: idle between its runs, it costs the other cases nothing.
                env["blackbox"] = stack.enter_context(Blackbox(servers.info["ca_file"]))
            rates: dict[tuple[str, str], list[float]] = {}
            walls: dict[tuple[str, str], list[float]] = {}
            timings: dict[tuple[str, str], list[dict[str, float]]] = {}
            # Round-robin over the cases, one run each per round: other work on the
            # machine then skews every case alike instead of whichever ran during it.
            for round_ in range(args.runs):
                for scenario, loop in cases:
                    rate, wall, timing = one_run(spec_for(scenario, loop, env, args))
                    timings.setdefault((scenario.name, loop), []).append(timing)
                    rates.setdefault((scenario.name, loop), []).append(rate)
                    walls.setdefault((scenario.name, loop), []).append(wall)
                print(f"# round {round_ + 1}/{args.runs} done; {load_note()}", flush=True)
        for scenario, loop in cases:
            key = (scenario.name, loop)
            report(scenario, loop, rates[key], walls[key], timings[key])
    print(f"# done; {load_note()}")


if __name__ == "__main__":
    main()

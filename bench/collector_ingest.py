"""Collector ingest on one core: 1,000 agent streams (TLS, one connection and bearer token
each) send batched results from a load generator on the other core; prints results/s
acknowledged, the collector's CPU, and latency from result produced (and from batch sent)
to acknowledged.

    python3 -m bench.collector_ingest                       # 1,000 streams, 50,000 results/s
    python3 -m bench.collector_ingest --rate 80000 --flush 0.25 --plaintext
    python3 -m bench.collector_ingest --results-log          # with the JSONL sink (decodes all)
    python3 -m bench.collector_ingest --metrics              # with /metrics and result metrics
    python3 -m bench.collector_ingest --exports              # metrics, OTLP traces, event log
    python3 -m bench.collector_ingest --redis                # marks in Redis (state: redis://)
    python3 -m bench.collector_ingest --redis --replicas 2 --plaintext --streams 10000 \
        --rate 1000 --flush 10 --connect-time 300           # how many streams two replicas hold

By default the collector runs without /metrics, so the figure is ingest alone (validate,
dedupe, count, acknowledge); --metrics adds the exporter that turns every result into the
contract's Prometheus series; --exports adds that and OTLP traces (to a receiver in this
process that counts and discards them, successes sampled at 0.1) and the JSON event log.
Without --redis each agent's mark goes to the local state file (the default); --redis
keeps them in a real redis-server (append-only, fsync every second, on the load
generator's core) and prints Redis operations per batch; --replicas N runs N collectors on
the collector core, stream i going to replica i mod N, and prints memory per stream.

Each stream produces results evenly at rate/streams per second and sends what it has every
--flush seconds (streams staggered over the interval, as a fleet would be). A result's
latency is ack time minus the time it was produced; it includes up to one flush interval
of batching, which the agent's linger decides, so the send-to-ack figure is the collector's
part alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import grpc

from bench.common import (
    PROBE_CPU,
    SERVER_CPU,
    load_note,
    machine,
    percentile,
    process_cpu_seconds,
    raise_nofile,
)
from devstack.certs import PKI
from devstack.fleet import Collector, collector_config, free_port, new_token
from loginprobe.codec import Report, to_wire
from loginprobe.contract import Reason
from loginprobe.result import DNSInfo, Phase, Result, TLSInfo
from loginprobe.wire import collector_pb2 as pb

COLLECTOR_CPU, LOAD_CPU = PROBE_CPU, SERVER_CPU
CONNECT = "/loginprobe.v1.CollectorService/Connect"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _template() -> bytes:
    """A typical XMPP login result (4 phases, TLS and DNS info) serialized without its seq:
    appending a seq field to it gives a full ProbeResult without building a message."""
    from datetime import UTC, datetime

    result = Result(
        url="xmpp://probe@xmpp.example.net:5222",
        protocol="xmpp",
        success=True,
        reason=Reason.OK,
        message="",
        started_at=datetime.now(UTC),
        duration_ns=21_400_000,
        phases=[
            Phase("dns", True, 0, 600_000),
            Phase("tcp", True, 600_000, 200_000),
            Phase("tls", True, 800_000, 7_100_000),
            Phase("login", True, 7_900_000, 13_500_000),
        ],
        resolved_address="192.0.2.10",
        tls=TLSInfo(
            "TLSv1.3",
            "TLS_AES_256_GCM_SHA384",
            None,
            True,
            None,
            "CN=xmpp.example.net",
            "CN=Example CA",
            ["xmpp.example.net"],
            datetime.now(UTC),
            90.0,
        ),
        dns=DNSInfo("xmpp.example.net", ["192.0.2.10"], 300, None, "system"),
    )
    labels = {"region": "eu-west", "carrier": "acme", "network_type": "cellular"}
    return to_wire(Report(result, 0, "xmpp-login", b"\x01" * 16, labels=labels)).SerializeToString()


def _batch(template: bytes, first: int, count: int) -> bytes:
    parts = []
    for seq in range(first, first + count):
        # A trace id of its own (field 16, after the template's: the last one wins), so
        # that sampling by trace id keeps its ratio.
        trace_id = b"\x82\x01\x10" + random.randbytes(16)
        result = b"\x08" + _varint(seq) + template + trace_id
        parts.append(b"\x0a" + _varint(len(result)) + result)
    body = b"".join(parts)
    return b"\x12" + _varint(len(body)) + body  # ConnectRequest.results


# ---- the load generator (a child process on the other core) ----------------------------


class Tally:
    """What every stream adds to: acked batches as (ack time, sent time, first and last
    produced time, result count), expanded into per-result latencies at the end."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, float, float, float, int]] = []
        self.errors: list[str] = []


async def _stream(
    index: int,
    args: argparse.Namespace,
    creds: grpc.ChannelCredentials | None,
    token: str,
    template: bytes,
    start: float,
    stop: float,
    connected: asyncio.Queue[int],
    tally: Tally,
) -> None:
    # A local subchannel pool gives each stream its own TCP (and TLS) connection, as 1,000
    # separate agents would have, instead of sharing one.
    if args.connect_rate:  # in waves, as a fleet's start times and jitter spread it
        await asyncio.sleep(index / args.connect_rate - (time.time() - start + args.connect_time))
    options = [("grpc.use_local_subchannel_pool", 1)]
    addresses = args.address.split(",")
    address = addresses[index % len(addresses)]
    if creds is None:
        channel = grpc.aio.insecure_channel(address, options=options)
    else:
        channel = grpc.aio.secure_channel(address, creds, options=options)
    call = channel.stream_stream(
        CONNECT, request_serializer=lambda b: b, response_deserializer=pb.ConnectResponse.FromString
    )(metadata=(("authorization", f"Bearer {token}"),))
    try:
        await call.write(pb.ConnectRequest(hello=pb.Hello(version="bench")).SerializeToString())
        welcome = await call.read()
        await call.read()  # the check assignment
        seq = welcome.welcome.last_processed_seq
        await connected.put(index)
        pending: deque[tuple[int, float, float, float, int]] = deque()

        async def acks() -> None:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return
                now = time.time()
                while pending and pending[0][0] <= msg.ack.seq:
                    _, sent, first, last, n = pending.popleft()
                    tally.batches.append((now, sent, first, last, n))

        reader = asyncio.create_task(acks())
        per_second = args.rate / args.streams
        # Staggered: stream i flushes at start + i/streams of the interval, then every flush.
        produced_until = t = start + args.flush * index / args.streams
        made = 0
        while t < stop:
            await asyncio.sleep(max(0.0, t - time.time()))
            total = math.floor((t - start) * per_second)
            count, made = total - made, total
            if count > 0:
                first = produced_until + (t - produced_until) / count
                pending.append((seq + count, time.time(), first, t, count))
                await call.write(_batch(template, seq + 1, count))
                seq += count
            produced_until = t
            t += args.flush
        await asyncio.sleep(3)  # the last acks
        reader.cancel()
    except grpc.aio.AioRpcError as exc:
        tally.errors.append(f"stream {index}: {exc.code()} {exc.details()}")
    finally:
        await channel.close()


async def _load(args: argparse.Namespace, tokens: list[str], ca: bytes | None) -> dict[str, Any]:
    creds = None if ca is None else grpc.ssl_channel_credentials(ca)
    template = _template()
    tally = Tally()
    connected: asyncio.Queue[int] = asyncio.Queue()
    # The window is fixed before the streams start: connecting 1,000 TLS streams to a
    # collector on one core takes seconds, and every stream must be in when it opens.
    connect_start = time.time()
    start = connect_start + args.connect_time
    stop = start + args.duration
    tasks = [
        asyncio.create_task(
            _stream(i, args, creds, tokens[i], template, start, stop, connected, tally)
        )
        for i in range(args.first, args.first + args.count)
    ]
    for _ in range(args.count):
        await asyncio.wait_for(connected.get(), args.connect_time + 30)
    ready_at = time.time()
    if ready_at > start:
        raise SystemExit(
            f"connecting took {ready_at - connect_start:.1f}s, more than "
            f"--connect-time {args.connect_time:g}s"
        )
    print(json.dumps({"event": "connected", "seconds": ready_at - connect_start}), flush=True)
    await asyncio.sleep(start + 1 - time.time())
    print(json.dumps({"event": "window"}), flush=True)  # the parent samples collector CPU
    await asyncio.sleep(stop - time.time())
    print(json.dumps({"event": "window"}), flush=True)
    await asyncio.gather(*tasks)

    # Per-result latencies: results of a batch were produced evenly from first to last.
    produced_lat: list[float] = []
    sent_lat: list[float] = []
    acked_in_window = 0
    for acked, sent, first, last, n in tally.batches:
        step = (last - first) / (n - 1) if n > 1 else 0.0
        produced_lat.extend(acked - (first + i * step) for i in range(n))
        sent_lat.append(acked - sent)
        if start + 1 <= acked <= stop:
            acked_in_window += n
    return {
        "event": "done",
        "errors": tally.errors[:5],
        "acked_per_second": acked_in_window / (args.duration - 1),
        "acked_total": sum(b[4] for b in tally.batches),
        "batches": len(tally.batches),
        "produced_p50": percentile(produced_lat, 50),
        "produced_p99": percentile(produced_lat, 99),
        "produced_max": max(produced_lat),
        "sent_p50": percentile(sent_lat, 50),
        "sent_p99": percentile(sent_lat, 99),
    }


# ---- the orchestrator ------------------------------------------------------------------


class _Receiver:
    """An OTLP/gRPC trace receiver that counts spans and keeps nothing."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

        from devstack.fleet import free_port

        self.spans = self.roots = 0
        receiver = self

        class Service(otlp_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        receiver.spans += len(ss.spans)
                        receiver.roots += sum(1 for x in ss.spans if not x.parent_span_id)
                return otlp.ExportTraceServiceResponse()

        self.server = grpc.server(ThreadPoolExecutor(2))
        otlp_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            Service(), self.server)
        self.address = f"127.0.0.1:{free_port()}"
        self.server.add_insecure_port(self.address)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)


def _redis_calls(port: int) -> int:
    """Script calls Redis has served (the collectors' only commands but PING)."""
    import redis as redis_client

    with redis_client.Redis(port=port) as r:
        stats = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha",
                                                                      "cmdstat_eval"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--rate", type=float, default=50_000, help="results/s offered, all streams")
    p.add_argument("--flush", type=float, default=0.5, help="seconds between a stream's batches")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of the measured window")
    p.add_argument("--connect-time", type=float, default=30.0)
    p.add_argument("--plaintext", action="store_true", help="plaintext loopback instead of TLS")
    p.add_argument("--results-log", action="store_true", help="with the JSONL results sink")
    p.add_argument("--metrics", action="store_true", help="with /metrics (result metrics)")
    p.add_argument("--exports", action="store_true",
                   help="with /metrics, OTLP traces and the event log")
    p.add_argument("--redis", action="store_true", help="marks in Redis (state: redis://)")
    p.add_argument("--replicas", type=int, default=1, help="collectors sharing the streams")
    p.add_argument("--connect-rate", type=float, default=0,
                   help="streams opened per second (0: all at once)")
    p.add_argument("--load-procs", type=int, default=1,
                   help="load generator processes (one gRPC process stalls past ~1,500)")
    p.add_argument("--success-ratio", type=float, default=0.1,
                   help="with --exports: traces.success_sample_ratio (0: no span is sent)")
    # Internal: the load generator's side.
    p.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    raise_nofile(4 * args.streams + 256)
    if args.load:
        tokens = json.loads(Path(args.tokens).read_text())
        ca = Path(args.ca).read_bytes() if args.ca else None
        print(json.dumps(asyncio.run(_load(args, tokens, ca))), flush=True)
        return 0

    with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp:
        folder = Path(tmp)
        pki = None if args.plaintext else PKI(folder / "pki")
        tokens = [new_token() for _ in range(args.streams)]
        (folder / "tokens.json").write_text(json.dumps([t for t, _ in tokens]))
        agents = [{"id": f"agent-{i:04d}", "token_sha256": h} for i, (_, h) in enumerate(tokens)]
        checks = [
            {
                "name": "xmpp-login",
                "url": "xmpp://probe@xmpp.example.net",
                "password_ref": "PROBE",
                "interval": "1m",
            }
        ]
        config = collector_config(
            folder,
            pki=pki,
            agents=agents,
            checks=checks,
            log_level="warning",
            limits={"max_batch_results": 5000},
        )
        if not args.results_log:
            del config["results_log"]
        receiver = None
        if args.exports:
            receiver = _Receiver()
            config["traces"] = {"endpoint": receiver.address, "insecure": True,
                                "success_sample_ratio": args.success_ratio}
            config["event_log"] = {"file": str(folder / "events.jsonl")}
        elif not args.metrics:
            config["metrics_listen"] = None
        redis = None
        if args.redis:
            from devstack.redis import Redis

            redis = Redis(folder / "redis", fsync="everysec").start()
            subprocess.run(["taskset", "-cp", str(LOAD_CPU), str(redis.pid)], check=True,
                           capture_output=True)
            config["state"] = redis.url
        collectors = []
        for i in range(args.replicas):
            settings = dict(config)
            if i:
                settings["listen"] = f"127.0.0.1:{free_port()}"
                if settings.get("metrics_listen"):
                    settings["metrics_listen"] = f"127.0.0.1:{free_port()}"
            collectors.append(Collector(folder / f"collector{i}", settings, pki))
            collectors[-1].start_healthy(timeout=60, cpu=COLLECTOR_CPU)
        collector = collectors[0]
        idle_kib = [_rss_kib(c.pid) for c in collectors]
        argv = [
            "taskset",
            "-c",
            str(LOAD_CPU),
            sys.executable,
            "-m",
            "bench.collector_ingest",
            "--load",
            "--address",
            ",".join(c.address for c in collectors),
            "--tokens",
            str(folder / "tokens.json"),
            "--streams",
            str(args.streams),
            "--rate",
            str(args.rate),
            "--flush",
            str(args.flush),
            "--duration",
            str(args.duration),
            "--connect-time",
            str(args.connect_time),
            "--connect-rate",
            str(args.connect_rate),
        ]
        if pki is not None:
            argv += ["--ca", str(pki.ca_file)]
        print(f"# collector ingest: {machine()}; {load_note()}")
        print(
            f"# {args.streams} streams over {'plaintext' if args.plaintext else 'TLS'}, "
            f"{args.rate:,.0f} results/s offered, a batch every {args.flush:g}s per stream "
            f"(~{args.rate * args.flush / args.streams:.0f} results), "
            f"{args.duration:g}s window, results log {'on' if args.results_log else 'off'}, "
            f"metrics {'on' if args.metrics or args.exports else 'off'}, "
            f"traces and event log {'on' if args.exports else 'off'}; "
            f"collector on CPU {COLLECTOR_CPU}, load generator on CPU {LOAD_CPU}"
        )
        cpu: list[float] = []
        rss_kib = 0
        walls: list[float] = []
        done: dict[str, Any] = {}
        share = math.ceil(args.streams / args.load_procs)
        others: list[subprocess.Popen[str]] = []
        others_done: list[dict[str, Any]] = []

        def launch(first: int) -> subprocess.Popen[str]:
            count = min(share, args.streams - first)
            return subprocess.Popen(
                [*argv, "--first", str(first), "--count", str(count)], stdout=subprocess.PIPE,
                text=True, cwd=Path(__file__).resolve().parent.parent)

        def collect(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = json.loads(line)
                if event["event"] == "done":
                    others_done.append(event)

        try:
            import threading

            for first in range(share, args.streams, share):
                others.append(launch(first))
                threading.Thread(target=collect, args=(others[-1],), daemon=True).start()
            with launch(0) as load:
                assert load.stdout is not None
                for line in load.stdout:
                    event = json.loads(line)
                    if event["event"] == "connected":
                        print(f"# {args.streams} streams connected in {event['seconds']:.1f}s")
                    elif event["event"] == "window":
                        cpu.append(sum(process_cpu_seconds(c.pid) for c in collectors))
                        walls.append(time.monotonic())
                        rss_kib = _rss_kib(collector.pid)
                        all_kib = [_rss_kib(c.pid) for c in collectors]
                    else:
                        done = event
            for proc in others:
                proc.wait()
            codes = [load.returncode, *(proc.returncode for proc in others)]
            if any(codes) or not done or len(others_done) != len(others):
                raise SystemExit(f"the load generator failed ({codes})")
            for other in others_done:  # counts add up; latencies are the first process's
                done["acked_per_second"] += other["acked_per_second"]
                done["acked_total"] += other["acked_total"]
                done["batches"] += other["batches"]
                done["errors"] += other["errors"]
        finally:
            ops = _redis_calls(redis.port) if redis is not None else 0
            status = max(c.stop() for c in collectors)
            if redis is not None:
                redis.stop()
        busy = (cpu[1] - cpu[0]) / (walls[1] - walls[0])
        rate = done["acked_per_second"]
        print(f"results acknowledged      {rate:10,.0f} /s   (offered {args.rate:,.0f}/s)")
        print(f"collector CPU             {busy * 100:10.1f} %   of one core")
        print(f"results per CPU-second    {rate / busy if busy else 0:10,.0f}")
        print(f"produced -> acked  p50    {done['produced_p50'] * 1000:10.0f} ms")
        print(
            f"produced -> acked  p99    {done['produced_p99'] * 1000:10.0f} ms   "
            f"(max {done['produced_max'] * 1000:.0f} ms)"
        )
        print(f"batch sent -> acked p50   {done['sent_p50'] * 1000:10.1f} ms")
        print(f"batch sent -> acked p99   {done['sent_p99'] * 1000:10.1f} ms")
        print(f"batches acked             {done['batches']:10,}   results {done['acked_total']:,}")
        print(f"collector resident memory {rss_kib / 1024:10.0f} MiB")
        if args.replicas > 1:
            per = [(k - i) / (args.streams / args.replicas) for k, i in zip(all_kib, idle_kib,
                                                                            strict=True)]
            print(f"replicas                  {args.replicas:10}   resident "
                  + ", ".join(f"{k / 1024:.0f}" for k in all_kib) + " MiB; per stream "
                  + ", ".join(f"{x:.1f}" for x in per) + " KiB")
        if redis is not None:
            per_batch = (ops - args.streams) / max(1, done["batches"])
            print(f"Redis calls per batch     {per_batch:10.2f}   ({ops:,} EVALSHA/EVAL: "
                  f"{args.streams:,} hellos, {done['batches']:,} batches acked)")
        if receiver is not None:
            print(f"spans received            {receiver.spans:10,}   "
                  f"(roots {receiver.roots:,}; successes sampled at {args.success_ratio:g}, "
                  "at most 100/s)")
            receiver.stop()
        if done["errors"]:
            print("stream errors:", *done["errors"], sep="\n  ")
        if status != 0:
            print(f"the collector exited {status} on SIGTERM")
        return 0 if not done["errors"] and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

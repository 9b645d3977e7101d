"""The agent's one stream to the collector: hello, assigned checks in, every spooled result
out in order, acknowledged results deleted; reconnects with backoff until told to stop."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from loginprobe import __version__
from loginprobe.address import split_host_port
from loginprobe.agent.backoff import Backoff
from loginprobe.agent.config import AgentConfig, Keepalive
from loginprobe.agent.scheduler import ASSIGNED, CheckSpec, Scheduler
from loginprobe.agent.spool import Spool
from loginprobe.codec import Report, to_wire
from loginprobe.wire import collector_pb2 as pb
from loginprobe.wire.collector_pb2_grpc import CollectorServiceStub

log = logging.getLogger(__name__)



def channel_options(keepalive: Keepalive) -> list[tuple[str, int | str]]:
    """The channel's options. gRPC ignores a name it does not know, silently:
    tests/test_keepalive.py checks each against the names in the installed gRPC."""
    return [
        # Keepalive pings find a dead collector (or a dead NAT mapping) within
        # time + timeout even when no result is due; the collector must permit them.
        ("grpc.keepalive_time_ms", round(keepalive.time * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive.timeout * 1000)),
        # Newer gRPC cores time an unanswered ping out by this one (default 1 minute),
        # whatever the keepalive timeout says.
        ("grpc.http2.ping_timeout_ms", round(keepalive.timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Subchannels are shared process-wide by default, and with them gRPC's own
        # reconnect backoff (1 s growing to 2 min): a fresh channel would inherit it and our
        # backoff would not be the one that decides when we try again.
        ("grpc.use_local_subchannel_pool", 1),
    ]


FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# The collector refuses a second live stream of one credential from another spool: another
# machine uses our credential. Said at ERROR, the spool kept, retried with the backoff.
REFUSED = grpc.StatusCode.FAILED_PRECONDITION
CAPABILITIES = ["checks", "clock_offset"]
DEFAULT_MAX_BATCH = 500
MAX_BATCH_BYTES = 1 << 20  # well under gRPC's default 4 MiB message limit
OUTAGE_WARN_INTERVAL = 60.0  # seconds between warnings that the collector is still away


Resolve = Callable[..., Awaitable[list[tuple[Any, ...]]]]  # loop.getaddrinfo's signature


class FatalError(Exception):
    """The collector refused this agent for good; the message is one sentence."""


class SessionError(Exception):
    """The stream broke in a way worth retrying; the message says how."""


def encode(report: Report, seq: int) -> bytes:
    """A Report as the spool stores it: a serialized ProbeResult carrying its seq."""
    return to_wire(replace(report, seq=seq)).SerializeToString()


def _timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


class Uplink:
    def __init__(
        self, cfg: AgentConfig, spool: Spool, scheduler: Scheduler,
        backoff: Backoff | None = None, linger: float = 0.1, hello_timeout: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.scheduler = scheduler
        self.backoff = backoff or Backoff()
        self.linger = linger  # how long a new result waits for others to share its batch
        self.hello_timeout = hello_timeout
        self.connected = False
        self.agent_id = ""  # who the collector says we are, from our credential
        self.down_since = time.monotonic()  # while not connected: since when
        self.last_error = "not connected yet"  # why the last stream ended or failed
        self.refused: dict[str, str] = {}  # assigned checks that cannot run here: why
        self._warned_at = -math.inf
        self._acked = asyncio.Event()  # set on every ack, for drain()
        # Which endpoint is next; a random start spreads a fleet over the replicas.
        self._turn = random.randrange(1 << 30)
        self.endpoint = ""  # the collector endpoint of the current (or last) stream

    async def endpoints(self, resolve: Resolve | None = None) -> list[tuple[str, str | None]]:
        """(gRPC target, TLS name to verify or None) of every endpoint, in order: each
        configured address, and a name with several addresses as each of them (resolved
        again at every connect, so a changed set of replicas is followed)."""
        out: list[tuple[str, str | None]] = []
        resolve = resolve or asyncio.get_running_loop().getaddrinfo
        for address in self.cfg.collector.addresses:
            host, port = split_host_port(address)
            try:
                ipaddress.ip_address(host)
                out.append((address, None))
                continue
            except ValueError:
                pass
            try:
                infos = await resolve(host, port, type=socket.SOCK_STREAM)
            except OSError:
                infos = []  # gRPC resolves the name itself, and says why it cannot
            ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if len(ips) <= 1:
                out.append((address, None))
                continue
            out.extend((f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", host) for ip in ips)
        return out

    async def run(self) -> None:
        """Keep a stream up until cancelled. Raises FatalError when the collector refuses
        our credential: retrying would not change its mind."""
        while True:
            refused = ""  # the collector's sentence when it refused this stream
            endpoints = await self.endpoints()
            target, name = endpoints[self._turn % len(endpoints)]
            address = self.endpoint = target
            self._turn += 1  # a broken stream, or a failed connect: the next one next time
            try:
                await self._session(target, name)
                why = "the collector closed the stream"
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL:
                    raise FatalError(
                        f"the collector at {address} refused this agent's credential "
                        f"({exc.code().name}): {exc.details()}"
                    ) from None
                why = f"{exc.code().name}: {exc.details()}"
                if exc.code() == REFUSED:
                    refused = exc.details() or why
            except (SessionError, OSError, TimeoutError, asyncio.InvalidStateError) as exc:
                why = str(exc) or type(exc).__name__
            finally:
                if self.connected:
                    self.down_since = time.monotonic()
                self.connected = False
            self.last_error = why
            # The first failure of an outage is news; so is an outage that goes on, said
            # again each time the backoff is at its cap, at most once a minute.
            now = time.monotonic()
            first = self.backoff.attempt == 0
            again = self.backoff.at_cap and now - self._warned_at >= OUTAGE_WARN_INTERVAL
            delay = self.backoff.delay()
            if refused and (first or again):
                self._warned_at = now
                log.error("collector %s refused this stream: %s; %d results wait in the spool; "
                          "retrying in %.1fs", address, refused, self.spool.depth, delay)
            elif first or again:
                self._warned_at = now
                log.warning("collector %s: %s; not connected for %.0fs, %d results wait in the "
                            "spool; reconnecting in %.1fs", address, why, now - self.down_since,
                            self.spool.depth, delay)
            else:
                log.debug("collector %s: %s; reconnecting in %.1fs", address, why, delay)
            await asyncio.sleep(delay)

    @property
    def down_seconds(self) -> float:
        """How long the stream has been down (since the start, if it never was up); 0 while
        connected."""
        return 0.0 if self.connected else time.monotonic() - self.down_since

    async def drain(self) -> None:
        """Until the collector has acknowledged everything spooled (or the stream is down):
        on a graceful stop, so a planned restart leaves nothing waiting. The caller bounds
        it with a timeout."""
        while self.connected and self.spool.depth:
            self._acked.clear()
            await self._acked.wait()

    def _channel(self, target: str, name: str | None) -> grpc.aio.Channel:
        c = self.cfg.collector
        options = channel_options(c.keepalive)
        if c.plaintext:
            return grpc.aio.insecure_channel(target, options=options)
        # Read at every connect, so renewed certificates are used without a restart.
        creds = grpc.ssl_channel_credentials(
            root_certificates=c.tls.ca_file.read_bytes() if c.tls.ca_file else None,
            private_key=c.tls.key_file.read_bytes() if c.tls.key_file else None,
            certificate_chain=c.tls.cert_file.read_bytes() if c.tls.cert_file else None,
        )
        if c.tls.server_name or name:
            # An address resolved from a name is verified against that name.
            options.append(("grpc.ssl_target_name_override", c.tls.server_name or name or ""))
        return grpc.aio.secure_channel(target, creds, options=options)

    async def _session(self, target: str, name: str | None) -> None:
        token = self.cfg.collector.token()
        if (self.cfg.collector.token_env or self.cfg.collector.token_file) and not token:
            raise SessionError("the bearer token is empty or its environment variable is unset")
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        # A fresh channel per session, with its own subchannel: see channel_options().
        async with self._channel(target, name) as channel:
            stub = CollectorServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Connect(metadata=metadata)
            try:
                max_batch = await self._hello(call)
                tasks = [
                    asyncio.create_task(self._receive(call)),
                    asyncio.create_task(self._send(call, max_batch)),
                ]
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                for task in done:
                    task.result()  # re-raise what ended the session
            finally:
                call.cancel()

    async def _hello(self, call: grpc.aio.StreamStreamCall) -> int:
        labels = self.cfg.labels.as_dict()
        began = time.monotonic()
        # Connected first (TCP, TLS, the call's headers), so the handshake's round trips do
        # not count as one-way delay in the clock offset estimate.
        await call.wait_for_connection()
        sent_ns = time.time_ns()
        await call.write(pb.ConnectRequest(hello=pb.Hello(
            version=__version__, labels=labels, capabilities=CAPABILITIES,
            last_acked_seq=self.spool.acked_seq, sent_at=_timestamp(sent_ns),
            spool_id=self.spool.spool_id,
        )))
        async with asyncio.timeout(self.hello_timeout):
            first = await call.read()
        received_ns = time.time_ns()
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "welcome":
            raise SessionError("the collector did not answer hello with welcome")
        w = first.welcome
        # NTP's estimate: the mean of the two one-way differences cancels a symmetric delay.
        offset = (
            (w.hello_received_at.ToNanoseconds() - sent_ns)
            + (w.sent_at.ToNanoseconds() - received_ns)
        ) // 2
        self.scheduler.clock_offset_ns = offset
        self.agent_id = w.agent_id
        self.connected = True
        self.backoff.reset()
        self.last_error = ""
        log.info(
            "connected to the collector at %s as %s in %.0f ms; clock offset %+.3fs; "
            "%d results to replay", self.endpoint, w.agent_id,
            (time.monotonic() - began) * 1000, offset / 1e9, self.spool.depth,
        )
        if w.last_processed_seq >= self.spool.next_seq:
            await self.spool.skip_to(w.last_processed_seq)
        else:
            await self.spool.ack(w.last_processed_seq)  # processed, only its ack was lost
        return w.max_batch_results or DEFAULT_MAX_BATCH

    async def _receive(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("msg")
            if kind == "ack":
                await self.spool.ack(msg.ack.seq)
                self._acked.set()
            elif kind == "checks":
                self._apply(msg.checks)

    async def _send(self, call: grpc.aio.StreamStreamCall, max_batch: int) -> None:
        """Everything unacknowledged in seq order, then each new result as it is spooled."""
        sent = self.spool.acked_seq
        while True:
            self.spool.changed.clear()  # before reading: an append after the read wakes us
            rows = await self.spool.read_after(sent, max_batch)
            if not rows:
                await self.spool.changed.wait()
                await asyncio.sleep(self.linger)
                continue
            batch, size = pb.ResultBatch(), 0
            for _, data in rows:
                if batch.results and size + len(data) > MAX_BATCH_BYTES:
                    break
                batch.results.append(pb.ProbeResult.FromString(data))
                size += len(data)
            await call.write(pb.ConnectRequest(results=batch))
            sent = batch.results[-1].seq

    def _apply(self, update: pb.CheckUpdate) -> None:
        specs = []
        if update.full:
            self.refused.clear()
        for name in update.remove:
            self.refused.pop(name, None)
        for check in update.upsert:
            try:
                specs.append(self._spec(check))
                self.refused.pop(check.name, None)
            except ValueError as exc:
                # Refused, and said in /healthz and loginprobe_agent_checks_refused: a
                # check that cannot log in would only report this agent's gap as a failure.
                self.refused[check.name] = str(exc)
                log.error("assigned check %r cannot run here, refused: %s", check.name, exc)
        if update.full:
            self.scheduler.replace(ASSIGNED, specs)
        else:
            self.scheduler.upsert(ASSIGNED, specs)
            self.scheduler.remove(ASSIGNED, [*update.remove, *self.refused])

    def _spec(self, check: pb.Check) -> CheckSpec:
        password = None
        if check.password_ref:
            password = self.cfg.passwords.get(check.password_ref)
            if password is None:
                raise ValueError(
                    f"it needs the password {check.password_ref!r}, which this agent's config "
                    "does not define under passwords:"
                )
        return CheckSpec.build(
            check.name, check.url, check.interval.ToNanoseconds() / 1e9,
            check.timeout.ToNanoseconds() / 1e9 or None, password=password,
            ca_file=check.ca_file, insecure=check.insecure, resolver=check.resolver,
            mode=check.mode or "login",
            keepalive=check.keepalive.ToNanoseconds() / 1e9 or 30.0,
        )

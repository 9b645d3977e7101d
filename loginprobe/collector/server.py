"""The collector's gRPC server: CollectorService.Connect (one stream per agent: identity,
Welcome, check assignments, result batches and acks), the health service, config reload
and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from loginprobe.address import split_host_port
from loginprobe.collector.assign import assigned, changes
from loginprobe.collector.auth import AuthError, Credential, credential, identify
from loginprobe.collector.config import Check, CollectorConfig, Keepalive, Loaded, load_config
from loginprobe.collector.exporters.prometheus import serve_metrics
from loginprobe.collector.ingest import FleetState, Ingest, Refused
from loginprobe.collector.sinks import build as build_sinks
from loginprobe.collector.state import (
    RedisState,
    StateError,
    StateFile,
    StateMetrics,
    is_redis,
    mark_key,
)
from loginprobe.config import ConfigError
from loginprobe.wire import collector_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "loginprobe.v1.CollectorService"
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_MAX_LABELS, _MAX_LABEL_CHARS = 32, 128
_HELLO_WAIT = 5.0  # seconds a refused stream gets to send its Hello


def _parser(max_bytes: int) -> Callable[[bytes], pb.ConnectRequest | str]:
    """gRPC's deserializer: a message, or the reason it is refused. Refusing here rather
    than letting gRPC drop the stream is what lets the handler answer and count it."""

    def parse(data: bytes) -> pb.ConnectRequest | str:
        if len(data) > max_bytes:
            return "oversized"
        try:
            msg = pb.ConnectRequest.FromString(data)
        except DecodeError:
            return "malformed"
        return msg if msg.WhichOneof("msg") else "malformed"

    return parse


def _refusal(reason: str, limit: int) -> Refused:
    if reason == "oversized":
        return Refused(_EXHAUSTED, reason, f"message over the limit of {limit} bytes")
    return Refused(_INVALID, reason, "not a valid ConnectRequest message")


def _auth_status(exc: AuthError) -> grpc.StatusCode:
    return grpc.StatusCode.UNAUTHENTICATED if exc.unknown else grpc.StatusCode.PERMISSION_DENIED


def check_to_wire(c: Check) -> pb.Check:
    msg = pb.Check(name=c.name, url=c.url, password_ref=c.password_ref or "",
                   ca_file=c.ca_file or "", insecure=c.insecure, resolver=c.resolver or "",
                   labels=c.labels, mode=c.mode)
    msg.interval.FromNanoseconds(round(c.interval * 1e9))
    msg.keepalive.FromNanoseconds(round(c.keepalive * 1e9))
    msg.timeout.FromNanoseconds(round(c.timeout * 1e9))
    return msg


class Bucket:
    """A token bucket of batches per second; it answers how long to wait, never refuses."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(1.0, rate)
        self.stamp = time.monotonic()

    def delay(self) -> float:
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1  # taken now, paid for by waiting: batches keep their order
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(eq=False)
class Session:
    """One open stream of one agent."""

    agent: str
    credential: Credential
    claimed: dict[str, str]  # labels from the agent's hello
    fixed: dict[str, str]  # labels from the registry, which win
    context: Any  # grpc.aio.ServicerContext
    task: asyncio.Task[Any]
    checks: dict[str, Check] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one writer at a time
    spool_id: str = ""  # from the hello: which spool this stream's seqs come from
    key: str = ""  # the high-water mark's key: agent and spool
    kicked: tuple[grpc.StatusCode, str] | None = None
    idle: bool = False  # waiting for a batch: nothing is half done
    ending: bool = False  # the kick's status is being sent

    @property
    def labels(self) -> dict[str, str]:
        return {**self.claimed, **self.fixed}

    def kick(self, code: grpc.StatusCode, message: str) -> None:
        """End the stream from outside its handler with this status: at once if it is
        waiting for a batch, else once the batch in hand is processed and acknowledged
        (an ack lost to a kick would make the agent send the batch again)."""
        if self.kicked is None:
            self.kicked = (code, message)
            if self.idle:
                self.task.cancel()

    async def send(self, msg: pb.ConnectResponse) -> None:
        async with self.lock:
            await self.context.write(msg)


class CollectorService:
    """The Connect handler and the state it shares across streams."""

    def __init__(self, loaded: Loaded, ingest: Ingest, fleet: FleetState) -> None:
        self.limits = loaded.config.limits
        self.ingest = ingest
        self.fleet = fleet
        self.sessions: dict[str, Session] = {}
        self.buckets: dict[str, Bucket] = {}
        self._pushes: set[asyncio.Task[None]] = set()
        self._told: set[tuple[str, str]] = set()  # (agent, spool) refused as a second stream
        self.apply(loaded)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Connect": grpc.stream_stream_rpc_method_handler(
                self.connect,
                request_deserializer=_parser(self.limits.max_message_bytes),
                response_serializer=pb.ConnectResponse.SerializeToString,
            )
        })

    async def connect(self, _requests: Any, context: Any) -> None:
        try:
            cred = credential(context.invocation_metadata() or (), context.auth_context())
            agent = identify(cred, self.agents)
        except AuthError as exc:
            self.fleet.reject("unauthenticated" if exc.unknown else "permission_denied")
            log.warning("refused a stream from %s: %s", context.peer(), exc)
            # Take the agent's Hello first: a grpc.aio client whose write races with the end
            # of the call reports INTERNAL instead of this status (grpc/grpc#36066), and the
            # agent must see UNAUTHENTICATED to know that retrying is pointless.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(context.read(), _HELLO_WAIT)
            await context.abort(_auth_status(exc), str(exc))
        session = None
        try:
            hello = self._hello(await context.read())
            received_at = time.time_ns()
            if hello is None:
                return
            task = asyncio.current_task()
            assert task is not None
            session = Session(agent.id, cred, dict(hello.labels), dict(agent.labels), context,
                              task, spool_id=hello.spool_id[:64],
                              key=mark_key(agent.id, hello.spool_id[:64]))
            self._second_stream(session)
            session.checks = assigned(self.checks, session.labels)
            self._open(session, hello.version)
            if self.ingest.shared is None:
                mark = self.ingest.hello(session.key, hello.last_acked_seq)
            else:
                mark = await self.ingest.hello_shared(session.key, hello.last_acked_seq)
            welcome = pb.Welcome(agent_id=agent.id, labels=session.labels,
                                 max_batch_results=self.limits.max_batch_results,
                                 last_processed_seq=mark)
            welcome.hello_received_at.FromNanoseconds(received_at)
            # One lock for both: a reload's change must not slip between Welcome and the
            # full set the agent expects right after it.
            async with session.lock:
                welcome.sent_at.FromNanoseconds(time.time_ns())
                await context.write(pb.ConnectResponse(welcome=welcome))
                full = pb.CheckUpdate(
                    full=True, upsert=[check_to_wire(c) for c in session.checks.values()])
                await context.write(pb.ConnectResponse(checks=full))
            await self._results(session)
        except Refused as exc:
            self.fleet.reject(exc.reason)
            if exc.reason != "credential_in_use":  # that one is logged once, by its maker
                log.warning("refused a message from agent %s (%s): %s", agent.id, exc.reason,
                            exc)
            await context.abort(exc.code, str(exc))
        except asyncio.CancelledError:
            # A kick cancels an idle handler; turn that into the kick's status. A handler
            # cancelled while it was already sending that status (gRPC's grace ran out)
            # must not send it twice.
            if session is not None and session.kicked is not None and not session.ending:
                session.ending = True
                await context.abort(*session.kicked)
            raise
        finally:
            if session is not None:
                self._close(session)

    def _hello(self, first: object) -> pb.Hello | None:
        """The stream's first message, which must be a Hello; None if the agent hung up."""
        if first is grpc.aio.EOF:
            return None
        if isinstance(first, str):
            raise _refusal(first, self.limits.max_message_bytes)
        assert isinstance(first, pb.ConnectRequest)
        if not first.HasField("hello"):
            raise Refused(_INVALID, "no_hello", "the first message on a stream must be Hello")
        hello = first.hello
        if len(hello.labels) > _MAX_LABELS or any(
            len(k) > _MAX_LABEL_CHARS or len(v) > _MAX_LABEL_CHARS
            for k, v in hello.labels.items()
        ):
            raise Refused(_INVALID, "malformed",
                          f"at most {_MAX_LABELS} labels of {_MAX_LABEL_CHARS} characters")
        return hello

    async def _results(self, session: Session) -> None:
        """The hot loop: one read, at most one throttle wait and one ack write per batch."""
        context, agent = session.context, session.agent
        bucket = self.buckets.setdefault(agent, Bucket(self.limits.max_batches_per_second))
        max_results, max_bytes = self.limits.max_batch_results, self.limits.max_message_bytes
        while True:
            if session.kicked is not None:
                session.ending = True
                await context.abort(*session.kicked)
            session.idle = True
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            if isinstance(msg, str):
                raise _refusal(msg, max_bytes)
            if not msg.HasField("results"):
                raise Refused(_INVALID, "second_hello", "Hello is only allowed once per stream")
            results = msg.results.results
            if len(results) > max_results:
                raise Refused(_EXHAUSTED, "batch_too_large",
                              f"{len(results)} results in one batch; the limit is {max_results}")
            wait = bucket.delay()
            if wait:
                await asyncio.sleep(wait)
            session.idle = False
            if self.ingest.shared is None:
                seq = self.ingest.batch(agent, session.fixed, results, session.key)
            else:
                seq = await self.ingest.batch_shared(agent, session.fixed, results, session.key)
            await session.send(pb.ConnectResponse(ack=pb.Ack(seq=seq)))

    def _second_stream(self, session: Session) -> None:
        """One credential on two machines (a copied config): the stream of another spool
        while one is live is refused, loudly and once in the log, never raced. The same spool
        again is the same agent reconnecting (the older stream may be half-open): it wins."""
        older = self.sessions.get(session.agent)
        if older is None or older.spool_id == session.spool_id or not (
                older.spool_id and session.spool_id):
            return
        message = (
            f"the credential of agent {session.agent} is already in use by a live stream from "
            f"{older.context.peer()} with another spool: two machines share this agent's token "
            "or certificate (a copied config?). Give each machine its own entry under agents: "
            "in the collector's config and its own credential; until then this one keeps its "
            "results spooled and retries")
        if (session.agent, session.spool_id) not in self._told:
            self._told.add((session.agent, session.spool_id))
            log.error("refused a second stream of agent %s from %s: %s", session.agent,
                      session.context.peer(), message)
        raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "credential_in_use", message)

    def _open(self, session: Session, version: str) -> None:
        older = self.sessions.get(session.agent)
        if older is not None:
            older.kick(grpc.StatusCode.ABORTED,
                       f"agent {session.agent} connected again; the newer stream wins")
        self.sessions[session.agent] = session
        self.fleet.connected[session.agent] = session.labels
        self.fleet.labels[session.agent] = session.labels
        self.fleet.versions[session.agent] = version[:64]
        self.fleet.connected_since[session.agent] = time.time()
        log.info("agent %s (version %.32s) connected from %s with labels %s, %d checks",
                 session.agent, version, session.context.peer(), session.labels,
                 len(session.checks))

    def _close(self, session: Session) -> None:
        if self.sessions.get(session.agent) is session:
            del self.sessions[session.agent]
            self.fleet.connected.pop(session.agent, None)
            log.info("agent %s disconnected", session.agent)

    def apply(self, loaded: Loaded) -> None:
        """Take a (re)loaded registry and checks: check every open stream's credential
        again, and push each stream the changes of its assigned checks."""
        self.agents = loaded.agents
        self.checks = loaded.config.checks
        for agent in self.agents:
            if not agent.revoked:
                self.fleet.labels.setdefault(agent.id, dict(agent.labels))
        pushed = 0
        for session in list(self.sessions.values()):
            try:
                agent = identify(session.credential, self.agents)
            except AuthError as exc:
                session.kick(_auth_status(exc), str(exc))
                continue
            if agent.id != session.agent:
                session.kick(grpc.StatusCode.UNAUTHENTICATED,
                             f"the credential now belongs to agent {agent.id}; reconnect")
                continue
            session.fixed = dict(agent.labels)
            self.fleet.connected[session.agent] = self.fleet.labels[session.agent] = (
                session.labels)
            new = assigned(self.checks, session.labels)
            upsert, remove = changes(session.checks, new)
            session.checks = new
            if upsert or remove:
                update = pb.CheckUpdate(upsert=[check_to_wire(c) for c in upsert], remove=remove)
                # A task per stream: an agent that does not read must not hold up the rest.
                task = asyncio.create_task(self._push(session, update))
                self._pushes.add(task)
                task.add_done_callback(self._pushes.discard)
                pushed += 1
        if pushed:
            log.info("check changes pushed to %d connected agent(s)", pushed)

    async def _push(self, session: Session, update: pb.CheckUpdate) -> None:
        try:
            await session.send(pb.ConnectResponse(checks=update))
        except Exception as exc:  # the stream ended meanwhile; it gets the full set next time
            log.debug("check update for agent %s not sent: %s", session.agent, exc)

    def kick_all(self, code: grpc.StatusCode, message: str) -> None:
        for session in list(self.sessions.values()):
            session.kick(code, message)


def _credentials(loaded: Loaded) -> grpc.ServerCredentials | None:
    tls = loaded.config.tls
    if tls is None:
        return None
    client_ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _stamps(files: list[Path]) -> list[tuple[int, int, int] | None]:
    out: list[tuple[int, int, int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return out


async def _watch(path: Path, loaded: Loaded, service: CollectorService,
                 hup: asyncio.Event) -> None:
    """Reload on SIGHUP, or when a config file changes (polled each second: cheap, and it
    works on every filesystem and with editors that replace the file)."""
    files, stamps = loaded.files, _stamps(loaded.files)
    static = loaded.config.model_dump(exclude={"agents", "agents_file", "checks"})
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hup.wait(), 1.0)
        forced = hup.is_set()
        hup.clear()
        now = _stamps(files)
        if not forced and now == stamps:
            continue
        stamps = now
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("config reload refused, the running config stays: %s", exc)
            continue
        files, stamps = new.files, _stamps(new.files)
        if new.config.model_dump(exclude={"agents", "agents_file", "checks"}) != static:
            log.warning("only agents and checks are reloaded; other settings changed in "
                        "%s take effect at the next start", path)
        service.apply(new)
        log.info("config reloaded: %d agents, %d checks", len(new.agents),
                 len(new.config.checks))


def grpc_options(limit: int, keepalive: Keepalive) -> list[tuple[str, int]]:
    """The server's channel options. gRPC ignores a name it does not know, silently:
    tests/test_keepalive.py checks each against the names in the installed gRPC."""
    return [
        # gRPC itself drops messages far over the limit; the deserializer refuses (and
        # counts) those between the limit and this.
        ("grpc.max_receive_message_length", 2 * limit),
        # Agents ping to find a dead collector, also between batches; without this gRPC
        # allows one ping per 5 minutes and answers more with GOAWAY too_many_pings.
        ("grpc.http2.min_ping_interval_without_data_ms",
         round(keepalive.min_ping_interval * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", round(keepalive.time * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive.timeout * 1000)),
        # Newer gRPC cores time an unanswered ping out by this one (default 1 minute).
        ("grpc.http2.ping_timeout_ms", round(keepalive.timeout * 1000)),
    ]


def _grpc_server(service: CollectorService, config: CollectorConfig) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=grpc_options(config.limits.max_message_bytes, config.keepalive))
    server.add_generic_rpc_handlers([service.handler()])
    return server


async def serve(path: Path, loaded: Loaded) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully: 0 on a clean stop, 1 when an
    address cannot be listened on."""
    config = loaded.config
    fleet = FleetState()
    try:
        state_file = None if is_redis(config.state) else StateFile(Path(config.state))
    except StateError as exc:
        log.error("%s", exc)
        return 1
    sinks = build_sinks(config, fleet)
    shared = None
    if state_file is None:
        shared = RedisState(config.state)
        sinks.extra_collectors.append(StateMetrics(shared))
        ingest = Ingest(fleet, sinks.all, shared=shared)
    else:
        marks = dict(state_file.marks)
        for key, seq in sinks.high_water.items():  # a results log may know a later one
            marks[key] = max(seq, marks.get(key, 0))
        ingest = Ingest(fleet, sinks.all, marks, store=state_file)
    service = CollectorService(loaded, ingest, fleet)
    server = _grpc_server(service, config)
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    await health_service.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)

    creds = _credentials(loaded)
    metrics = None
    try:
        if creds is None:
            server.add_insecure_port(config.listen)
        else:
            server.add_secure_port(config.listen, creds)
    except RuntimeError:
        # gRPC says only "Failed to bind"; these are the causes left after config checks.
        log.error("cannot listen on %s: the address is in use or not local, or the TLS key "
                  "does not match the certificate", config.listen)
        return 1
    if config.metrics_listen:
        try:
            metrics = serve_metrics(fleet, *split_host_port(config.metrics_listen),
                                    results=sinks.metrics,
                                    series_ttl=config.metrics.series_ttl,
                                    extra=sinks.extra_collectors,
                                    health=None if shared is None else shared.health,
                                    pages={"/status": sinks.status} if sinks.status else None)
        except OSError as exc:
            log.error("cannot serve /metrics on %s: %s", config.metrics_listen, exc.strerror)
            return 1
    if creds is None:
        log.warning(
            "WARNING: PLAINTEXT gRPC on %s: agent credentials and results travel "
            "unencrypted. Allowed only because allow_plaintext_loopback is true and the "
            "address is loopback; use tls for anything else.", config.listen)
    await server.start()
    mode = "plaintext" if creds is None else (
        "mTLS" if config.tls and config.tls.client_ca else "TLS")
    log.info("collector listening on %s (%s), metrics on %s, %d agents, %d checks",
             config.listen, mode, config.metrics_listen, len(loaded.agents), len(config.checks))

    loop = asyncio.get_running_loop()
    stop, hup = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    watcher = asyncio.create_task(_watch(path, loaded, service, hup))
    if shared is not None:
        await shared.ping()
        pinger = asyncio.create_task(shared.watch())
        log.info("high-water marks in %s", shared.where)
    await stop.wait()

    log.info("stopping: no new streams, %d open ones get %gs to end", len(service.sessions),
             config.shutdown_grace)
    watcher.cancel()
    await health_service.enter_graceful_shutdown()
    stopping = asyncio.create_task(server.stop(config.shutdown_grace))
    await asyncio.sleep(0)  # let stop() refuse new streams before agents are told to go
    service.kick_all(grpc.StatusCode.UNAVAILABLE, "the collector is shutting down")
    await stopping
    if metrics is not None:
        metrics.shutdown()
    sinks.close()
    if shared is not None:
        pinger.cancel()
        await shared.close()
    if state_file is not None:
        state_file.close()
    log.info("stopped")
    return 0

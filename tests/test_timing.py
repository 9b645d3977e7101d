"""Phase boundaries from the traffic itself: the timestamps' plumbing on a fake clock, a
login timed under a deliberately blocked event loop against real servers, and the fallbacks
(no kernel timestamps: `socket`; no traffic: `process`)."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from devstack.prometheus import parse_render
from devstack.servers import Servers
from loginprobe.codec import Report, from_wire, to_wire
from loginprobe.collector.exporters.otel import TraceExporter
from loginprobe.collector.exporters.prometheus import ResultMetrics
from loginprobe.collector.ingest import FleetState, Ingest
from loginprobe.contract import Reason
from loginprobe.probes import stream as stream_module
from loginprobe.probes.attempt import Attempt, ProbeOptions
from loginprobe.probes.stream import SO_TIMESTAMPNS, Stream, kernel_stamp, to_clock
from loginprobe.result import Phase, Result
from loginprobe.target import parse_target
from loginprobe.wire import collector_pb2 as pb
from tests.probing import check, options

BUSY_SECONDS = 0.03  # the blocked loop: far above a loopback exchange (~0.1-1 ms)


class FakeClock:
    def __init__(self, start: int = 5_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def phase(result: Result, name: str) -> tuple[float, str, float | None]:
    p = next(p for p in result.phases if p.name == name)
    server = None if p.server_ns is None else p.server_ns / 1e9
    return p.duration_ns / 1e9, p.clock, server


# ---- plumbing, fake clock -----------------------------------------------------------------


def test_a_phase_spans_its_first_byte_out_to_its_last_byte_in_on_the_fake_clock() -> None:
    clock = FakeClock()
    attempt = Attempt(parse_target("mqtt://alice@127.0.0.1:1883"), ProbeOptions(), clock)
    t0 = clock.now
    with attempt.phase("login"):
        clock.now += 1_000  # our own work before the request: not the wire's
        attempt.sent(t0 + 1_500)
        attempt.arrived(t0 + 4_500, by_kernel=True, server_ns=3_000)
        clock.now += 90_000_000  # the loop was busy before we got round to it
    (login,) = attempt.phases
    assert (login.duration_ns, login.clock, login.server_ns) == (3_000, "kernel", 3_000)
    assert login.to_dict()["clock"] == "kernel"
    assert login.to_dict()["server_duration_seconds"] == 3e-06


def test_an_arrival_without_a_kernel_stamp_marks_the_phase_socket() -> None:
    clock = FakeClock()
    attempt = Attempt(parse_target("mqtt://alice@127.0.0.1:1883"), ProbeOptions(), clock)
    with attempt.phase("login"):
        attempt.sent(clock.now + 10)
        attempt.arrived(clock.now + 70, by_kernel=False, server_ns=60)
        attempt.arrived(clock.now + 90, by_kernel=True, server_ns=None)  # same answer, more
    assert (attempt.phases[0].duration_ns, attempt.phases[0].clock) == (80, "socket")
    assert attempt.phases[0].server_ns == 60


def test_without_traffic_or_after_a_timeout_the_phase_keeps_the_process_clock() -> None:
    clock = FakeClock()
    attempt = Attempt(parse_target("mqtt://alice@127.0.0.1:1883"), ProbeOptions(), clock)
    with attempt.phase("dns"):
        clock.now += 7_000
    with pytest.raises(TimeoutError), attempt.phase("login"):
        attempt.sent(clock.now)
        clock.now += 2_000_000  # no answer: the deadline, not the wire, ends the phase
        raise TimeoutError
    dns, login = attempt.phases
    assert (dns.duration_ns, dns.clock, dns.server_ns) == (7_000, "process", None)
    assert (login.ok, login.duration_ns, login.clock) == (False, 2_000_000, "process")


def test_kernel_stamps_are_read_from_ancillary_data_and_moved_onto_the_attempts_clock() -> None:
    data = struct.pack("@ll", 1_700_000_000, 123_456_789)
    assert kernel_stamp([(socket.SOL_SOCKET, SO_TIMESTAMPNS, data)]) == 1_700_000_000_123_456_789
    assert kernel_stamp([(socket.SOL_SOCKET, 99, data)]) is None
    # Read at now=1,000,000 on our clock, realtime 9,000,000: a stamp 300 ns before the read.
    assert to_clock(8_999_700, 1_000_000, 9_000_000) == 999_700
    assert to_clock(9_000_050, 1_000_000, 9_000_000) == 1_000_000  # rounding: the read's time
    assert to_clock(9_000_000 + 10**9, 1_000_000, 9_000_000) is None  # a clock step ahead
    assert to_clock(9_000_000 - 60 * 10**9, 70 * 10**9, 9_000_000) is None  # far behind


@pytest.fixture
async def pair() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    server.close()
    client.setblocking(False)
    yield client, peer
    client.close()
    peer.close()


async def test_a_stream_stamps_departures_on_its_clock_and_arrivals_by_the_kernel(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, peer = pair
    clock = FakeClock(10**12)
    realtime_at_read = time.time_ns()
    wire = Stream(client, clock, realtime=lambda: realtime_at_read + 5 * 10**9)
    assert wire.kernel
    wire.writer.write(b"ping")
    await wire.writer.drain()
    assert wire.sent_ns == 10**12 and peer.recv(4) == b"ping"
    peer.send(b"pong")
    assert await wire.reader.readexactly(4) == b"pong"
    # The kernel stamped the packet before realtime_at_read + 5 s (5 s leaves room for a
    # busy machine); on the fake clock that is up to 5 s before the read's `now`.
    assert wire.arrived_by_kernel
    assert wire.arrived_ns is not None and 10**12 - 6 * 10**9 < wire.arrived_ns < 10**12 - 10**8
    assert wire.exchange_ns() == wire.arrived_ns - 10**12
    assert wire.exchange_ns() is None  # an exchange counts once
    wire.close()


async def test_without_kernel_timestamps_arrivals_are_stamped_in_the_read_callback(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, peer = pair
    monkeypatch.setattr(stream_module, "enable_timestamps", lambda sock: False)
    clock = FakeClock(10**12)
    wire = Stream(client, clock)
    assert not wire.kernel
    wire.writer.write(b"ping")
    clock.now += 500
    peer.send(b"pong")
    assert await wire.reader.readexactly(4) == b"pong"
    assert (wire.arrived_ns, wire.arrived_by_kernel) == (10**12 + 500, False)
    assert wire.exchange_ns() == 500
    wire.close()


# ---- against real servers, with the event loop blocked ------------------------------------


@pytest.fixture
def busy_after_each_send(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """After each of our sends, a callback that holds the event loop for BUSY_SECONDS: the
    answer arrives while the loop is blocked and is processed that much later, as on an
    agent running a burst of checks."""
    original = Stream._sent
    blocked: list[int] = []

    def busy() -> None:
        blocked.append(1)
        end = time.monotonic() + BUSY_SECONDS
        while time.monotonic() < end:
            pass

    def sent(self: Stream, at: int) -> None:
        original(self, at)
        self.loop.call_soon(busy)

    monkeypatch.setattr(Stream, "_sent", sent)
    yield blocked


async def test_mqtt_login_under_a_blocked_loop_reports_the_wires_duration(
    servers: Servers, busy_after_each_send: list[int]
) -> None:
    result = await check(f"mqtt://alice@127.0.0.1:{servers.mqtt_port}", options(servers))
    assert result.success, result.message
    assert busy_after_each_send  # the loop really was blocked after the CONNECT went out
    duration, clock, server = phase(result, "login")
    assert clock == "kernel"
    # CONNECT out -> CONNACK in on loopback is well under a millisecond; the process clock
    # would have seen the busy callback's 30 ms. The bound is generous for a loaded machine.
    assert duration < BUSY_SECONDS / 2, result.phases
    assert server is not None and server <= duration
    assert result.duration_ns / 1e9 >= BUSY_SECONDS  # the attempt itself did wait


async def test_mqtts_tls_and_login_under_a_blocked_loop_keep_the_servers_time(
    servers: Servers, busy_after_each_send: list[int]
) -> None:
    result = await check(f"mqtts://alice@127.0.0.1:{servers.mqtts_port}", options(servers))
    assert result.success, result.message
    tls, tls_clock, tls_server = phase(result, "tls")
    login, login_clock, login_server = phase(result, "login")
    assert (tls_clock, login_clock) == ("kernel", "kernel")
    # The server's answer to our ClientHello came while we were blocked: its time is the
    # wire's, though the handshake as a whole waited for us (the capture sees that too).
    assert tls_server is not None and tls_server < BUSY_SECONDS / 2
    assert tls >= BUSY_SECONDS
    assert login < BUSY_SECONDS / 2 and login_server is not None


async def test_without_kernel_timestamps_a_phase_says_its_clock_is_the_sockets(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_module, "enable_timestamps", lambda sock: False)
    result = await check(f"mqtts://alice@127.0.0.1:{servers.mqtts_port}", options(servers))
    assert result.success, result.message
    assert [(p.name, p.clock) for p in result.phases] == [
        ("tcp", "kernel"), ("tls", "socket"), ("login", "socket")
    ]
    assert all(p.server_ns is not None for p in result.phases if p.name != "tcp")
    login = next(p for p in result.to_dict()["phases"] if p["name"] == "login")
    assert login["clock"] == "socket" and login["server_duration_seconds"] > 0


async def test_xmpp_phases_carry_server_time_over_several_exchanges(servers: Servers) -> None:
    result = await check(
        f"xmpp://alice@xmpp.test:{servers.xmpp_port}?host=127.0.0.1", options(servers)
    )
    assert result.success, result.message
    for name in ("tls", "login"):
        duration, clock, server = phase(result, name)
        assert clock == "kernel"
        assert server is not None and 0 < server <= duration


async def test_a_failed_login_that_got_its_answer_is_timed_by_the_wire(servers: Servers) -> None:
    result = await check(
        f"mqtt://alice@127.0.0.1:{servers.mqtt_port}", options(servers, password="wrong")
    )
    assert result.reason == "auth_rejected"
    login = next(p for p in result.phases if p.name == "login")
    assert (login.ok, login.clock) == (False, "kernel") and login.server_ns is not None


# ---- what the collector makes of it -------------------------------------------------------


class Spans:
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans += spans
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def timed_result() -> pb.ProbeResult:
    phases = [Phase("tcp", True, 0, 40_000, clock="kernel"),
              Phase("tls", True, 50_000, 1_100_000, clock="kernel", server_ns=400_000),
              Phase("login", False, 1_200_000, 300_000, clock="socket", server_ns=250_000)]
    r = Result(url="mqtts://alice@broker.example:8883", protocol="mqtt", success=False,
               reason=Reason.AUTH_REJECTED, message="CONNACK 0x05 Not authorized",
               started_at=datetime.now(UTC), duration_ns=1_600_000, phases=phases)
    return to_wire(Report(r, 1, "mqtts-login", os.urandom(16)))


def test_clock_and_server_time_travel_to_the_json_metrics_and_spans() -> None:
    msg = timed_result()
    back = from_wire(msg).result
    assert [(p.name, p.clock, p.server_ns) for p in back.phases] == [
        ("tcp", "kernel", None), ("tls", "kernel", 400_000), ("login", "socket", 250_000)]
    assert back.to_dict()["phases"][1]["server_duration_seconds"] == 0.0004

    fleet = FleetState()
    metrics = ResultMetrics(fleet)
    spans = Spans()
    exporter = TraceExporter(fleet, spans, 1.0, max_sampled_per_second=1e9)  # type: ignore[arg-type]
    Ingest(fleet, [metrics, exporter]).batch("a1", {}, [msg])
    exporter.close()
    samples = {(s.name, s.labels.get("phase")): s.value
               for f in parse_render(metrics.render) for s in f.samples}
    assert samples[("loginprobe_phase_server_duration_seconds_count", "tls")] == 1
    assert samples[("loginprobe_phase_server_duration_seconds_sum", "login")] == 0.00025
    assert ("loginprobe_phase_server_duration_seconds_count", "tcp") not in samples
    by_name = {s.name: dict(s.attributes) for s in spans.spans}
    assert by_name["tls"]["loginprobe.phase.server_duration_seconds"] == 0.0004
    assert by_name["login"]["loginprobe.phase.clock"] == "socket"
    assert "loginprobe.phase.server_duration_seconds" not in by_name["tcp"]


async def test_the_transcript_says_when_bytes_left_and_arrived(
    servers: Servers, busy_after_each_send: list[int]
) -> None:
    result = await check(f"mqtt://alice@127.0.0.1:{servers.mqtt_port}", options(servers))
    assert result.success, result.message
    lines = [line for line in result.transcript if line.direction in "<>"]
    connect, connack = lines[0], lines[1]
    assert connect.text.startswith("CONNECT") and connack.direction == "<"
    login = next(p for p in result.phases if p.name == "login")
    # The exchange's lines are the phase's bounds, though the loop was blocked between them.
    assert connack.offset_ns - connect.offset_ns == login.duration_ns

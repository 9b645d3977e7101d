"""The phases every probe shares — dns, tcp, tls — against real unbound, real sockets and
real nftables faults, each case asserting its reason code and step."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from devstack import faults
from devstack.servers import Servers
from loginprobe.contract import Reason, Step
from loginprobe.probes.attempt import Attempt, ProbeOptions
from loginprobe.probes.run import run_check
from loginprobe.result import Result
from loginprobe.target import parse_target
from tests.probing import check, closed_port, options


def assert_reason(result: Result, reason: Reason, step: Step) -> None:
    assert (result.reason, result.reason.step) == (reason, step), result.to_dict(transcript=True)
    assert result.success is (reason is Reason.OK)


def phase_names(result: Result) -> list[str]:
    return [p.name for p in result.phases]


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


# --- dns ---------------------------------------------------------------------------------


async def test_dns_answer_address_and_ttl_are_recorded(servers: Servers, listener: int) -> None:
    result = await check(f"tcp://mqtt.test:{listener}", options(servers))
    assert_reason(result, Reason.OK, Step.NONE)
    assert result.dns is not None
    assert (result.dns.addresses, result.dns.ttl) == (["127.0.0.1"], 60)
    assert result.dns.resolver == servers.resolver
    assert phase_names(result) == ["dns", "tcp"]
    assert all(p.ok for p in result.phases)


async def test_dns_ipv6_only_name_connects_over_ipv6(servers: Servers) -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen()
        result = await check(f"tcp://ipv6.test:{s.getsockname()[1]}", options(servers))
    assert_reason(result, Reason.OK, Step.NONE)
    assert result.resolved_address == "::1"


async def test_dns_dual_stack_name_records_both_families(servers: Servers, listener: int) -> None:
    result = await check(f"tcp://v6.test:{listener}", options(servers))
    assert_reason(result, Reason.OK, Step.NONE)
    assert result.dns is not None and set(result.dns.addresses) == {"127.0.0.1", "::1"}
    assert result.resolved_address == "127.0.0.1"


async def test_dns_nxdomain(servers: Servers) -> None:
    result = await check("tcp://nosuchhost.test:5222", options(servers))
    assert_reason(result, Reason.DNS_NXDOMAIN, Step.NETWORK)
    assert "NXDOMAIN" in result.message
    assert phase_names(result) == ["dns"] and not result.phases[0].ok


async def test_dns_no_address_record(servers: Servers) -> None:
    result = await check("tcp://noaddr.test:5222", options(servers))
    assert_reason(result, Reason.DNS_NO_ANSWER, Step.NETWORK)


async def test_dns_servfail(servers: Servers) -> None:
    result = await check("tcp://x.fail.test:5222", options(servers))
    assert_reason(result, Reason.DNS_SERVFAIL, Step.NETWORK)
    assert "SERVFAIL" in result.message


async def test_dns_timeout_is_blamed_on_the_dns_phase(servers: Servers) -> None:
    result = await check("tcp://slow.deny.test:5222", options(servers, timeout=1.0))
    assert_reason(result, Reason.DNS_TIMEOUT, Step.NETWORK)
    assert result.duration_ns < 2e9
    assert phase_names(result) == ["dns"]


async def test_dns_resolver_that_is_down_times_out(servers: Servers) -> None:
    result = await check(
        "tcp://xmpp.test:5222", options(servers, resolver=("127.0.0.1", closed_port()), timeout=1.0)
    )
    assert_reason(result, Reason.DNS_TIMEOUT, Step.NETWORK)


async def test_ip_literal_needs_no_dns_phase(listener: int) -> None:
    result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions())
    assert phase_names(result) == ["tcp"]


# --- tcp ---------------------------------------------------------------------------------


async def test_tcp_refused() -> None:
    result = await check(f"tcp://127.0.0.1:{closed_port()}", ProbeOptions())
    assert_reason(result, Reason.TCP_REFUSED, Step.NETWORK)
    assert [(p.name, p.ok) for p in result.phases] == [("tcp", False)]


async def test_tcp_filtered_port_times_out(listener: int) -> None:
    with faults.drop_syn(listener):
        result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions(timeout=1.0))
    assert_reason(result, Reason.TCP_TIMEOUT, Step.NETWORK)
    assert [(p.name, p.ok) for p in result.phases] == [("tcp", False)]
    assert 0.9e9 < result.duration_ns < 2e9


async def test_tcp_unreachable(listener: int) -> None:
    with faults.reject_icmp_unreachable(listener):
        result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions(timeout=3.0))
    assert_reason(result, Reason.TCP_UNREACHABLE, Step.NETWORK)


async def test_tcp_reset_after_connect_is_tcp_reset(servers: Servers) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        sock = writer.get_extra_info("socket")
        # SO_LINGER 0: close sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await check(f"mqtt://alice@127.0.0.1:{port}", options(servers))
    assert_reason(result, Reason.TCP_RESET, Step.NETWORK)


async def test_tcp_phase_uses_the_kernel_handshake_time(listener: int) -> None:
    result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions())
    tcp = result.phases[0]
    # tcpi_rtt has microsecond resolution: the phase is a whole number of µs.
    assert tcp.duration_ns > 0 and tcp.duration_ns % 1000 == 0


async def test_bound_to_interface_and_source_address(listener: int) -> None:
    result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions(interface="lo"))
    assert_reason(result, Reason.OK, Step.NONE)
    result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions(source_address="127.0.0.2"))
    assert_reason(result, Reason.OK, Step.NONE)
    result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions(interface="nosuchif0"))
    assert_reason(result, Reason.TCP_UNREACHABLE, Step.NETWORK)
    assert "nosuchif0" in result.message


# --- tls ---------------------------------------------------------------------------------


async def test_tls_target_records_the_certificate(servers: Servers) -> None:
    result = await check(f"tls://xmpp.test:{servers.xmpps_port}", options(servers))
    assert_reason(result, Reason.OK, Step.NONE)
    assert phase_names(result) == ["dns", "tcp", "tls"]
    tls = result.tls
    assert tls is not None and tls.verified and tls.verify_error is None
    assert tls.version in ("TLSv1.2", "TLSv1.3") and tls.cipher
    assert "xmpp.test" in tls.sans and "CN=loginprobe Test CA" in tls.issuer
    assert tls.days_left is not None and tls.days_left > 300


async def test_tls_untrusted_without_the_ca(servers: Servers) -> None:
    result = await check(f"tls://xmpp.test:{servers.xmpps_port}", options(servers, ca_file=None))
    assert_reason(result, Reason.TLS_CERT_UNTRUSTED, Step.CONFIG)
    assert "unable to get local issuer certificate" in result.message
    assert [(p.name, p.ok) for p in result.phases][-1] == ("tls", False)


async def test_tls_expired(servers: Servers) -> None:
    result = await check(f"tls://mqtt.test:{servers.mqtts_expired_port}", options(servers))
    assert_reason(result, Reason.TLS_CERT_EXPIRED, Step.CONFIG)
    assert "expired" in result.message


async def test_tls_hostname_mismatch(servers: Servers) -> None:
    result = await check(f"tls://mqtt.test:{servers.mqtts_wronghost_port}", options(servers))
    assert_reason(result, Reason.TLS_HOSTNAME_MISMATCH, Step.CONFIG)


async def test_tls_self_signed(servers: Servers) -> None:
    result = await check(f"tls://mqtt.test:{servers.mqtts_selfsigned_port}", options(servers))
    assert_reason(result, Reason.TLS_CERT_UNTRUSTED, Step.CONFIG)
    assert "self-signed" in result.message


async def test_tls_no_common_version(servers: Servers) -> None:
    result = await check(f"tls://http.test:{servers.https_tls11_port}", options(servers))
    assert_reason(result, Reason.TLS_VERSION_MISMATCH, Step.CONFIG)


async def test_tls_against_a_plaintext_port_is_a_protocol_mismatch(servers: Servers) -> None:
    result = await check(f"tls://http.test:{servers.http_port}", options(servers))
    assert_reason(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG)


@pytest.mark.parametrize(
    ("port_attr", "needle"),
    [
        ("mqtts_expired_port", "expired"),
        ("mqtts_wronghost_port", "mqtt.test"),
        ("mqtts_selfsigned_port", ""),
    ],
)
async def test_insecure_succeeds_but_records_why_it_would_fail(
    servers: Servers, port_attr: str, needle: str
) -> None:
    port = getattr(servers, port_attr)
    result = await check(f"tls://mqtt.test:{port}", options(servers, insecure=True))
    assert_reason(result, Reason.OK, Step.NONE)
    assert result.tls is not None and result.tls.verified is False
    assert result.tls.verify_error and needle in result.tls.verify_error
    assert result.tls.subject  # the certificate is still recorded


async def test_insecure_with_a_good_certificate_is_verified(servers: Servers) -> None:
    result = await check(f"tls://mqtt.test:{servers.mqtts_port}", options(servers, insecure=True))
    assert result.tls is not None and result.tls.verified and result.tls.verify_error is None


async def test_tls_stall_is_tls_timeout(listener: int) -> None:
    # The listener accepts (kernel backlog) but never speaks TLS.
    result = await check(f"tls://127.0.0.1:{listener}", ProbeOptions(timeout=0.5))
    assert_reason(result, Reason.TLS_TIMEOUT, Step.NETWORK)
    assert [(p.name, p.ok) for p in result.phases] == [("tcp", True), ("tls", False)]


# --- the timer ---------------------------------------------------------------------------


async def test_phase_timer_uses_the_injected_clock(listener: int) -> None:
    ticks = iter(range(0, 10**9, 1000))
    result = await run_check(
        parse_target(f"tcp://localhost:{listener}"), ProbeOptions(), clock=lambda: next(ticks)
    )
    dns = result.phases[0]
    assert dns.name == "dns" and dns.start_ns % 1000 == 0 and dns.duration_ns % 1000 == 0


def test_attempt_scrubs_the_password_from_every_text() -> None:
    attempt = Attempt(parse_target("tcp://h:1"), ProbeOptions(password="hunter2"))
    attempt.note(">", "PASS hunter2")
    result = attempt.result(Reason.PROTOCOL_ERROR, "server echoed hunter2")
    assert "hunter2" not in str(result.to_dict(transcript=True))


# --- ping --------------------------------------------------------------------------------


async def test_ping_phase_comes_first_and_does_not_block(listener: int) -> None:
    result = await check(f"tcp://127.0.0.1:{listener}", ProbeOptions(ping=True))
    assert_reason(result, Reason.OK, Step.NONE)
    assert [(p.name, p.ok, p.skipped) for p in result.phases] == [
        ("ping", True, False),
        ("tcp", True, False),
    ]


def test_ping_without_permission_is_skipped_not_failed(listener: int) -> None:
    # A new user namespace has no CAP_NET_RAW for the host's network: the unprivileged case.
    proc = subprocess.run(
        [
            "unshare",
            "--user",
            sys.executable,
            "-m",
            "loginprobe.cli",
            "check",
            f"tcp://127.0.0.1:{listener}",
            "--ping",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    ping = json.loads(proc.stdout)["phases"][0]
    assert (ping["name"], ping["ok"], ping["skipped"]) == ("ping", True, True)
    assert "permission" in ping["message"]


async def test_alpn_refused_by_a_server_of_another_protocol(servers: Servers) -> None:
    # nginx over TLS knows http/1.1 only: an XMPP client's ALPN is refused by the alert.
    result = await check(f"xmpps://alice@http.test:{servers.https_port}", options(servers))
    assert_reason(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG)
    assert "NO_APPLICATION_PROTOCOL" in result.message


async def test_duration_ends_at_the_verdict_not_after_closing(listener: int) -> None:
    # The listener never speaks TLS, so closing waits for a goodbye that never comes.
    result = await check(f"tls://127.0.0.1:{listener}", ProbeOptions(timeout=0.3))
    assert result.reason is Reason.TLS_TIMEOUT
    assert 0.3e9 <= result.duration_ns < 0.45e9

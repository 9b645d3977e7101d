"""The MQTT probe against a real mosquitto (logins, refusals, certificates, wrong ports), and
against tiny fake brokers for the answers mosquitto never gives; tcp:// and tls:// too."""

from __future__ import annotations

import time

import pytest

from devstack import fakes
from devstack.servers import Servers
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.mqtt import connect_packet, parse_properties
from tests.probing import check, closed_port, options, phases

FAKE_PASSWORD = "fake-Pa55word-never-shown"


# -- logins against mosquitto ----------------------------------------------------------


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_login_ok(servers: Servers, version: str) -> None:
    result = await check(
        f"mqtt://alice@127.0.0.1:{servers.mqtt_port}?version={version}", options(servers)
    )
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert result.success
    # An address needs no lookup, so there is no dns phase at all.
    assert phases(result) == [("tcp", True), ("login", True)]
    sent = [line.text for line in result.transcript if line.direction == ">"]
    assert sent[0].startswith(f"CONNECT MQTT {version} ") and "password=<redacted>" in sent[0]
    assert sent[-1] == "DISCONNECT"


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_mqtts_login_ok_via_dns_name(servers: Servers, version: str) -> None:
    result = await check(
        f"mqtts://alice@mqtt.test:{servers.mqtts_port}?version={version}", options(servers)
    )
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert phases(result) == [("dns", True), ("tcp", True), ("tls", True), ("login", True)]
    assert result.dns is not None and result.dns.resolver == servers.resolver
    assert result.tls is not None and result.tls.verified and result.tls.verify_error is None


async def test_explicit_client_id_is_sent(servers: Servers) -> None:
    result = await check(
        f"mqtt://alice@127.0.0.1:{servers.mqtt_port}?client_id=probe-42", options(servers)
    )
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert "client_id='probe-42'" in result.transcript[1].text


async def test_wrong_password_v311_is_rc_5(servers: Servers) -> None:
    result = await check(
        f"mqtt://alice@127.0.0.1:{servers.mqtt_port}", options(servers, password="wrong-one")
    )
    assert (result.reason, result.reason.step) == ("auth_rejected", "account")
    assert result.message == "CONNACK 0x05 Not authorized"
    assert phases(result) == [("tcp", True), ("login", False)]


async def test_wrong_password_v5_is_0x87(servers: Servers) -> None:
    result = await check(
        f"mqtts://alice@mqtt.test:{servers.mqtts_port}?version=5",
        options(servers, password="wrong-one"),
    )
    assert (result.reason, result.reason.step) == ("auth_rejected", "account")
    assert "0x87" in result.message
    assert phases(result)[-1] == ("login", False)


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_unknown_user(servers: Servers, version: str) -> None:
    # mosquitto does not tell an unknown user from a wrong password (PEERS.md).
    result = await check(
        f"mqtt://nobody@127.0.0.1:{servers.mqtt_port}?version={version}", options(servers)
    )
    assert (result.reason, result.reason.step) == ("auth_rejected", "account")


# -- certificates (mosquitto's special listeners) ------------------------------------


async def test_self_signed_is_untrusted(servers: Servers) -> None:
    result = await check(
        f"mqtts://alice@mqtt.test:{servers.mqtts_selfsigned_port}", options(servers)
    )
    assert (result.reason, result.reason.step) == ("tls_cert_untrusted", "config")
    assert phases(result)[-1] == ("tls", False)


async def test_expired_certificate(servers: Servers) -> None:
    result = await check(f"mqtts://alice@mqtt.test:{servers.mqtts_expired_port}", options(servers))
    assert (result.reason, result.reason.step) == ("tls_cert_expired", "config")
    assert "expired" in result.message


async def test_hostname_mismatch(servers: Servers) -> None:
    result = await check(
        f"mqtts://alice@mqtt.test:{servers.mqtts_wronghost_port}", options(servers)
    )
    assert (result.reason, result.reason.step) == ("tls_hostname_mismatch", "config")


async def test_insecure_logs_in_but_records_the_expired_certificate(servers: Servers) -> None:
    result = await check(
        f"mqtts://alice@mqtt.test:{servers.mqtts_expired_port}", options(servers, insecure=True)
    )
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert result.tls is not None
    assert result.tls.verified is False
    assert result.tls.verify_error
    assert result.to_dict()["tls"]["verified"] is False


# -- the right host, the wrong port ----------------------------------------------------


async def test_mqtt_against_http_port_is_a_mismatch(servers: Servers) -> None:
    result = await check(f"mqtt://alice@127.0.0.1:{servers.http_port}", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")
    assert "HTTP" in result.message


async def test_mqtt_against_xmpp_port_is_a_mismatch(servers: Servers) -> None:
    result = await check(f"mqtt://alice@127.0.0.1:{servers.xmpp_port}", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")


async def test_mqtts_against_the_plain_port_is_a_mismatch(servers: Servers) -> None:
    # mosquitto reads the ClientHello's first byte (0x16) as an invalid MQTT packet type and
    # closes with the rest unread, so the kernel answers with a reset, not with bytes that
    # OpenSSL could call WRONG_VERSION_NUMBER. The follow-up's plaintext CONNECT gets a
    # CONNACK: the reset is evidence of the wrong TLS mode, not of the network.
    result = await check(f"mqtts://alice@127.0.0.1:{servers.mqtt_port}", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")
    assert phases(result)[-1] == ("tls", False)
    finding = f"port {servers.mqtt_port} speaks MQTT without TLS: use mqtt://"
    assert result.findings[0] == finding
    assert result.hint.startswith("P" + finding[1:])


async def test_plain_mqtt_against_the_tls_port_is_a_mismatch(servers: Servers) -> None:
    result = await check(f"mqtt://alice@127.0.0.1:{servers.mqtts_port}", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")
    assert phases(result)[-1] == ("login", False)
    assert result.findings[0] == f"port {servers.mqtts_port} speaks MQTT over TLS: use mqtts://"


# -- tcp:// and tls:// -----------------------------------------------------------------


async def test_tls_target_ok_with_ca_file(servers: Servers) -> None:
    result = await check(f"tls://127.0.0.1:{servers.mqtts_port}", options(servers))
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert phases(result) == [("tcp", True), ("tls", True)]
    assert result.tls is not None and result.tls.verified


async def test_tls_target_self_signed(servers: Servers) -> None:
    result = await check(f"tls://127.0.0.1:{servers.mqtts_selfsigned_port}", options(servers))
    assert (result.reason, result.reason.step) == ("tls_cert_untrusted", "config")


async def test_tcp_target_ok(servers: Servers) -> None:
    result = await check(f"tcp://127.0.0.1:{servers.mqtt_port}", options(servers))
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert phases(result) == [("tcp", True)]


async def test_tcp_target_refused(servers: Servers) -> None:
    result = await check(f"tcp://127.0.0.1:{closed_port()}", options(servers))
    assert (result.reason, result.reason.step) == ("tcp_refused", "network")
    assert phases(result) == [("tcp", False)]


# -- fake brokers: answers mosquitto never gives --------------------------------------


def fake_options(timeout: float = 2.0) -> ProbeOptions:
    return ProbeOptions(password=FAKE_PASSWORD, timeout=timeout)


@pytest.mark.parametrize(
    ("version", "connack", "reason", "step", "text"),
    [
        ("5", b"\x20\x03\x00\x88\x00", "server_unavailable", "server", "0x88 Server unavailable"),
        ("5", b"\x20\x03\x00\x89\x00", "server_unavailable", "server", "0x89 Server busy"),
        ("5", b"\x20\x03\x00\x8a\x00", "auth_not_authorized", "account", "0x8A Banned"),
        ("5", b"\x20\x03\x00\x80\x00", "server_error", "server", "0x80 Unspecified error"),
        ("5", b"\x20\x03\x00\x8c\x00", "auth_mechanism_unsupported", "account", "0x8C"),
        ("5", b"\x20\x03\x00\x84\x00", "protocol_mismatch", "config", "try ?version=3.1.1"),
        ("5", b"\x20\x03\x00\x82\x00", "protocol_error", "server", "0x82 Protocol Error"),
        ("5", b"\x20\x03\x00\xfe\x00", "protocol_error", "server", "0xFE unknown"),
        ("3.1.1", b"\x20\x02\x00\x03", "server_unavailable", "server", "0x03 Server unavailable"),
        ("3.1.1", b"\x20\x02\x00\x02", "auth_not_authorized", "account", "0x02 Identifier"),
        ("3.1.1", b"\x20\x02\x00\x04", "auth_rejected", "account", "0x04 Bad user name"),
        ("3.1.1", b"\x20\x02\x00\x01", "protocol_mismatch", "config", "try ?version=5"),
        ("5", b"\x20\x03\x00\x85\x00", "auth_not_authorized", "account", "?client_id="),
        ("5", b"\x20\x03\x00\x86\x00", "auth_rejected", "account", "0x86 Bad User Name"),
        ("5", b"\x20\x03\x00\x87\x00", "auth_rejected", "account", "without permission"),
        ("5", b"\x20\x03\x00\x8a\x00", "auth_not_authorized", "account", "banned"),
        ("5", b"\x20\x03\x00\x8c\x00", "auth_mechanism_unsupported", "account",
         "another authentication method"),
        ("5", b"\x20\x03\x00\x97\x00", "server_unavailable", "server", "quota"),
        ("5", b"\x20\x03\x00\x9f\x00", "server_unavailable", "server", "connection rate"),
        ("3.1.1", b"\x20\x02\x00\x02", "auth_not_authorized", "account", "?client_id="),
        # A 3.1.1-only broker answering a version 5 CONNECT the 3.1.1 way.
        ("5", b"\x20\x02\x00\x01", "protocol_mismatch", "config", "0x01"),
    ],
)
async def test_connack_codes(
    version: str, connack: bytes, reason: str, step: str, text: str
) -> None:
    async with fakes.serve(fakes.scripted(connack)) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}?version={version}", fake_options())
    assert (result.reason, result.reason.step) == (reason, step)
    assert text in result.message


async def test_v5_reason_string_and_server_reference_are_reported() -> None:
    reason_string = b"maintenance until 12:00"
    reference = b"mqtt2.example.net"
    props = (
        b"\x21\x00\x0a"  # receive maximum (skipped, fixed size)
        + b"\x1f" + len(reason_string).to_bytes(2, "big") + reason_string
        + b"\x1c" + len(reference).to_bytes(2, "big") + reference
    )
    body = b"\x00\x9c" + bytes([len(props)]) + props
    async with fakes.serve(fakes.scripted(b"\x20" + bytes([len(body)]) + body)) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}?version=5", fake_options())
    assert (result.reason, result.reason.step) == ("server_unavailable", "server")
    assert result.message == (
        "CONNACK 0x9C Use another server ('maintenance until 12:00'); "
        "server reference 'mqtt2.example.net'"
    )


async def test_stall_after_connect_is_a_login_timeout() -> None:
    async with fakes.serve(fakes.stall) as port:
        start = time.monotonic()
        result = await check(f"mqtt://alice@127.0.0.1:{port}", fake_options(timeout=1.0))
        elapsed = time.monotonic() - start
    assert (result.reason, result.reason.step) == ("login_timeout", "server")
    assert phases(result)[-1] == ("login", False)
    assert elapsed < 2.0


async def test_garbage_is_a_protocol_error() -> None:
    async with fakes.serve(fakes.garbage) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}", fake_options())
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert "expected a CONNACK" in result.message


async def test_flood_ends_fast_with_a_protocol_error() -> None:
    async with fakes.serve(fakes.flood) as port:
        start = time.monotonic()
        result = await check(f"mqtt://alice@127.0.0.1:{port}", fake_options())
        elapsed = time.monotonic() - start
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert elapsed < 1.0


async def test_huge_connack_length_is_refused_without_reading_it() -> None:
    # A CONNACK announcing 256 MiB, then an endless stream: refused on the length alone.
    async with fakes.serve(fakes.scripted(b"\x20\xff\xff\xff\x7f", then="flood")) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}?version=5", fake_options())
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert "impossible length" in result.message


async def test_a_fifth_length_byte_is_malformed() -> None:
    async with fakes.serve(fakes.scripted(b"\x20\xff\xff\xff\xff\x01")) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}", fake_options())
    assert (result.reason, result.reason.step) == ("protocol_error", "server")


async def test_close_before_connack_is_a_protocol_error() -> None:
    async with fakes.serve(fakes.scripted(b"\x20", then="close")) as port:
        result = await check(f"mqtt://alice@127.0.0.1:{port}", fake_options())
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert "closed" in result.message


# -- the packets themselves --------------------------------------------------------------


def test_connect_packet_311_matches_the_spec() -> None:
    packet = connect_packet("3.1.1", "c", "u", "p")
    assert packet == bytes.fromhex("10 13 0004 4d515454 04 c2 001e 0001 63 0001 75 0001 70")


def test_connect_packet_5_has_empty_properties_and_no_password_without_one() -> None:
    packet = connect_packet("5", "c", "u", None)
    assert packet == bytes.fromhex("10 11 0004 4d515454 05 82 001e 00 0001 63 0001 75")


def test_truncated_properties_do_not_raise() -> None:
    assert parse_properties(b"\x1f\x00\x10abc") == {}
    assert parse_properties(b"\x1f\x00\x02ok\x7f\x00") == {0x1F: "ok"}

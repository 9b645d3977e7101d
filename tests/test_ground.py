"""The ground's servers answer as the probe tests expect, and the fault helpers bite."""

from __future__ import annotations

import base64
import errno
import json
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from devstack import faults
from devstack.ground import Ground, http_get, mqtt_connack, xmpp_stream_header

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_BAD_CREDENTIALS = b"\x20\x02\x00\x05"


def _dns(ground: Ground, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    return dns.query.udp(query, "127.0.0.1", port=ground.dns_port, timeout=timeout)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _post_json(ground: Ground, payload: object) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{ground.http_port}/api/login",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def _handshake(port: int, context: ssl.SSLContext, name: str = "mqtt.test") -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return str(tls.version())


def test_dns_answers_srv_and_addresses(ground: Ground) -> None:
    srv = _dns(ground, "_xmpp-client._tcp.xmpp.test", "SRV").answer[0][0]
    assert (str(srv.target), srv.port) == ("xmpp.test.", ground.xmpp_port)
    srv = _dns(ground, "_xmpps-client._tcp.xmpp.test", "SRV").answer[0][0]
    assert srv.port == ground.xmpps_port
    assert str(_dns(ground, "mqtt.test", "A").answer[0][0]) == "127.0.0.1"
    assert str(_dns(ground, "ipv6.test", "AAAA").answer[0][0]) == "::1"
    assert ground.resolver == f"127.0.0.1:{ground.dns_port}"


def test_dns_failures(ground: Ground) -> None:
    assert _dns(ground, "nope.test", "A").rcode() == dns.rcode.NXDOMAIN
    no_address = _dns(ground, "noaddr.test", "A")
    assert (no_address.rcode(), no_address.answer) == (dns.rcode.NOERROR, [])
    assert _dns(ground, "x.fail.test", "A").rcode() == dns.rcode.SERVFAIL
    assert _dns(ground, "example.com", "A").rcode() == dns.rcode.REFUSED  # nothing leaves
    with pytest.raises(dns.exception.Timeout):
        _dns(ground, "slow.deny.test", "A", timeout=0.3)


def test_mqtt_connack(ground: Ground) -> None:
    assert mqtt_connack(ground.mqtt_port, ground.user, ground.password) == CONNACK_OK
    assert mqtt_connack(ground.mqtt_port, ground.user, "wrong") == CONNACK_BAD_CREDENTIALS


def test_mqtt_tls_listeners_carry_their_certificates(ground: Ground) -> None:
    trusting = ground.client_context()
    assert _handshake(ground.mqtts_port, trusting) == "TLSv1.3"
    for port, error in [
        (ground.mqtts_expired_port, "certificate has expired"),
        (ground.mqtts_wronghost_port, "Hostname mismatch"),
        (ground.mqtts_selfsigned_port, "self-signed certificate"),
    ]:
        with pytest.raises(ssl.SSLCertVerificationError, match=error):
            _handshake(port, trusting)


def test_nginx_basic_auth(ground: Ground) -> None:
    assert http_get(ground.http_port, "/login") == 401
    assert http_get(ground.http_port, "/login", headers=_basic("alice", "wrong")) == 401
    assert http_get(ground.http_port, "/login", headers=_basic(ground.user, ground.password)) == 200
    assert (
        http_get(
            ground.https_port,
            "/login",
            tls_context=ground.client_context(),
            headers=_basic(ground.user, ground.password),
        )
        == 200
    )


def test_nginx_json_login_and_errors(ground: Ground) -> None:
    assert _post_json(ground, {"username": ground.user, "password": ground.password}) == 200
    assert _post_json(ground, {"username": ground.user, "password": "wrong"}) == 401
    assert _post_json(ground, ["not", "an", "object"]) == 401
    assert http_get(ground.http_port, "/status503") == 503
    assert http_get(ground.http_port, "/status500") == 500


def test_tls11_server_has_no_version_in_common_with_python(ground: Ground) -> None:
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        _handshake(ground.https_tls11_port, ground.client_context(), "http.test")
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{ground.https_tls11_port}",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-CAfile",
            str(ground.ca_file),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert "Protocol  : TLSv1.1" in done.stdout


def test_prosody_offers_starttls_and_direct_tls(ground: Ground) -> None:
    assert b"<starttls" in xmpp_stream_header(ground.xmpp_port)
    features = xmpp_stream_header(ground.xmpps_port, tls_context=ground.client_context())
    assert b"SCRAM-SHA-1" in features


def test_prosody_disabled_user(ground: Ground) -> None:
    # Over direct TLS: SCRAM's first message is enough to hear about the account.
    first = base64.b64encode(f"n,,n={ground.disabled_user},r=abcdefgh".encode()).decode()
    context = ground.client_context()
    with (
        socket.create_connection(("127.0.0.1", ground.xmpps_port), timeout=2) as raw,
        context.wrap_socket(raw, server_hostname="xmpp.test") as tls,
    ):
        tls.sendall(
            b"<?xml version='1.0'?><stream:stream to='xmpp.test' xmlns='jabber:client'"
            b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
        answer = b""
        while b"</stream:features>" not in answer:
            answer += tls.recv(4096)
        tls.sendall(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
            f"{first}</auth>".encode()
        )
        assert b"<account-disabled/>" in tls.recv(4096)


def test_set_password_breaks_and_mends_logins(ground: Ground) -> None:
    old = ground.password
    ground.set_password("another-Pa55word")
    try:
        assert mqtt_connack(ground.mqtt_port, ground.user, old) == CONNACK_BAD_CREDENTIALS
        assert http_get(ground.http_port, "/login", headers=_basic(ground.user, old)) == 401
        assert _post_json(ground, {"username": ground.user, "password": old}) == 401
        assert ground.password == "another-Pa55word"
    finally:
        ground.set_password(old)
    assert mqtt_connack(ground.mqtt_port, ground.user, old) == CONNACK_OK
    assert http_get(ground.http_port, "/login", headers=_basic(ground.user, old)) == 200


def _connect(port: int, timeout: float = 0.5) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=timeout).close()


def _table_exists() -> bool:
    listing = subprocess.run(
        ["nft", "list", "table", "inet", faults.TABLE], capture_output=True, timeout=10
    )
    return listing.returncode == 0


def test_drop_syn_gives_connect_timeout(ground: Ground) -> None:
    with faults.drop_syn(ground.http_port), pytest.raises(TimeoutError):
        _connect(ground.http_port, timeout=0.3)
    _connect(ground.http_port)
    assert not _table_exists()


def test_reject_gives_host_unreachable(ground: Ground) -> None:
    with faults.reject_icmp_unreachable(ground.http_port):
        with pytest.raises(OSError) as caught:
            _connect(ground.http_port)
        assert caught.value.errno == errno.EHOSTUNREACH
        _connect(ground.https_port)  # only the given port is affected
    _connect(ground.http_port)


def test_faults_are_removed_when_the_block_fails(ground: Ground) -> None:
    with pytest.raises(ZeroDivisionError), faults.drop_syn(ground.http_port):
        1 / 0  # noqa: B018
    _connect(ground.http_port)
    assert not _table_exists()

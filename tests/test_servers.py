"""The servers' servers answer as the probe tests expect, and the fault helpers bite."""

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
from devstack.servers import Servers, http_get, mqtt_connack, xmpp_stream_header

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_BAD_CREDENTIALS = b"\x20\x02\x00\x05"


def _dns(servers: Servers, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    return dns.query.udp(query, "127.0.0.1", port=servers.dns_port, timeout=timeout)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _post_json(servers: Servers, payload: object) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{servers.http_port}/api/login",
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


def test_dns_answers_srv_and_addresses(servers: Servers) -> None:
    srv = _dns(servers, "_xmpp-client._tcp.xmpp.test", "SRV").answer[0][0]
    assert (str(srv.target), srv.port) == ("xmpp.test.", servers.xmpp_port)
    srv = _dns(servers, "_xmpps-client._tcp.xmpp.test", "SRV").answer[0][0]
    assert srv.port == servers.xmpps_port
    assert str(_dns(servers, "mqtt.test", "A").answer[0][0]) == "127.0.0.1"
    assert str(_dns(servers, "ipv6.test", "AAAA").answer[0][0]) == "::1"
    assert servers.resolver == f"127.0.0.1:{servers.dns_port}"


def test_dns_failures(servers: Servers) -> None:
    assert _dns(servers, "nope.test", "A").rcode() == dns.rcode.NXDOMAIN
    no_address = _dns(servers, "noaddr.test", "A")
    assert (no_address.rcode(), no_address.answer) == (dns.rcode.NOERROR, [])
    assert _dns(servers, "x.fail.test", "A").rcode() == dns.rcode.SERVFAIL
    assert _dns(servers, "example.com", "A").rcode() == dns.rcode.REFUSED  # nothing leaves
    with pytest.raises(dns.exception.Timeout):
        _dns(servers, "slow.deny.test", "A", timeout=0.3)


def test_mqtt_connack(servers: Servers) -> None:
    assert mqtt_connack(servers.mqtt_port, servers.user, servers.password) == CONNACK_OK
    assert mqtt_connack(servers.mqtt_port, servers.user, "wrong") == CONNACK_BAD_CREDENTIALS


def test_mqtt_tls_listeners_carry_their_certificates(servers: Servers) -> None:
    trusting = servers.client_context()
    assert _handshake(servers.mqtts_port, trusting) == "TLSv1.3"
    for port, error in [
        (servers.mqtts_expired_port, "certificate has expired"),
        (servers.mqtts_wronghost_port, "Hostname mismatch"),
        (servers.mqtts_selfsigned_port, "self-signed certificate"),
    ]:
        with pytest.raises(ssl.SSLCertVerificationError, match=error):
            _handshake(port, trusting)


def test_nginx_basic_auth(servers: Servers) -> None:
    assert http_get(servers.http_port, "/login") == 401
    assert http_get(servers.http_port, "/login", headers=_basic("alice", "wrong")) == 401
    basic = _basic(servers.user, servers.password)
    assert http_get(servers.http_port, "/login", headers=basic) == 200
    assert (
        http_get(
            servers.https_port,
            "/login",
            tls_context=servers.client_context(),
            headers=_basic(servers.user, servers.password),
        )
        == 200
    )


def test_nginx_json_login_and_errors(servers: Servers) -> None:
    assert _post_json(servers, {"username": servers.user, "password": servers.password}) == 200
    assert _post_json(servers, {"username": servers.user, "password": "wrong"}) == 401
    assert _post_json(servers, ["not", "an", "object"]) == 401
    assert http_get(servers.http_port, "/status503") == 503
    assert http_get(servers.http_port, "/status500") == 500


def test_tls11_server_has_no_version_in_common_with_python(servers: Servers) -> None:
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        _handshake(servers.https_tls11_port, servers.client_context(), "http.test")
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{servers.https_tls11_port}",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-CAfile",
            str(servers.ca_file),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert "Protocol  : TLSv1.1" in done.stdout


def test_prosody_offers_starttls_and_direct_tls(servers: Servers) -> None:
    assert b"<starttls" in xmpp_stream_header(servers.xmpp_port)
    features = xmpp_stream_header(servers.xmpps_port, tls_context=servers.client_context())
    assert b"SCRAM-SHA-1" in features


def test_prosody_disabled_user(servers: Servers) -> None:
    # Over direct TLS: SCRAM's first message is enough to hear about the account.
    first = base64.b64encode(f"n,,n={servers.disabled_user},r=abcdefgh".encode()).decode()
    context = servers.client_context()
    with (
        socket.create_connection(("127.0.0.1", servers.xmpps_port), timeout=2) as raw,
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


def test_set_password_breaks_and_mends_logins(servers: Servers) -> None:
    old = servers.password
    servers.set_password("another-Pa55word")
    try:
        assert mqtt_connack(servers.mqtt_port, servers.user, old) == CONNACK_BAD_CREDENTIALS
        assert http_get(servers.http_port, "/login", headers=_basic(servers.user, old)) == 401
        assert _post_json(servers, {"username": servers.user, "password": old}) == 401
        assert servers.password == "another-Pa55word"
    finally:
        servers.set_password(old)
    assert mqtt_connack(servers.mqtt_port, servers.user, old) == CONNACK_OK
    assert http_get(servers.http_port, "/login", headers=_basic(servers.user, old)) == 200


def _connect(port: int, timeout: float = 0.5) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=timeout).close()


def _table_exists() -> bool:
    listing = subprocess.run(
        ["nft", "list", "table", "inet", faults.TABLE], capture_output=True, timeout=10
    )
    return listing.returncode == 0


def test_drop_syn_gives_connect_timeout(servers: Servers) -> None:
    with faults.drop_syn(servers.http_port), pytest.raises(TimeoutError):
        _connect(servers.http_port, timeout=0.3)
    _connect(servers.http_port)
    assert not _table_exists()


def test_reject_gives_host_unreachable(servers: Servers) -> None:
    with faults.reject_icmp_unreachable(servers.http_port):
        with pytest.raises(OSError) as caught:
            _connect(servers.http_port)
        assert caught.value.errno == errno.EHOSTUNREACH
        _connect(servers.https_port)  # only the given port is affected
    _connect(servers.http_port)


def test_faults_are_removed_when_the_block_fails(servers: Servers) -> None:
    with pytest.raises(ZeroDivisionError), faults.drop_syn(servers.http_port):
        1 / 0  # noqa: B018
    _connect(servers.http_port)
    assert not _table_exists()

"""The HTTP probe against a real nginx (Basic and JSON logins, status codes, TLS, wrong ports),
and against tiny fake servers for answers nginx is not set up to give."""

from __future__ import annotations

import time

import pytest

from devstack import fakes
from devstack.servers import Servers
from loginprobe.probes.attempt import Attempt, ProbeOptions
from loginprobe.probes.http import build_request
from loginprobe.result import Result
from loginprobe.target import parse_target
from tests.probing import check, options, phases

FAKE_PASSWORD = "fake-Pa55word-never-shown"


def sent(result: Result) -> str:
    return "\n".join(line.text for line in result.transcript if line.direction == ">")


# -- logins against nginx ----------------------------------------------------------------


async def test_http_basic_login_ok(servers: Servers) -> None:
    result = await check(f"http://alice@127.0.0.1:{servers.http_port}/login", options(servers))
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert phases(result) == [("tcp", True), ("login", True)]
    request = sent(result)
    # Control characters are shown escaped in the transcript (see Attempt.scrub).
    assert request.startswith("GET /login HTTP/1.1\\r\\n")
    assert f"Host: 127.0.0.1:{servers.http_port}\\r\\n" in request
    assert "Authorization: Basic <redacted>\\r\\n" in request
    assert "User-Agent: loginprobe/" in request and "Connection: close" in request


async def test_https_basic_login_ok_via_dns_name(servers: Servers) -> None:
    result = await check(f"https://alice@http.test:{servers.https_port}/login", options(servers))
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert phases(result) == [("dns", True), ("tcp", True), ("tls", True), ("login", True)]
    assert result.tls is not None and result.tls.verified and result.tls.alpn == "http/1.1"


async def test_https_json_login_ok(servers: Servers) -> None:
    result = await check(
        f"https://alice@http.test:{servers.https_port}/api/login?auth=json", options(servers)
    )
    assert (result.reason, result.reason.step) == ("ok", "none")
    request = sent(result)
    assert request.startswith("POST /api/login HTTP/1.1\\r\\n")
    assert "Content-Type: application/json" in request
    assert request.endswith('{"username": "alice", "password": "<redacted>"}')


async def test_basic_wrong_password_is_401(servers: Servers) -> None:
    result = await check(
        f"https://alice@http.test:{servers.https_port}/login",
        options(servers, password="wrong-one"),
    )
    assert (result.reason, result.reason.step) == ("auth_rejected", "account")
    assert result.message == "HTTP 401 Unauthorized"
    assert phases(result)[-1] == ("login", False)


async def test_json_wrong_password_is_401_with_the_servers_words(servers: Servers) -> None:
    result = await check(
        f"http://alice@127.0.0.1:{servers.http_port}/api/login?auth=json",
        options(servers, password="wrong-one"),
    )
    assert (result.reason, result.reason.step) == ("auth_rejected", "account")
    assert result.message.startswith("HTTP 401 Unauthorized")


@pytest.mark.parametrize("path", ["/login", "/api/login?auth=json"])
async def test_unknown_user(servers: Servers, path: str) -> None:
    result = await check(f"http://nobody@127.0.0.1:{servers.http_port}{path}", options(servers))
    assert (result.reason, result.reason.step) == ("auth_rejected", "account")


async def test_503_is_server_unavailable(servers: Servers) -> None:
    url = f"https://alice@http.test:{servers.https_port}/status503"
    result = await check(url, options(servers))
    assert (result.reason, result.reason.step) == ("server_unavailable", "server")
    assert result.message.startswith("HTTP 503")


async def test_500_is_server_error(servers: Servers) -> None:
    result = await check(f"http://alice@127.0.0.1:{servers.http_port}/status500", options(servers))
    assert (result.reason, result.reason.step) == ("server_error", "server")
    assert result.message == "HTTP 500 Internal Server Error"


async def test_404_names_the_path(servers: Servers) -> None:
    result = await check(f"http://alice@127.0.0.1:{servers.http_port}/nowhere", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert "login endpoint not found" in result.message


async def test_json_login_with_get_is_405(servers: Servers) -> None:
    # auth=basic (a GET) against the JSON endpoint, whose backend only takes a POST.
    result = await check(f"http://alice@127.0.0.1:{servers.http_port}/api/login", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert result.message.startswith("HTTP 405") and "?auth=basic|json" in result.message


async def test_no_common_tls_version(servers: Servers) -> None:
    result = await check(
        f"https://alice@http.test:{servers.https_tls11_port}/login", options(servers)
    )
    assert (result.reason, result.reason.step) == ("tls_version_mismatch", "config")
    assert phases(result)[-1] == ("tls", False)


# -- the right host, the wrong port ----------------------------------------------------


async def test_https_against_the_mqtts_port(servers: Servers) -> None:
    # The TLS handshake succeeds (mosquitto's certificate is valid); mosquitto then reads
    # "G" as no MQTT packet and closes without a byte. An HTTP server always answers
    # something, so the message asks whether this port serves HTTP.
    result = await check(f"https://alice@mqtt.test:{servers.mqtts_port}/login", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert phases(result) == [("dns", True), ("tcp", True), ("tls", True), ("login", False)]
    assert "does this port serve HTTP" in result.message


async def test_https_against_the_plain_http_port(servers: Servers) -> None:
    # nginx answers the ClientHello with a plain "400 Bad Request": OpenSSL's
    # WRONG_VERSION_NUMBER, which the tls phase calls a mismatch.
    result = await check(f"https://alice@127.0.0.1:{servers.http_port}/login", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")
    assert phases(result)[-1] == ("tls", False)


async def test_http_against_the_xmpp_port(servers: Servers) -> None:
    result = await check(f"http://alice@127.0.0.1:{servers.xmpp_port}/", options(servers))
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")
    assert "does not speak HTTP" in result.message


# -- fake servers ------------------------------------------------------------------------


def fake_options(timeout: float = 2.0) -> ProbeOptions:
    return ProbeOptions(password=FAKE_PASSWORD, timeout=timeout)


@pytest.mark.parametrize(
    ("reply", "reason", "step", "text"),
    [
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", "auth_not_authorized", "account", "HTTP 403 Forbidden"),
        (
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\n\r\n",
            "server_unavailable",
            "server",
            "HTTP 429 Too Many Requests (retry after 30)",
        ),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "server_error", "server", "HTTP 502 Bad Gateway"),
        (
            b"HTTP/1.1 302 Found\r\nLocation: https://sso.example/login\r\n\r\n",
            "protocol_error",
            "server",
            "redirected to https://sso.example/login; point the URL at the login endpoint",
        ),
        (
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="api"\r\n\r\n',
            "auth_mechanism_unsupported",
            "account",
            "not Basic",
        ),
        (
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="x", Basic realm="y"'
            b"\r\n\r\n",
            "auth_rejected",
            "account",
            "HTTP 401 Unauthorized",
        ),
        # No reason phrase (allowed since HTTP/1.1's RFC 9112): the standard one is used.
        (b"HTTP/1.1 401 \r\n\r\n", "auth_rejected", "account", "HTTP 401 Unauthorized"),
        (
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b'Content-Length: 27\r\n\r\n{"error": "account locked"}',
            "protocol_error",
            "server",
            'HTTP 400 Bad Request: {"error": "account locked"}',
        ),
        # A chunked body is read through its framing.
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"error": "accou\r\nb\r\nnt locked"}'
            b"\r\n0\r\n\r\n",
            "auth_not_authorized",
            "account",
            'HTTP 403 Forbidden: {"error": "account locked"}',
        ),
        (b"HTTP/1.1 200\r\n\r\n", "ok", "none", ""),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", "ok", "none", ""),
        (b"HTTP/1.1 2xx Fine\r\n\r\n", "protocol_error", "server", "malformed status line"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "protocol_mismatch", "config", "does not speak HTTP"),
    ],
)
async def test_status_codes(reply: bytes, reason: str, step: str, text: str) -> None:
    async with fakes.serve(fakes.scripted(reply)) as port:
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
    assert (result.reason, result.reason.step) == (reason, step)
    assert text in result.message


async def test_endless_body_after_200_is_not_read() -> None:
    header = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    async with fakes.serve(fakes.scripted(header, then="flood")) as port:
        start = time.monotonic()
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
        elapsed = time.monotonic() - start
    assert (result.reason, result.reason.step) == ("ok", "none")
    assert elapsed < 1.0


async def test_endless_headers_stop_at_the_limit() -> None:
    async with fakes.serve(fakes.scripted(b"HTTP/1.1 200 OK\r\nX-Pad: ", then="flood")) as port:
        start = time.monotonic()
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
        elapsed = time.monotonic() - start
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert "longer than" in result.message
    assert elapsed < 1.0


async def test_a_body_announced_but_never_sent_does_not_change_the_verdict() -> None:
    reply = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 999\r\n\r\n"
    async with fakes.serve(fakes.scripted(reply)) as port:
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
    assert (result.reason, result.reason.step) == ("auth_rejected", "account")


async def test_flood_is_a_mismatch() -> None:
    async with fakes.serve(fakes.flood) as port:
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")


async def test_garbage_is_a_mismatch() -> None:
    async with fakes.serve(fakes.garbage) as port:
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
    assert (result.reason, result.reason.step) == ("protocol_mismatch", "config")


async def test_stall_is_a_login_timeout() -> None:
    async with fakes.serve(fakes.stall) as port:
        start = time.monotonic()
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options(timeout=1.0))
        elapsed = time.monotonic() - start
    assert (result.reason, result.reason.step) == ("login_timeout", "server")
    assert elapsed < 2.0


async def test_close_mid_headers_is_a_protocol_error() -> None:
    async with fakes.serve(fakes.scripted(b"HTTP/1.1 200 OK\r\nServer: x", then="close")) as port:
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
    assert (result.reason, result.reason.step) == ("protocol_error", "server")
    assert "closed" in result.message


# -- the request itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://alice@example.net/login", "example.net"),
        ("https://alice@example.net:443/login", "example.net"),
        ("http://alice@example.net:8443/login", "example.net:8443"),
        ("http://alice@[::1]:8080/login", "[::1]:8080"),
    ],
)
def test_host_header_has_the_port_only_when_not_the_default(url: str, host: str) -> None:
    attempt = Attempt(parse_target(url), ProbeOptions(password=FAKE_PASSWORD))
    request, shown = build_request(attempt)
    assert f"\r\nHost: {host}\r\n".encode() in request
    assert FAKE_PASSWORD not in shown
    assert request.endswith(b"\r\n\r\n")


async def test_a_chunked_error_body_is_read() -> None:
    reply = (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b'10\r\n{"error": "accou\r\nb\r\nnt locked"}\r\n0\r\n\r\n'
    )
    async with fakes.serve(fakes.scripted(reply)) as port:
        result = await check(f"http://alice@127.0.0.1:{port}/login", fake_options())
    assert (result.reason, result.reason.step) == ("auth_not_authorized", "account")
    assert result.message == 'HTTP 403 Forbidden: {"error": "account locked"}'

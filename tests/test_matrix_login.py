"""The Matrix probe against a real matrix-synapse behind nginx's TLS: logins good and bad,
server discovery through .well-known, rate limiting, and a web server that is no Matrix
homeserver; each asserting the reason, its step, and where the attempt stopped."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack import fakes
from devstack.certs import PKI
from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for
from devstack.servers import Servers
from devstack.synapse import Synapse
from loginprobe.contract import Reason, Step
from loginprobe.probes.matrix import Answer, judge
from loginprobe.result import Result
from tests.probing import check, options, phases

LOGGED_IN = [("dns", True), ("tcp", True), ("tls", True), ("login", True)]
REFUSED = [("dns", True), ("tcp", True), ("tls", True), ("login", False)]


def notes(result: Result) -> str:
    return "\n".join(line.text for line in result.transcript)


def assert_no_token(result: Result) -> None:
    """Synapse's access tokens start syt_: none may reach the output."""
    assert "syt_" not in json.dumps(result.to_dict(transcript=True))


def _get(servers: Servers, port: int, path: str) -> tuple[int, Any]:
    ctx = servers.client_context()
    ctx.check_hostname = False  # by address: the certificate's names are checked elsewhere
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except ssl.SSLError:
        raise


# -- the devstack ------------------------------------------------------------------------


def test_synapse_serves_the_client_api_behind_tls(servers: Servers, synapse: Synapse) -> None:
    status, versions = _get(servers, synapse.port, "/_matrix/client/versions")
    assert status == 200 and "v1.1" in versions["versions"]
    status, wellknown = _get(servers, synapse.delegating_port, "/.well-known/matrix/client")
    assert wellknown == {"m.homeserver": {"base_url": synapse.base_url}}
    assert _get(servers, synapse.bare_port, "/.well-known/matrix/client")[0] == 404
    assert _get(servers, synapse.delegating_port, "/_matrix/client/versions")[0] == 404


# -- logins ------------------------------------------------------------------------------


async def test_good_login_logs_out_again(servers: Servers, synapse: Synapse) -> None:
    before = synapse.devices("alice")
    result = await check(f"matrix://alice@matrix.test:{synapse.port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.OK, Step.NONE)
    assert result.protocol == "matrix" and result.message == "logged in"
    assert phases(result) == LOGGED_IN
    assert result.tls is not None and result.tls.verified
    text = notes(result)
    assert "logged in as @alice:matrix.test" in text and "logged out" in text
    assert '"password": "<redacted>"' in text and "Bearer <redacted>" in text
    assert '"access_token": "<redacted>"' in text
    assert_no_token(result)
    # No device piles up: the login's device is gone again.
    assert synapse.devices("alice") == before
    # The logout came after the verdict: the attempt ends before the last transcript lines.
    logged_out = next(t for t in result.transcript if t.text == "logged out")
    assert result.duration_ns < logged_out.offset_ns


async def test_one_connection_carries_discovery_versions_and_login(
    servers: Servers, synapse: Synapse
) -> None:
    result = await check(f"matrix://alice@matrix.test:{synapse.port}", options(servers))
    sent = [t.text.split(" HTTP/1.1")[0] for t in result.transcript if t.direction == ">"]
    assert sent == [
        "GET /.well-known/matrix/client",
        "GET /_matrix/client/versions",
        "POST /_matrix/client/v3/login",
        "POST /_matrix/client/v3/logout",
    ]
    assert notes(result).count("TCP connected to") == 1  # no second connection


async def test_wrong_password(servers: Servers, synapse: Synapse) -> None:
    result = await check(f"matrix://alice@matrix.test:{synapse.port}",
                         options(servers, password="Wr0ng-Pa55word"))
    assert (result.reason, result.reason.step) == (Reason.AUTH_REJECTED, Step.ACCOUNT)
    assert result.message == "HTTP 403 Forbidden M_FORBIDDEN: Invalid username or password"
    assert phases(result) == REFUSED


async def test_unknown_user_is_refused_like_a_wrong_password(
    servers: Servers, synapse: Synapse
) -> None:
    result = await check(f"matrix://nobody@matrix.test:{synapse.port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.AUTH_REJECTED, Step.ACCOUNT)
    assert "M_FORBIDDEN" in result.message
    assert phases(result) == REFUSED


async def test_deactivated_account(servers: Servers, synapse: Synapse) -> None:
    result = await check(f"matrix://{synapse.deactivated_user}@matrix.test:{synapse.port}",
                         options(servers))
    assert (result.reason, result.reason.step) == (Reason.AUTH_NOT_AUTHORIZED, Step.ACCOUNT)
    assert result.message == (
        "HTTP 403 Forbidden M_USER_DEACTIVATED: This account has been deactivated"
    )
    assert phases(result) == REFUSED


async def test_locked_account(servers: Servers, synapse: Synapse) -> None:
    result = await check(f"matrix://{synapse.locked_user}@matrix.test:{synapse.port}",
                         options(servers))
    assert (result.reason, result.reason.step) == (Reason.AUTH_NOT_AUTHORIZED, Step.ACCOUNT)
    assert result.message == "HTTP 401 Unauthorized M_USER_LOCKED: User account has been locked"
    assert phases(result) == REFUSED


def _answer(status: int, body: dict[str, Any], **headers: str) -> tuple[Answer, dict[str, Any]]:
    return Answer(status, "", headers, json.dumps(body).encode()), body


@pytest.mark.parametrize(("status", "body", "headers", "reason", "message"), [
    # A server that takes no passwords (SSO only): synapse with password logins off.
    (400, {"errcode": "M_UNKNOWN", "error": "Password login has been disabled."}, {},
     Reason.AUTH_MECHANISM_UNSUPPORTED, "HTTP 400 M_UNKNOWN: Password login has been disabled."),
    (403, {"errcode": "M_RESOURCE_LIMIT_EXCEEDED", "error": "MAU limit"}, {},
     Reason.SERVER_UNAVAILABLE, "HTTP 403 M_RESOURCE_LIMIT_EXCEEDED: MAU limit"),
    (429, {"errcode": "M_LIMIT_EXCEEDED"}, {"retry-after": "7"},
     Reason.SERVER_UNAVAILABLE, "HTTP 429 M_LIMIT_EXCEEDED (Retry-After: 7 s)"),
    (503, {}, {}, Reason.SERVER_UNAVAILABLE, "HTTP 503"),
    (500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}, {},
     Reason.SERVER_ERROR, "HTTP 500 M_UNKNOWN: Internal server error"),
    (401, {"errcode": "M_SOMETHING_NEW"}, {}, Reason.AUTH_REJECTED, "HTTP 401 M_SOMETHING_NEW"),
])
def test_matrix_errors_the_test_homeserver_does_not_give(
    status: int, body: dict[str, Any], headers: dict[str, str], reason: Reason, message: str
) -> None:
    assert judge(*_answer(status, body, **headers)) == (reason, message)


async def test_rate_limited_logins_quote_the_retry_delay(servers: Servers) -> None:
    # Its own homeserver: two failed logins per account, then M_LIMIT_EXCEEDED for ~100 s.
    with Synapse(servers, failed_burst=2, refill_per_second=0.01) as limited:
        url = f"matrix://alice@matrix.test:{limited.port}"
        wrong = options(servers, password="Wr0ng-Pa55word")
        first = [await check(url, wrong) for _ in range(2)]
        assert [r.reason for r in first] == [Reason.AUTH_REJECTED] * 2
        result = await check(url, wrong)
    assert (result.reason, result.reason.step) == (Reason.SERVER_UNAVAILABLE, Step.SERVER)
    # The status line's phrase is synapse's own ("Unknown Status"), passed on by nginx.
    assert result.message.startswith("HTTP 429 ")
    assert " M_LIMIT_EXCEEDED: Too Many Requests (retry_after_ms " in result.message
    assert result.message.endswith(" s)")
    assert phases(result) == REFUSED


# -- discovery ---------------------------------------------------------------------------


async def test_well_known_names_a_homeserver_elsewhere(servers: Servers, synapse: Synapse) -> None:
    # http.test's web server publishes only a .well-known naming matrix.test:{port}.
    before = synapse.devices("alice")
    result = await check(f"matrix://alice@http.test:{synapse.delegating_port}",
                         options(servers))
    assert (result.reason, result.reason.step) == (Reason.OK, Step.NONE)
    assert phases(result) == LOGGED_IN
    text = notes(result)
    assert f"names the homeserver https://matrix.test:{synapse.port}" in text
    assert f"connected to https://matrix.test:{synapse.port}: dns " in text
    assert "tcp " in text and "tls " in text
    hosts = [t.text.split("Host: ")[1].split("\\r\\n")[0]
             for t in result.transcript if t.direction == ">"]
    assert hosts[0] == f"http.test:{synapse.delegating_port}"
    assert set(hosts[1:]) == {f"matrix.test:{synapse.port}"}
    assert synapse.devices("alice") == before


async def test_a_homeserver_elsewhere_that_refuses_connections(
    servers: Servers, synapse: Synapse
) -> None:
    port = synapse.stray_port
    result = await check(f"matrix://alice@matrix.test:{port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.TCP_REFUSED, Step.NETWORK)
    # The server named in the URL answered: the failure is at the homeserver it names.
    assert phases(result) == REFUSED
    assert result.message.startswith("https://matrix.test:")
    assert result.findings[0].startswith(
        f"https://matrix.test:{port}/.well-known/matrix/client sends clients to "
        "https://matrix.test:"
    )
    assert result.hint.startswith(result.findings[0][:1].upper() + result.findings[0][1:])


async def test_no_well_known_means_the_server_is_its_own_homeserver(
    servers: Servers, synapse: Synapse
) -> None:
    result = await check(f"matrix://alice@matrix.test:{synapse.bare_port}", options(servers))
    assert result.reason is Reason.OK
    assert "no /.well-known/matrix/client (404)" in notes(result)


async def test_a_well_known_that_is_not_json(servers: Servers, synapse: Synapse) -> None:
    result = await check(f"matrix://alice@matrix.test:{synapse.broken_port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.PROTOCOL_ERROR, Step.SERVER)
    assert result.message.startswith(
        f"https://matrix.test:{synapse.broken_port}/.well-known/matrix/client has no JSON "
        "object (text/html): a client stops there"
    )
    assert phases(result) == REFUSED


async def test_a_web_server_that_is_not_matrix(servers: Servers, synapse: Synapse) -> None:
    # nginx answers 404 (HTML) to both the .well-known and /_matrix/client/versions.
    port = servers.https_port
    result = await check(f"matrix://alice@http.test:{port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.PROTOCOL_MISMATCH, Step.CONFIG)
    assert result.message == (
        f"GET https://http.test:{port}/_matrix/client/versions answered HTTP 404 Not Found "
        "(text/html), not a Matrix versions list: no Matrix homeserver there"
    )
    assert result.findings == [
        f"port {port} speaks HTTP over TLS, but https://http.test:{port} serves no Matrix "
        "client API: use the homeserver's name, or publish its /.well-known/matrix/client "
        "there"
    ]
    assert result.hint.startswith(f"Port {port} speaks HTTP over TLS, but ")
    assert phases(result) == REFUSED
    # The password was never sent: the server failed before the login request.
    assert "v3/login" not in notes(result)


async def test_a_homeserver_down_behind_its_proxy(servers: Servers, synapse: Synapse) -> None:
    # nginx answers 502 for a homeserver that is gone: a server error, not a wrong URL.
    port = synapse.gone_port
    result = await check(f"matrix://alice@matrix.test:{port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.SERVER_ERROR, Step.SERVER)
    assert result.message == (
        f"GET https://matrix.test:{port}/_matrix/client/versions answered HTTP 502 Bad Gateway"
    )
    assert phases(result) == REFUSED


# -- downstream: an assigned matrix:// check through a real agent and collector ----------


def test_an_assigned_matrix_check_reaches_the_collectors_metrics(
    servers: Servers, synapse: Synapse, tmp_path: Path
) -> None:
    pki = PKI(tmp_path / "pki")
    (tmp_path / "pw").write_text(synapse.password + "\n", encoding="utf-8")
    token, token_hash = new_token()
    common = {"interval": "2s", "timeout": "2s", "password_ref": "matrix",
              "ca_file": str(servers.ca_file), "resolver": servers.resolver}
    checks = [
        {"name": "matrix-login", "url": f"matrix://alice@matrix.test:{synapse.port}", **common},
        {"name": "matrix-deactivated",
         "url": f"matrix://{synapse.deactivated_user}@matrix.test:{synapse.port}", **common},
    ]
    settings = collector_config(tmp_path / "c", pki=pki, checks=checks,
                                agents=[{"id": "mx", "token_sha256": token_hash}])
    collector = Collector(tmp_path / "c", settings, pki).start_healthy()
    agent = Agent(tmp_path / "a", collector, token=token,
                  passwords={"matrix": {"file": str(tmp_path / "pw")}})
    try:
        agent.start()

        def reasons() -> set[tuple[str, str]]:
            return {(line["check"], line["result"]["reason"]) for line in collector.results()}

        wait_for("a result of each matrix check", lambda: {
            ("matrix-login", "ok"), ("matrix-deactivated", "auth_not_authorized"),
        } <= reasons(), 30)
        samples = collector.metrics()
        assert agent.stop() == 0
    finally:
        for proc in (agent, collector):
            if proc.running():
                proc.kill()
    assert reasons() == {("matrix-login", "ok"), ("matrix-deactivated", "auth_not_authorized")}
    ok = [k for k, v in samples.items() if k.startswith("loginprobe_attempts_total{")
          and 'check="matrix-login"' in k and v > 0]
    assert ok and all('protocol="matrix"' in k and 'reason="ok"' in k for k in ok)
    phases_seen = {k.split('phase="')[1].split('"')[0] for k in samples
                   if k.startswith("loginprobe_phase_duration_seconds_count{")
                   and 'check="matrix-login"' in k}
    assert phases_seen == {"dns", "tcp", "tls", "login"}
    # Neither the password nor an access token anywhere the results went.
    spool = b"".join(p.read_bytes() for p in (tmp_path / "a").glob("spool.db*"))
    for text in (spool, agent.output().encode(), collector.output().encode(),
                 (tmp_path / "c" / "results.jsonl").read_bytes()):
        assert synapse.password.encode() not in text and b"syt_" not in text


# -- hostile or broken servers (faults synapse and nginx do not produce) ----------------

_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


async def test_a_server_that_never_answers_is_a_login_timeout_saying_what_it_waited_for(
    servers: Servers,
) -> None:
    async with fakes.serve(fakes.stall, servers.server_context()) as port:
        result = await check(f"matrix://alice@127.0.0.1:{port}",
                             options(servers, timeout=1.0))
    assert (result.reason, result.reason.step) == (Reason.LOGIN_TIMEOUT, Step.SERVER)
    assert result.message.endswith(
        f"waiting for the answer to GET https://127.0.0.1:{port}/.well-known/matrix/client"
    )


async def test_an_endless_answer_is_cut_off(servers: Servers) -> None:
    # A .well-known that announces no length and never ends: read up to the cap, no further.
    head = _OK_HEAD + b"Connection: close\r\n\r\n"
    handler = fakes.scripted(head, then="flood")
    async with fakes.serve(handler, servers.server_context()) as port:
        result = await check(f"matrix://alice@127.0.0.1:{port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.PROTOCOL_ERROR, Step.SERVER)
    assert result.message == "an answer longer than 65536 bytes; refused"


async def test_deeply_nested_json_is_not_json_to_us(servers: Servers) -> None:
    body = b"[" * 50_000
    answer = _OK_HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    async with fakes.serve(fakes.scripted(answer), servers.server_context()) as port:
        result = await check(f"matrix://alice@127.0.0.1:{port}", options(servers))
    assert (result.reason, result.reason.step) == (Reason.PROTOCOL_ERROR, Step.SERVER)
    assert "has no JSON object (application/json)" in result.message

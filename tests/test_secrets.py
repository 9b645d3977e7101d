"""The password never appears in any output: every failure case (and the good logins) run
through the real `loginprobe check` process, human and JSON, with the transcript on."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Awaitable, Callable

import pytest

from devstack import fakes
from devstack.servers import Servers
from devstack.synapse import Synapse
from devstack.websocket import WsServers

WRONG = "Wr0ng-but-still-Secret"


def forms(secret: str, user: str = "alice") -> list[str]:
    """The password as it may travel: plain, in a Basic header, in a SASL PLAIN payload."""
    return [
        secret,
        base64.b64encode(f"{user}:{secret}".encode()).decode(),
        base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),
    ]


async def run_cli(args: list[str], password: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loginprobe.cli",
        "check",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LOGINPROBE_PASSWORD": password},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def cases(g: Servers, hs: Synapse) -> list[tuple[str, str, str]]:
    """(url, password, expected reason) across protocols and failure kinds."""
    pw = g.password
    return [
        (f"matrix://alice@matrix.test:{hs.port}", pw, "ok"),
        (f"matrix://alice@http.test:{hs.delegating_port}", pw, "ok"),
        (f"matrix://alice@matrix.test:{hs.port}", WRONG, "auth_rejected"),
        (f"matrix://nobody@matrix.test:{hs.port}", WRONG, "auth_rejected"),
        (f"matrix://{hs.deactivated_user}@matrix.test:{hs.port}", pw, "auth_not_authorized"),
        (f"matrix://alice@http.test:{g.https_port}", pw, "protocol_mismatch"),
        ("xmpp://alice@xmpp.test", pw, "ok"),
        ("xmpps://alice@xmpp.test", pw, "ok"),
        (f"mqtts://alice@mqtt.test:{g.mqtts_port}?version=5", pw, "ok"),
        (f"https://alice@http.test:{g.https_port}/login", pw, "ok"),
        (f"https://alice@http.test:{g.https_port}/api/login?auth=json", pw, "ok"),
        ("xmpp://alice@xmpp.test", WRONG, "auth_rejected"),
        ("xmpps://nobody@xmpp.test", WRONG, "auth_rejected"),
        ("xmpp://bob@xmpp.test", WRONG, "auth_not_authorized"),
        (f"mqtt://alice@mqtt.test:{g.mqtt_port}", WRONG, "auth_rejected"),
        (f"mqtt://alice@mqtt.test:{g.mqtt_port}?version=5", WRONG, "auth_rejected"),
        (f"http://alice@http.test:{g.http_port}/login", WRONG, "auth_rejected"),
        (f"https://alice@http.test:{g.https_port}/api/login?auth=json", WRONG, "auth_rejected"),
        (f"https://alice@http.test:{g.https_port}/status503", pw, "server_unavailable"),
        (f"https://alice@http.test:{g.https_port}/status500", pw, "server_error"),
        ("xmpp://alice@nosuch.test", pw, "dns_nxdomain"),
        (f"mqtt://alice@x.fail.test:{g.mqtt_port}", pw, "dns_servfail"),
        (f"mqtts://alice@mqtt.test:{g.mqtts_expired_port}", pw, "tls_cert_expired"),
        (f"mqtts://alice@mqtt.test:{g.mqtts_wronghost_port}", pw, "tls_hostname_mismatch"),
        (f"mqtts://alice@mqtt.test:{g.mqtts_selfsigned_port}", pw, "tls_cert_untrusted"),
        (f"https://alice@http.test:{g.https_tls11_port}/login", pw, "tls_version_mismatch"),
        (f"xmpp://alice@xmpp.test:{g.http_port}?host=127.0.0.1", pw, "protocol_mismatch"),
        (f"mqtt://alice@mqtt.test:{g.http_port}", pw, "protocol_mismatch"),
        # The follow-up finds what these ports speak; its findings are output too.
        (f"mqtt://alice@mqtt.test:{g.mqtts_port}", pw, "protocol_mismatch"),
        (f"mqtts://alice@mqtt.test:{g.mqtt_port}", pw, "protocol_mismatch"),
        (f"https://alice@http.test:{g.mqtt_port}/login", pw, "protocol_mismatch"),
    ]


async def test_no_output_ever_shows_the_password(servers: Servers, synapse: Synapse) -> None:
    common = ["--resolver", servers.resolver, "--ca-file", str(servers.ca_file), "--verbose"]
    slots = asyncio.Semaphore(4)

    async def one(url: str, password: str, reason: str, fmt: list[str]) -> str:
        async with slots:
            code, output = await run_cli([url, *common, *fmt], password)
        assert reason in output, (url, output)
        assert code == (0 if reason == "ok" else 1)
        for secret in forms(password, user=url.split("//")[1].split("@")[0]):
            assert secret not in output, (url, fmt)
        assert "syt_" not in output, (url, fmt)  # nor a Matrix access token
        return reason

    seen = await asyncio.gather(
        *(one(*case, fmt) for case in cases(servers, synapse) for fmt in ([], ["--json"]))
    )
    assert len(set(seen)) >= 12


Fake = Callable[..., Awaitable[None]]


@pytest.mark.parametrize(
    ("handler", "url", "reason"),
    [
        (fakes.stall, "mqtt://alice@127.0.0.1:{port}", "login_timeout"),
        (fakes.garbage, "xmpp://alice@xmpp.test:{port}?host=127.0.0.1", "protocol_mismatch"),
        (fakes.flood, "http://alice@127.0.0.1:{port}/login", "protocol_mismatch"),
        (fakes.scripted(b"\x20\x02\x00\x04"), "mqtt://alice@127.0.0.1:{port}", "auth_rejected"),
    ],
)
async def test_hostile_servers_do_not_see_the_password_echoed(
    handler: fakes.Handler, url: str, reason: str
) -> None:
    async with fakes.serve(handler) as port:
        code, output = await run_cli([url.format(port=port), "--timeout", "1", "-v"], WRONG)
    assert code == 1 and reason in output
    for secret in forms(WRONG):
        assert secret not in output


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://alice@127.0.0.1:{port}",
        "mqtt://alice@127.0.0.1:{port}?version=5",
        "xmpp://alice@xmpp.test:{port}?host=127.0.0.1",
        "http://alice@127.0.0.1:{port}/login",
        "http://alice@127.0.0.1:{port}/login?auth=json",
        "matrix://alice@127.0.0.1:{port}",
    ],
)
async def test_the_follow_up_never_sends_the_password(url: str) -> None:
    # Every connection is reset after its first bytes: the attempt's is suspicious, so the
    # follow-up opens its own, and the server records what each one sent.
    seen: list[bytearray] = []
    async with fakes.serve(fakes.recording(fakes.reset, seen)) as port:
        code, output = await run_cli([url.format(port=port), "--timeout", "2", "-v"], WRONG)
    assert code == 1 and "follow-up" in output
    follow_ups = [bytes(b) for b in seen[1:]]
    assert follow_ups and any(follow_ups), output
    for sent in follow_ups:
        for secret in forms(WRONG):
            assert secret.encode() not in sent


async def test_no_websocket_output_shows_the_password(
    servers: Servers, ws_servers: WsServers
) -> None:
    """The same promise over WebSocket (xmpp+ws, mqtt+ws), through nginx and direct."""
    w, pw = ws_servers, servers.password
    cases = [
        (f"xmpp+wss://alice@xmpp.test:{w.proxy_https_port}", pw, "ok"),
        (f"xmpp+ws://alice@xmpp.test:{w.xmpp_ws_port}/xmpp-websocket", pw, "ok"),
        (f"mqtt+wss://alice@mqtt.test:{w.proxy_https_port}?version=5", pw, "ok"),
        (f"mqtt+ws://alice@mqtt.test:{w.mqtt_ws_port}", pw, "ok"),
        (f"xmpp+wss://alice@xmpp.test:{w.xmpp_wss_port}/xmpp-websocket", WRONG, "auth_rejected"),
        (f"xmpp+ws://nobody@xmpp.test:{w.proxy_http_port}", WRONG, "auth_rejected"),
        (f"mqtt+wss://alice@mqtt.test:{w.mqtt_wss_port}", WRONG, "auth_rejected"),
        (f"mqtt+ws://nobody@mqtt.test:{w.proxy_http_port}/mqtt", WRONG, "auth_rejected"),
        (f"xmpp+wss://alice@xmpp.test:{w.proxy_https_port}/strip/xmpp-websocket", pw,
         "protocol_mismatch"),
        (f"mqtt+wss://alice@mqtt.test:{w.proxy_https_port}/old/mqtt", pw, "protocol_mismatch"),
        (f"mqtt+ws://alice@mqtt.test:{servers.http_port}/", pw, "protocol_mismatch"),
    ]
    common = ["--resolver", servers.resolver, "--ca-file", str(servers.ca_file), "--verbose"]
    slots = asyncio.Semaphore(4)

    async def one(url: str, password: str, reason: str, fmt: list[str]) -> None:
        async with slots:
            code, output = await run_cli([url, *common, *fmt], password)
        assert reason in output, (url, output)
        assert code == (0 if reason == "ok" else 1)
        for secret in forms(password, user=url.split("//")[1].split("@")[0]):
            assert secret not in output, (url, fmt)

    await asyncio.gather(*(one(*case, fmt) for case in cases for fmt in ([], ["--json"])))
    # A server that closes the WebSocket with our password as its reason: quoted, redacted.
    handler = fakes.websocket(fakes.close_frame(1008, f"bad password {WRONG}"))
    async with fakes.serve(handler) as port:
        code, output = await run_cli(
            [f"mqtt+ws://alice@127.0.0.1:{port}", "--timeout", "2", "-v"], WRONG
        )
    assert code == 1 and "auth_not_authorized" in output and "code 1008" in output
    for secret in forms(WRONG):
        assert secret not in output

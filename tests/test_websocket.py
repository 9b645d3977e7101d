"""XMPP and MQTT over WebSocket against real prosody (mod_websocket), mosquitto (websockets
listeners) and nginx proxying both: good logins direct and through the proxy, with and
without TLS, XEP-0156 discovery, and every way the WebSocket path goes wrong, each with its
reason, step and the finding that leads its hint."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from devstack import fakes
from devstack.servers import Servers
from devstack.websocket import WsServers
from loginprobe.contract import Reason, Step
from loginprobe.probes import websocket, xmpp_ws
from loginprobe.result import Result
from tests.probing import check, closed_port, options, phases

WS = [("dns", True), ("tcp", True), ("upgrade", True), ("login", True)]
WSS = [("dns", True), ("tcp", True), ("tls", True), ("upgrade", True), ("login", True)]


def _url(template: str, ws: WsServers, g: Servers) -> str:
    return template.format(**ws.ports(), http_port=g.http_port, xmpp_port=g.xmpp_port)


async def _check(template: str, ws: WsServers, g: Servers, **opts: object) -> Result:
    return await check(_url(template, ws, g), options(g, **opts))


def _assert(result: Result, reason: Reason, step: Step, finding: str | None = None) -> None:
    assert (result.reason, result.reason.step) == (reason, step), result.message
    if finding is not None:
        assert result.findings and finding in result.findings[0], result.findings
        assert result.hint.startswith(result.findings[0][:1].upper())


@pytest.mark.parametrize(
    ("template", "want"),
    [
        # Direct to the servers.
        ("xmpp+ws://alice@xmpp.test:{xmpp_ws_port}/xmpp-websocket", WS),
        ("xmpp+wss://alice@xmpp.test:{xmpp_wss_port}/xmpp-websocket", WSS),
        ("mqtt+ws://alice@mqtt.test:{mqtt_ws_port}", WS),  # the default path, /mqtt
        ("mqtt+wss://alice@mqtt.test:{mqtt_wss_port}/mqtt?version=5", WSS),
        # Through nginx; XMPP's endpoint discovered from host-meta (XEP-0156).
        ("xmpp+ws://alice@xmpp.test:{proxy_http_port}", WS),
        ("xmpp+wss://alice@xmpp.test:{proxy_https_port}", WSS),
        ("xmpp+wss://alice@xmpp.test:{proxy_https_port}/xmpp-websocket", WSS),
        ("mqtt+ws://alice@mqtt.test:{proxy_http_port}/mqtt", WS),
        ("mqtt+wss://alice@mqtt.test:{proxy_https_port}", WSS),
    ],
)
async def test_good_logins(
    template: str, want: list[tuple[str, bool]], ws_servers: WsServers, servers: Servers
) -> None:
    result = await _check(template, ws_servers, servers)
    assert result.reason is Reason.OK, result.message
    assert phases(result) == want
    assert result.protocol in ("xmpp+ws", "mqtt+ws")
    if "xmpp" in template:
        assert any("logged in as alice@xmpp.test/" in t.text for t in result.transcript)
    if template.endswith("{proxy_https_port}") and "xmpp" in template:
        assert any("XEP-0156" in t.text for t in result.transcript)
        assert result.tls is not None and result.tls.verified


@pytest.mark.parametrize(
    "template",
    [
        "xmpp+wss://{user}@xmpp.test:{proxy_https_port}/xmpp-websocket",
        "xmpp+ws://{user}@xmpp.test:{xmpp_ws_port}/xmpp-websocket",
        "mqtt+wss://{user}@mqtt.test:{proxy_https_port}/mqtt",
        "mqtt+ws://{user}@mqtt.test:{mqtt_ws_port}/mqtt?version=5",
    ],
)
@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("nobody", None)])
async def test_wrong_password_and_unknown_user(
    template: str, user: str, password: str | None, ws_servers: WsServers, servers: Servers
) -> None:
    url = template.replace("{user}", user)
    result = await _check(url, ws_servers, servers, password=password or servers.password)
    _assert(result, Reason.AUTH_REJECTED, Step.ACCOUNT)
    assert [name for name, _ in phases(result)][-2:] == ["upgrade", "login"]


async def test_a_proxy_that_strips_the_upgrade_header(
    ws_servers: WsServers, servers: Servers
) -> None:
    # nginx relays prosody's 101 without switching to a tunnel, then hangs up.
    result = await _check(
        "xmpp+wss://alice@xmpp.test:{proxy_https_port}/strip/xmpp-websocket", ws_servers, servers
    )
    _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "right after the upgrade")
    assert "proxy_set_header Upgrade" in result.hint
    # mosquitto hangs up on the plain GET: nginx says 502.
    result = await _check(
        "mqtt+wss://alice@mqtt.test:{proxy_https_port}/strip/mqtt", ws_servers, servers
    )
    _assert(result, Reason.SERVER_ERROR, Step.SERVER, "does not pass the Upgrade")
    assert ("upgrade", False) in phases(result)


async def test_a_moved_path(ws_servers: WsServers, servers: Servers) -> None:
    for template, new in (
        ("xmpp+wss://alice@xmpp.test:{proxy_https_port}/old/xmpp-websocket", "/xmpp-websocket"),
        ("mqtt+ws://alice@mqtt.test:{proxy_http_port}/old/mqtt", "/mqtt"),
    ):
        result = await _check(template, ws_servers, servers)
        _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "has moved to")
        assert new in result.findings[0] and "301" in result.message
        assert phases(result)[-1] == ("upgrade", False)


async def test_a_wrong_path(ws_servers: WsServers, servers: Servers) -> None:
    result = await _check("mqtt+wss://alice@mqtt.test:{proxy_https_port}/nope", ws_servers, servers)
    _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "nothing is served at /nope")
    assert "HTTP 404" in result.message


async def test_a_plain_http_server_on_the_websocket_port(
    ws_servers: WsServers, servers: Servers
) -> None:
    # nginx without any WebSocket: "/" is a plain page, /mqtt does not exist.
    result = await _check("mqtt+ws://alice@mqtt.test:{http_port}/", ws_servers, servers)
    _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "a plain HTTP answer")
    assert "HTTP 200" in result.message
    result = await _check("mqtt+ws://alice@mqtt.test:{http_port}", ws_servers, servers)
    _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "nothing is served at /mqtt")


async def test_xmpp_without_websocket_on_the_port(ws_servers: WsServers, servers: Servers) -> None:
    result = await _check(
        "xmpp+ws://alice@xmpp.test:{xmpp_port}/xmpp-websocket", ws_servers, servers
    )
    _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "speaks XMPP: use xmpp://")


async def test_the_wrong_subprotocol(ws_servers: WsServers, servers: Servers) -> None:
    # prosody answers an upgrade that does not ask for "xmpp" with 501.
    result = await _check(
        "mqtt+wss://alice@mqtt.test:{proxy_https_port}/xmpp-websocket", ws_servers, servers
    )
    _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "does not speak the 'mqtt'")
    for agreed, said in (("", "no subprotocol"), ("mqttv3.1", "'mqttv3.1'")):
        async with fakes.serve(fakes.websocket(subprotocol=agreed)) as port:
            result = await check(f"mqtt+ws://alice@127.0.0.1:{port}", options(servers))
        _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "does not speak 'mqtt'")
        assert said in result.message
        assert phases(result)[-1] == ("upgrade", False)


async def test_no_host_meta(ws_servers: WsServers, servers: Servers) -> None:
    # prosody's own HTTP port publishes no host-meta: discovery (the dns phase) says so.
    result = await _check("xmpp+ws://alice@xmpp.test:{xmpp_ws_port}", ws_servers, servers)
    _assert(result, Reason.PROTOCOL_MISMATCH, Step.CONFIG, "no host-meta (XEP-0156)")
    assert phases(result) == [("dns", False)]


async def test_discovery_that_cannot_connect(servers: Servers) -> None:
    result = await check(f"xmpp+wss://alice@xmpp.test:{closed_port()}", options(servers))
    _assert(result, Reason.TCP_REFUSED, Step.NETWORK)
    assert result.message.startswith("host-meta discovery at https://xmpp.test:")
    assert phases(result) == [("dns", False)]


async def test_discovery_of_a_hostile_host_meta(servers: Servers) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/xrd+xml\r\n\r\n<XRD>"
    async with fakes.serve(fakes.scripted(head, then="flood")) as port:
        result = await check(f"xmpp+ws://alice@xmpp.test:{port}", options(servers, timeout=3))
    _assert(result, Reason.PROTOCOL_ERROR, Step.SERVER)
    assert "host-meta" in result.message and "refused" in result.message


@pytest.mark.parametrize(
    ("code", "text", "reason"),
    [
        (1013, "try again later", Reason.SERVER_UNAVAILABLE),
        (1008, "origin not allowed", Reason.AUTH_NOT_AUTHORIZED),
        (1011, "", Reason.SERVER_ERROR),
        (4001, "custom", Reason.PROTOCOL_ERROR),
    ],
)
async def test_a_close_frame_is_quoted(
    code: int, text: str, reason: Reason, servers: Servers
) -> None:
    handler = fakes.websocket(fakes.close_frame(code, text), subprotocol="xmpp")
    async with fakes.serve(handler) as port:
        result = await check(
            f"xmpp+ws://alice@xmpp.test:{port}/xmpp-websocket", options(servers)
        )
    assert (result.reason, result.reason.step) == (reason, reason.step)
    assert f"code {code}" in result.message
    assert (repr(text) if text else "no reason given") in result.message
    assert phases(result)[-1] == ("login", False)


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (bytes([0x82, 0x82, 1, 2, 3, 4, 0, 0]), "masked frame"),
        (bytes([0x82, 0x7F]) + (1 << 40).to_bytes(8, "big"), "announcing"),
        (bytes([0xC2, 0x02, 0x20, 0x02]), "reserved bits"),
        (bytes([0x83, 0x00]), "reserved opcode"),
        (bytes([0x89, 0x7E, 0x01, 0x00]) + b"x" * 256, "control frame"),
    ],
)
async def test_hostile_frames(frame: bytes, words: str, servers: Servers) -> None:
    async with fakes.serve(fakes.websocket(frame)) as port:
        result = await check(f"mqtt+ws://alice@127.0.0.1:{port}", options(servers, timeout=2))
    _assert(result, Reason.PROTOCOL_ERROR, Step.SERVER)
    assert words in result.message


async def test_pings_and_fragments_on_the_way(servers: Servers) -> None:
    # A ping before the CONNACK (answered with a pong) and the CONNACK in two fragments.
    ping = bytes([0x89, 0x02]) + b"hi"
    connack = bytes([0x02, 0x01, 0x20]) + bytes([0x80, 0x03, 0x02, 0x00, 0x00])
    seen: list[bytearray] = []
    handler = fakes.recording(fakes.websocket(ping + connack), seen)
    async with fakes.serve(handler) as port:
        result = await check(f"mqtt+ws://alice@127.0.0.1:{port}", options(servers))
        for _ in range(100):  # until the server has read our close frame
            if seen and bytes([0x88]) in seen[0][-16:]:
                break
            await asyncio.sleep(0.02)
    assert result.reason is Reason.OK, result.message
    assert any("ping (2 bytes); pong sent" in t.text for t in result.transcript)
    # The client's frames after the upgrade: CONNECT, pong, DISCONNECT, close; all masked.
    sent = bytes(seen[0])
    frames = sent[sent.index(b"\r\n\r\n") + 4 :]
    opcodes = []
    while frames:
        length = frames[1] & 0x7F
        assert frames[1] & 0x80
        opcodes.append(frames[0] & 0x0F)
        frames = frames[2 + 4 + length :]
    assert opcodes == [websocket.OP_BINARY, websocket.OP_PONG, websocket.OP_BINARY,
                       websocket.OP_CLOSE]


async def test_a_flood_after_the_upgrade_is_cut_off(servers: Servers) -> None:
    # One endless binary message in 64 KiB frames, then more: cut at the message cap.
    chunk = bytes([0x02, 0x7E]) + (65535).to_bytes(2, "big") + b"A" * 65535
    async with fakes.serve(fakes.websocket(chunk * 8, then="flood")) as port:
        result = await check(f"mqtt+ws://alice@127.0.0.1:{port}", options(servers, timeout=3))
    _assert(result, Reason.PROTOCOL_ERROR, Step.SERVER)


def test_frames_round_trip() -> None:
    for size in (0, 5, 125, 126, 65535, 65536, 70000):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        frame = websocket.encode_frame(websocket.OP_BINARY, payload)
        assert frame[0] == 0x82 and frame[1] & 0x80  # final, binary, masked
        length = frame[1] & 0x7F
        head = 2 + {126: 2, 127: 8}.get(length, 0)
        key, body = frame[head : head + 4], frame[head + 4 :]
        assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == payload


def test_rfc7395_framing_becomes_a_stream() -> None:
    opened = xmpp_ws.from_framing(
        b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='xmpp.test' id='x&apos;1' "
        b"version='1.0' xml:lang='en'/>"
    )
    assert opened.startswith(b"<stream:stream xmlns='jabber:client'")
    assert b"from=\"xmpp.test\"" in opened and b"id=\"x'1\"" in opened
    assert xmpp_ws.from_framing(b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>") == (
        b"</stream:stream>"
    )
    stanza = b"<iq xmlns='jabber:client' type='result'/>"
    assert xmpp_ws.from_framing(stanza) == stanza
    # Not the framing namespace: passed on for the stream parser to judge.
    assert xmpp_ws.from_framing(b"<open/>") == b"<open/>"
    assert xmpp_ws._links(
        b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>"
        b"<Link rel='urn:xmpp:alt-connections:xbosh' href='https://a/bosh'/>"
        b"<Link rel='urn:xmpp:alt-connections:websocket' href='wss://a/ws'/></XRD>"
    ) == ["wss://a/ws"]
    assert xmpp_ws._links(b"<!DOCTYPE x [<!ENTITY a 'b'>]><XRD/>") == []


async def test_downstream_takes_the_new_schemes(
    ws_servers: WsServers, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real WebSocket attempt through the collector's sinks: the protocol and target
    labels, an upgrade phase series and an upgrade span; the configs take the URLs; compare
    orders the phase where the contract puts it."""
    import os

    from loginprobe.agent.config import Check as AgentCheck
    from loginprobe.codec import Report, to_wire
    from loginprobe.collector.config import Check as CollectorCheck
    from loginprobe.collector.exporters.otel import TraceExporter
    from loginprobe.collector.exporters.prometheus import ResultMetrics
    from loginprobe.collector.ingest import FleetState, Ingest
    from loginprobe.compare.report import phase_key
    from tests.test_exports import Memory

    url = _url("mqtt+wss://alice@mqtt.test:{proxy_https_port}", ws_servers, servers)
    result = await check(url, options(servers))
    assert result.reason is Reason.OK
    fleet = FleetState()
    metrics = ResultMetrics(fleet)
    spans: list[str] = []

    class Names(Memory):
        def export(self, batch: Any) -> SpanExportResult:
            spans.extend(s.name for s in batch)
            return super().export(batch)

    exporter = TraceExporter(FleetState(), Names(), 1.0,  # type: ignore[arg-type]
                             max_sampled_per_second=1e9)
    msg = to_wire(Report(result, 1, "mqtt-ws", os.urandom(16), labels={"region": "eu"}))
    Ingest(fleet, [metrics, exporter]).batch("a1", {}, [msg])
    exporter.close()
    text = metrics.render(False).decode()
    assert 'phase="upgrade"' in text and 'protocol="mqtt+ws"' in text
    assert f'target="{url}"' in text
    assert spans.count("upgrade") == 1 and "login mqtt+ws" in spans
    monkeypatch.setenv("WS_PASSWORD", "x")
    for template in ("xmpp+wss://alice@xmpp.test", "mqtt+ws://bob@mqtt.test:8080/mqtt?version=5"):
        assert AgentCheck(name="c", url=template, password_env="WS_PASSWORD").url == template
        assert CollectorCheck(name="c", url=template).url == template
    assert phase_key("tls") < phase_key("upgrade") < phase_key("login")


@pytest.mark.parametrize(
    "template",
    [
        "xmpp+wss://alice@xmpp.test:{xmpp_wss_port}/xmpp-websocket",
        "mqtt+wss://alice@mqtt.test:{proxy_https_port}/mqtt",
    ],
)
async def test_sessions_held_over_websocket(
    template: str, ws_servers: WsServers, servers: Servers
) -> None:
    from loginprobe.agent.sessions import sdk_backoff
    from loginprobe.probes.session import Event, SessionOptions, hold_session
    from loginprobe.target import parse_target

    events: list[Event] = []
    summary = await hold_session(
        parse_target(_url(template, ws_servers, servers)), options(servers),
        SessionOptions(0.2, 2.0, hold=1.3), sdk_backoff(0.1, 2.0, 0.5), events.append,
    )
    assert events[0]["event"] == "login" and events[0]["success"], events[0]
    assert any(p["name"] == "upgrade" for p in events[0]["phases"])
    assert len([e for e in events if e["event"] == "keepalive"]) >= 3
    assert (summary.sessions, summary.drops) == (1, 0)


async def test_a_held_websocket_session_dropped_by_a_restart(
    ws_servers: WsServers, servers: Servers
) -> None:
    from loginprobe.agent.sessions import sdk_backoff
    from loginprobe.probes.session import Event, SessionOptions, hold_session
    from loginprobe.target import parse_target

    async def restart() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(ws_servers.server_down, "prosody")
        await asyncio.sleep(0.5)
        ws_servers.server_up("prosody")  # from the main thread: see servers.server_up

    task = asyncio.create_task(restart())
    events: list[Event] = []
    url = _url("xmpp+ws://alice@xmpp.test:{xmpp_ws_port}/xmpp-websocket", ws_servers, servers)
    summary = await hold_session(
        parse_target(url), options(servers), SessionOptions(0.3, 2.0, hold=3.5),
        sdk_backoff(0.1, 2.0, 0.4), events.append,
    )
    await task
    drops = [e for e in events if e["event"] == "drop"]
    assert len(drops) == 1, events
    # prosody ends the stream with <system-shutdown/> over WebSocket as over TCP.
    assert drops[0]["reason"] == "server_unavailable" and "system-shutdown" in drops[0]["message"]
    reconnects = [e for e in events if e["event"] == "reconnect"]
    assert reconnects and reconnects[-1]["success"]
    assert (summary.drops, summary.sessions) == (1, 2)


async def test_a_normal_close_frame_ends_a_held_session_as_session_closed(
    servers: Servers,
) -> None:
    from loginprobe.agent.sessions import sdk_backoff
    from loginprobe.probes.session import Event, SessionOptions, hold_session
    from loginprobe.target import parse_target

    # CONNACK 0, then the next read (our PINGREQ) is answered with a normal close.
    connack = bytes([0x82, 0x04, 0x20, 0x02, 0x00, 0x00])
    handler = fakes.websocket(connack, fakes.close_frame(1000, "bye"))
    events: list[Event] = []
    async with fakes.serve(handler) as port:
        await hold_session(
            parse_target(f"mqtt+ws://alice@127.0.0.1:{port}"), options(servers, timeout=1.0),
            SessionOptions(0.1, 1.0, hold=0.6), sdk_backoff(0.5, 2.0, 1.0), events.append,
        )
    drop = next(e for e in events if e["event"] == "drop")
    assert drop["reason"] == "session_closed" and "code 1000" in drop["message"], drop


async def test_the_waterfall_shows_the_upgrade_phase(
    ws_servers: WsServers, servers: Servers
) -> None:
    from loginprobe.render import waterfall

    result = await _check("mqtt+ws://alice@mqtt.test:{proxy_http_port}", ws_servers, servers)
    lines = waterfall(result).splitlines()
    rows = [line for line in lines if line.startswith(("  dns", "  tcp", "  upgrade", "  login"))]
    assert [r.split()[:2] for r in rows] == [
        ["dns", "ok"], ["tcp", "ok"], ["upgrade", "ok"], ["login", "ok"]
    ]
    assert len({r.index("ms") for r in rows}) == 1  # the columns line up

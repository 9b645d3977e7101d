"""Every scheme against every port of the test servers, with the reason, step and hint each cell
must give: the same fault gets the same reason on every protocol, and the hint says what the
port really speaks. A scheme (loginprobe.protocols) or a servers port without its expectations
fails here, so no protocol or transport ships without its row."""

from __future__ import annotations

import asyncio
import contextlib

from devstack.servers import Servers
from loginprobe.contract import Reason, Step
from loginprobe.protocols import SCHEMES
from loginprobe.result import Result
from tests.probing import check, options

# How each scheme's URL is written against one port of the servers.
URLS: dict[str, str] = {
    "xmpp": "xmpp://alice@xmpp.test:{port}?host=127.0.0.1",
    "xmpps": "xmpps://alice@xmpp.test:{port}?host=127.0.0.1",
    "mqtt": "mqtt://alice@mqtt.test:{port}",
    "mqtts": "mqtts://alice@mqtt.test:{port}",
    "http": "http://alice@http.test:{port}/login",
    "https": "https://alice@http.test:{port}/login",
    "tcp": "tcp://127.0.0.1:{port}",
    "tls": "tls://127.0.0.1:{port}",
    "matrix": "matrix://alice@http.test:{port}",
    "xmpp+ws": "xmpp+ws://alice@xmpp.test:{port}/xmpp-websocket",
    "xmpp+wss": "xmpp+wss://alice@xmpp.test:{port}/xmpp-websocket",
    "mqtt+ws": "mqtt+ws://alice@mqtt.test:{port}",
    "mqtt+wss": "mqtt+wss://alice@mqtt.test:{port}",
}

OK = (Reason.OK, None)
Cell = tuple[Reason, str | None]  # the reason, and the follow-up's headline finding if any


def mismatch(finding: str) -> Cell:
    return Reason.PROTOCOL_MISMATCH, "port {port} " + finding


def also(reason: Reason, finding: str) -> Cell:
    """The attempt's own reason stands (not a reset); the finding still leads the hint."""
    return reason, "port {port} " + finding


_MQTTS_PORTS = ("mqtts_port", "mqtts_expired_port", "mqtts_wronghost_port",
                "mqtts_selfsigned_port")


def _same(cell: Cell, *ports: str) -> dict[str, Cell]:
    return dict.fromkeys(ports, cell)


# scheme -> servers port -> expected cell. The DNS port (unbound over TCP) waits for the rest
# of the length its first two bytes announced, so every opening there runs into the deadline
# or a reset; nothing answers that names DNS.
EXPECT: dict[str, dict[str, Cell]] = {
    "xmpp": {
        "dns_port": (Reason.TLS_TIMEOUT, None),
        "xmpp_port": OK,
        "xmpps_port": mismatch("speaks XMPP over TLS: use xmpps://"),
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        **_same(mismatch("speaks MQTT over TLS: use mqtts://"), *_MQTTS_PORTS),
        "http_port": mismatch("speaks HTTP: use http://"),
        "https_port": mismatch("speaks HTTP over TLS: use https://"),
        "https_tls11_port": mismatch("speaks TLS: use xmpps://"),
    },
    "xmpps": {
        "dns_port": (Reason.TLS_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP without TLS: use xmpp://"),
        "xmpps_port": OK,
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        "mqtts_port": also(Reason.PROTOCOL_ERROR, "speaks MQTT over TLS: use mqtts://"),
        "mqtts_expired_port": (Reason.TLS_CERT_EXPIRED, None),
        "mqtts_wronghost_port": (Reason.TLS_HOSTNAME_MISMATCH, None),
        "mqtts_selfsigned_port": (Reason.TLS_CERT_UNTRUSTED, None),
        "http_port": mismatch("speaks HTTP: use http://"),
        "https_port": mismatch("speaks HTTP over TLS: use https://"),
        "https_tls11_port": (Reason.TLS_VERSION_MISMATCH, None),
    },
    "mqtt": {
        "dns_port": (Reason.LOGIN_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        "xmpps_port": mismatch("speaks TLS: use mqtts://"),
        "mqtt_port": OK,
        **_same(mismatch("speaks MQTT over TLS: use mqtts://"), *_MQTTS_PORTS),
        "http_port": mismatch("speaks HTTP: use http://"),
        "https_port": mismatch("speaks HTTP over TLS: use https://"),
        "https_tls11_port": mismatch("speaks TLS: use mqtts://"),
    },
    "mqtts": {
        "dns_port": (Reason.TLS_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        # prosody knows no mqtt.test: a TLS alert, TLS spoken back, so no follow-up.
        "xmpps_port": (Reason.TLS_HANDSHAKE_FAILED, None),
        "mqtt_port": mismatch("speaks MQTT without TLS: use mqtt://"),
        "mqtts_port": OK,
        "mqtts_expired_port": (Reason.TLS_CERT_EXPIRED, None),
        "mqtts_wronghost_port": (Reason.TLS_HOSTNAME_MISMATCH, None),
        "mqtts_selfsigned_port": (Reason.TLS_CERT_UNTRUSTED, None),
        "http_port": mismatch("speaks HTTP: use http://"),
        "https_port": mismatch("speaks HTTP over TLS: use https://"),
        "https_tls11_port": (Reason.TLS_VERSION_MISMATCH, None),
    },
    "http": {
        "dns_port": (Reason.LOGIN_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        "xmpps_port": mismatch("speaks TLS: use https://"),
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        **_same(mismatch("speaks MQTT over TLS: use mqtts://"), *_MQTTS_PORTS),
        "http_port": OK,
        # nginx answers plain HTTP on its TLS port with 400: the follow-up finds the TLS.
        "https_port": also(Reason.PROTOCOL_ERROR, "speaks HTTP over TLS: use https://"),
        "https_tls11_port": also(Reason.PROTOCOL_ERROR, "speaks TLS: use https://"),
    },
    "https": {
        "dns_port": (Reason.TLS_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        "xmpps_port": (Reason.TLS_HANDSHAKE_FAILED, None),
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        "mqtts_port": also(Reason.PROTOCOL_ERROR, "speaks MQTT over TLS: use mqtts://"),
        "mqtts_expired_port": (Reason.TLS_CERT_EXPIRED, None),
        "mqtts_wronghost_port": (Reason.TLS_HOSTNAME_MISMATCH, None),
        "mqtts_selfsigned_port": (Reason.TLS_CERT_UNTRUSTED, None),
        "http_port": mismatch("speaks HTTP without TLS: use http://"),
        "https_port": OK,
        "https_tls11_port": (Reason.TLS_VERSION_MISMATCH, None),
    },
    # A TCP handshake is the whole check: every listening port passes.
    "tcp": {},
    "tls": {
        "dns_port": (Reason.TLS_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        "xmpps_port": OK,
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        "mqtts_port": OK,
        "mqtts_expired_port": (Reason.TLS_CERT_EXPIRED, None),
        # tls:// to an address: the certificate names no IP address.
        "mqtts_wronghost_port": (Reason.TLS_HANDSHAKE_FAILED, None),
        "mqtts_selfsigned_port": (Reason.TLS_CERT_UNTRUSTED, None),
        "http_port": mismatch("speaks HTTP: use http://"),
        "https_port": OK,
        "https_tls11_port": (Reason.TLS_VERSION_MISMATCH, None),
    },
    "matrix": {
        "dns_port": (Reason.TLS_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        # prosody knows no http.test: a TLS alert, TLS spoken back, so no follow-up.
        "xmpps_port": (Reason.TLS_HANDSHAKE_FAILED, None),
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        "mqtts_port": also(Reason.PROTOCOL_ERROR, "speaks MQTT over TLS: use mqtts://"),
        "mqtts_expired_port": (Reason.TLS_CERT_EXPIRED, None),
        "mqtts_wronghost_port": (Reason.TLS_HOSTNAME_MISMATCH, None),
        "mqtts_selfsigned_port": (Reason.TLS_CERT_UNTRUSTED, None),
        "http_port": mismatch("speaks HTTP: use http://"),
        # nginx, but no Matrix homeserver: the probe itself says so, with no follow-up.
        "https_port": mismatch(
            "speaks HTTP over TLS, but https://http.test:{port} serves no Matrix client API: "
            "use the homeserver's name, or publish its /.well-known/matrix/client there"
        ),
        "https_tls11_port": (Reason.TLS_VERSION_MISMATCH, None),
    },
}

# Over WebSocket: the HTTP ports answer the upgrade with their status, which the probe
# diagnoses itself (its own finding leads the hint); the rest is the other schemes' story.
_WS_HTTP: dict[str, Cell] = {
    "http_port": (Reason.PROTOCOL_MISMATCH, None),  # 404: nothing at the path
    "https_port": (Reason.PROTOCOL_MISMATCH, None),  # 400: plain HTTP to nginx's TLS port
    "https_tls11_port": (Reason.PROTOCOL_MISMATCH, None),
}
_WSS_TLS: dict[str, Cell] = {
    "mqtts_expired_port": (Reason.TLS_CERT_EXPIRED, None),
    "mqtts_wronghost_port": (Reason.TLS_HOSTNAME_MISMATCH, None),
    "mqtts_selfsigned_port": (Reason.TLS_CERT_UNTRUSTED, None),
    "http_port": mismatch("speaks HTTP: use http://"),
    "https_port": (Reason.PROTOCOL_MISMATCH, None),  # 404: nothing at the path
    "https_tls11_port": (Reason.TLS_VERSION_MISMATCH, None),
}
for _scheme in ("xmpp+ws", "mqtt+ws"):
    EXPECT[_scheme] = {
        "dns_port": (Reason.LOGIN_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        "xmpps_port": mismatch(
            "speaks XMPP over TLS: use xmpps://" if _scheme == "xmpp+ws"
            else "speaks TLS: use mqtt+wss://"
        ),
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        **_same(mismatch("speaks MQTT over TLS: use mqtts://"), *_MQTTS_PORTS),
        **_WS_HTTP,
    }
for _scheme in ("xmpp+wss", "mqtt+wss"):
    EXPECT[_scheme] = {
        "dns_port": (Reason.TLS_TIMEOUT, None),
        "xmpp_port": mismatch("speaks XMPP: use xmpp://"),
        # prosody's direct TLS: for xmpp.test it completes and then answers XMPP; it knows
        # no mqtt.test (a TLS alert).
        "xmpps_port": (Reason.PROTOCOL_MISMATCH, None) if _scheme == "xmpp+wss"
        else (Reason.TLS_HANDSHAKE_FAILED, None),
        "mqtt_port": mismatch("speaks MQTT: use mqtt://"),
        "mqtts_port": (Reason.PROTOCOL_ERROR, None),  # mosquitto hangs up on HTTP
        **_WSS_TLS,
    }


# Cells whose answer depends on the load: unbound closes idle TCP connections sooner when
# many are open, so amid the matrix's parallel cells the DNS port's stall of a WebSocket
# upgrade may end as a close (the runner then says protocol_error), and its stall of a TLS
# handshake as a reset.
_LOAD_DEPENDENT: dict[tuple[str, str], tuple[Reason, ...]] = {
    **{(scheme, "dns_port"): (Reason.PROTOCOL_ERROR,) for scheme in ("xmpp+ws", "mqtt+ws")},
    **{(scheme, "dns_port"): (Reason.TCP_RESET,) for scheme in ("xmpp+wss", "mqtt+wss")},
}


def expected(scheme: str, port_name: str) -> Cell:
    if scheme == "tcp":
        return OK
    return EXPECT[scheme][port_name]


def test_every_scheme_has_its_row() -> None:
    missing = sorted(set(SCHEMES) - set(URLS) | set(SCHEMES) - set(EXPECT))
    assert not missing, f"schemes without a matrix row (add URLS and EXPECT entries): {missing}"


def _judge(scheme: str, port_name: str, port: int, result: Result) -> str | None:
    """What is wrong with one cell, or None."""
    reason, finding = expected(scheme, port_name)
    if result.reason in _LOAD_DEPENDENT.get((scheme, port_name), ()):
        reason = result.reason
    headline = finding.format(port=port) if finding else None
    want_hint = (
        f"{headline[:1].upper()}{headline[1:]}. {reason.hint}" if headline else reason.hint
    )
    got = (result.reason, result.reason.step, result.findings[:1], result.hint)
    want = (reason, reason.step, [headline] if headline else [], want_hint)
    if headline is None and result.findings:
        # Findings that name nothing are allowed where none was expected (e.g. "resets
        # every opening"); the hint then leads with them.
        want = (reason, reason.step, result.findings[:1], result.hint)
    if got != want:
        return f"{scheme} x {port_name}: got {got[:3]}, want {want[:3]} ({result.message})"
    return None


async def test_every_scheme_against_every_port(servers: Servers) -> None:
    ports = servers.ports()
    for scheme in EXPECT:
        if scheme != "tcp":
            missing = sorted(set(ports) - set(EXPECT[scheme]))
            assert not missing, f"{scheme}: servers ports without an expectation: {missing}"
    slots = asyncio.Semaphore(8)
    # The DNS port's cells one at a time: unbound shortens its TCP timeout while several
    # connections are open, so they would otherwise judge each other (a reset or a timeout
    # by how many schemes there are).
    dns_lane = asyncio.Semaphore(1)

    async def cell(scheme: str, port_name: str) -> str | None:
        port = ports[port_name]
        lane = dns_lane if port_name == "dns_port" else contextlib.nullcontext()
        async with lane, slots:
            # A short deadline: the DNS port's cells run into it.
            result = await check(URLS[scheme].format(port=port), options(servers, timeout=1.0))
        return _judge(scheme, port_name, port, result)

    wrong = await asyncio.gather(*(cell(s, p) for s in SCHEMES for p in ports))
    assert [w for w in wrong if w] == []
    # The cells' steps, the product's promise, at a glance.
    assert expected("mqtt", "mqtts_port")[0].step is Step.CONFIG
    assert expected("https", "dns_port")[0].step is Step.NETWORK

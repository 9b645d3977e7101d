"""The XMPP over WebSocket login probe (RFC 7395): the endpoint from the URL's path or the
domain's host-meta (XEP-0156), dns, tcp, tls, the upgrade (subprotocol `xmpp`), then
xmpp://'s own login (SASL, bind) with the framing's <open/> and <close/> for stream
headers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any
from urllib.parse import urlsplit
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

import h11

from loginprobe import __version__
from loginprobe.contract import Reason
from loginprobe.probes import websocket, xmpp
from loginprobe.probes.attempt import Attempt, Conn, ProbeFailure
from loginprobe.probes.phases import dns, tcp, tls
from loginprobe.probes.transport import establish
from loginprobe.result import Phase

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"  # XEP-0156
HOST_META = "/.well-known/host-meta"
MAX_HOST_META_BYTES = 64 * 1024


class _Stop(Exception):
    """Raised from an expat callback to stop parsing (a DTD, or the element was seen)."""


def _first_element(message: bytes) -> tuple[str, str, dict[str, str]] | None:
    """The namespace, name and attributes of a message's first element; None if it is not
    XML. Entities are never expanded: a DTD aborts."""
    found: list[tuple[str, str, dict[str, str]]] = []
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*args: Any) -> None:
        raise _Stop

    def start(qname: str, attrs: dict[str, str]) -> None:
        ns, _, name = qname.rpartition(" ")
        found.append((ns, name, attrs))
        raise _Stop

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    with contextlib.suppress(_Stop, expat.ExpatError):
        parser.Parse(message, True)
    return found[0] if found else None


def from_framing(message: bytes) -> bytes:
    """A server message as the XML stream xmpp.XmlStream reads: RFC 7395's <open/> becomes
    a stream header, <close/> the stream's end; stanzas pass as they are."""
    start = message.lstrip()[:7]
    if not (start.startswith(b"<open") or start.startswith(b"<close")):
        return message
    element = _first_element(message)
    if element is None or element[0] != NS_FRAMING:
        return message
    _, name, attrs = element
    if name == "close":
        return b"</stream:stream>"
    if name != "open":
        return message
    kept = "".join(f" {key}={quoteattr(value)}" for key, value in attrs.items()
                   if key != "xmlns" and ":" not in key and " " not in key)
    return (
        f"<stream:stream xmlns='{xmpp.NS_CLIENT}' xmlns:stream='{xmpp.NS_STREAM}'{kept}>"
    ).encode()


class WsSession(xmpp.Session):
    """xmpp.Session over a WebSocket: <open/> and <close/> (RFC 7395 section 3.3) instead of
    the stream header and its end; no STARTTLS (wss:// is the TLS)."""

    def __init__(self, attempt: Attempt, conn: Conn, domain: str) -> None:
        super().__init__(attempt, conn)
        self.domain = domain
        self.closing = f"<close xmlns='{NS_FRAMING}'/>".encode()

    async def authenticate(self, features: xmpp.Element) -> None:
        offered = xmpp._mechanisms(features)
        best = next((m for m in xmpp.MECHANISMS if m in offered), None)
        if best == "PLAIN" and self.attempt.tls is None:
            raise ProbeFailure(
                Reason.AUTH_MECHANISM_UNSUPPORTED,
                "the server offers only PLAIN on a WebSocket without TLS: loginprobe sends a "
                "password in clear text only inside TLS; use xmpp+wss://",
            )
        await super().authenticate(features)

    def opening(self) -> bytes:
        domain = escape(self.domain, {"'": "&apos;"})
        return f"<open xmlns='{NS_FRAMING}' to='{domain}' version='1.0'/>".encode()


async def probe(attempt: Attempt) -> None:
    domain = attempt.target.domain
    if not attempt.target.path:
        await _discover(attempt)
    try:
        conn = await establish(attempt, alpn=("http/1.1",))
    finally:
        _merge_dns(attempt)
    ws = await websocket.upgrade(attempt, conn, "xmpp", text=True, translate=from_framing)
    await xmpp.login(attempt, WsSession(attempt, ws, domain))


# -- XEP-0156 discovery ---------------------------------------------------------------------


async def _discover(attempt: Attempt) -> None:
    """Find the WebSocket endpoint in https://DOMAIN[:PORT]/.well-known/host-meta (http://
    for xmpp+ws://) and point the attempt at it. A lookup of the service, as SRV is for
    xmpp://, so it is timed in the dns phase."""
    target = attempt.target
    scheme = "wss" if target.tls_mode == "direct" else "ws"
    origin = f"{'https' if scheme == 'wss' else 'http'}://{websocket.host_header(target)}"
    with attempt.phase("dns"):
        try:
            links = await _host_meta(attempt, origin)
        except ProbeFailure as failure:
            if attempt.findings:
                raise  # diagnosed already, its message names the host-meta
            # Whatever failed (the name, the connection, TLS) failed the discovery.
            raise ProbeFailure(
                failure.reason, f"host-meta discovery at {origin}: {failure.message}"
            ) from None
        attempt.note("*", f"host-meta WebSocket links: {', '.join(links) or 'none'}")
        url = next((link for link in links if urlsplit(link).scheme == scheme), None)
        if url is None:
            offered = f" (it offers {', '.join(links)[:200]})" if links else ""
            raise websocket_problem(
                attempt,
                f"{origin}{HOST_META} names no {scheme}:// XMPP WebSocket endpoint{offered}",
                f"no {scheme}:// endpoint for XMPP over WebSocket in {target.domain}'s "
                "host-meta (XEP-0156): publish one, or put the endpoint's path in the URL",
            )
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if scheme == "wss" else 80)
    except ValueError:
        port = -1
    if not parts.hostname or port <= 0:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"host-meta names an unusable URL {url[:200]!r}")
    attempt.note("*", f"XEP-0156: the WebSocket endpoint is {url}")
    # The JID's domain stays with the session; the endpoint's host names the certificate.
    attempt.target = dataclasses.replace(
        target, host=parts.hostname, port=port, domain="",
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
    )


def websocket_problem(attempt: Attempt, message: str, finding: str) -> ProbeFailure:
    attempt.findings = [finding]
    return ProbeFailure(Reason.PROTOCOL_MISMATCH, f"{message}; {finding}")


async def _host_meta(attempt: Attempt, origin: str) -> list[str]:
    """The XEP-0156 WebSocket links of the domain's host-meta (XRD), fetched on a connection
    of its own."""
    target = attempt.target
    address = (await dns.resolve_addresses(attempt, target.host))[0]
    sock = tcp.socket_for(attempt, address)
    loop = asyncio.get_running_loop()
    attempt.waiting_for = f"the host-meta at {origin}"
    try:
        await loop.sock_connect(sock, (address, target.port))
    except OSError as exc:
        sock.close()
        raise ProbeFailure(
            Reason.TCP_REFUSED if isinstance(exc, ConnectionRefusedError) else Reason.TCP_TIMEOUT,
            f"cannot connect to {address} port {target.port}: {exc.strerror or exc}",
        ) from None
    conn = await tcp.stream(attempt, sock)
    if target.tls_mode == "direct":
        await tls.handshake(attempt, conn, target.tls_server_name, ("http/1.1",))
    parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=websocket.MAX_HEAD_BYTES)
    request = parser.send(h11.Request(method="GET", target=HOST_META, headers=[
        ("Host", websocket.host_header(target)),
        ("User-Agent", f"loginprobe/{__version__}"),
        ("Accept", "application/xrd+xml"),
        ("Connection", "close"),
    ]))
    parser.send(h11.EndOfMessage())
    assert request is not None
    await conn.send(request)
    response = await websocket.read_response(conn, parser, "the host-meta request")
    if response.status_code != 200:
        raise websocket_problem(
            attempt,
            f"{origin}{HOST_META} answered HTTP {response.status_code}",
            f"no host-meta (XEP-0156) at {origin}{HOST_META} to discover the XMPP WebSocket "
            "endpoint from: publish one, or put the endpoint's path in the URL (prosody serves "
            "/xmpp-websocket)",
        )
    body = b""
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"a malformed answer: {exc}") from None
        if event is h11.NEED_DATA:
            try:
                parser.receive_data(await conn.recv(4096))
            except ProbeFailure as failure:
                if failure.reason is not Reason.PROTOCOL_ERROR:
                    raise
                parser.receive_data(b"")  # the end of a body delimited by the close
        elif isinstance(event, h11.ConnectionClosed):
            break
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
            if len(body) > MAX_HOST_META_BYTES:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    f"longer than {MAX_HOST_META_BYTES} bytes; refused",
                )
        else:
            break
    await conn.close()
    attempt.conns.remove(conn)
    attempt.waiting_for = None
    return _links(body)


def _links(xrd: bytes) -> list[str]:
    """The hrefs of <Link rel='urn:xmpp:alt-connections:websocket'/> in an XRD document."""
    links: list[str] = []
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*args: Any) -> None:
        raise _Stop

    def start(qname: str, attrs: dict[str, str]) -> None:
        link = qname.rpartition(" ")[2] == "Link" and attrs.get("rel") == REL_WEBSOCKET
        if link and attrs.get("href"):
            links.append(attrs["href"])

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    with contextlib.suppress(_Stop, expat.ExpatError):
        parser.Parse(xrd, True)
    return links


def _merge_dns(attempt: Attempt) -> None:
    """Discovery and the endpoint's address lookup are one dns phase: both find where to
    connect."""
    found = [p for p in attempt.phases if p.name == "dns"]
    if len(found) < 2:
        return
    first, rest = found[0], found[1:]
    merged = Phase(
        name="dns", ok=all(p.ok for p in found), start_ns=first.start_ns,
        duration_ns=sum(p.duration_ns for p in found), skipped=False, message=first.message,
    )
    attempt.phases = [
        merged if p is first else p for p in attempt.phases if all(p is not r for r in rest)
    ]

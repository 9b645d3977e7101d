"""WebSocket (RFC 6455) under a login: the HTTP/1.1 Upgrade as the timed `upgrade` phase, then
a connection of messages that the XMPP and MQTT logins run over unchanged.

The frame codec is written here on the asyncio stream, as the other probes are, rather than
taken from wsproto: a client needs a fifth of RFC 6455 (masking our frames, reading the
server's unmasked ones, answering a ping, quoting a close), and written here every read
goes through our size caps and our transcript. The Upgrade answer is read by h11, the HTTP
probe's parser, so a refused upgrade is judged from its status line and headers as any
HTTP answer is; wsproto's handshake would fold a wrong status, a wrong accept key and an
unoffered subprotocol into one exception, which is the very distinction we report."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
from collections.abc import Callable

import h11

from loginprobe import __version__
from loginprobe.contract import Reason
from loginprobe.probes import mismatch
from loginprobe.probes.attempt import (
    MAX_MESSAGE_BYTES,
    MAX_TOTAL_BYTES,
    Attempt,
    Conn,
    ProbeFailure,
    hexdump,
    printable,
)
from loginprobe.probes.http import MAX_HEAD_BYTES as MAX_HEAD_BYTES  # xmpp_ws bounds by it too
from loginprobe.probes.http import head_event
from loginprobe.target import Target

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
READ_BYTES = 65536
CLOSE_WAIT = 0.25  # seconds our close frame may take; the verdict is in by then

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)

# Close codes (RFC 6455 section 7.4.1 and the IANA registry) with their name and reason.
# A close in place of a login answer: the server's or a proxy's own verdict on us.
CLOSE_CODES: dict[int, tuple[str, Reason]] = {
    1000: ("normal closure", Reason.PROTOCOL_ERROR),
    1001: ("going away", Reason.SERVER_UNAVAILABLE),
    1002: ("protocol error", Reason.PROTOCOL_ERROR),
    1003: ("unsupported data", Reason.PROTOCOL_ERROR),
    1005: ("no status", Reason.PROTOCOL_ERROR),
    1007: ("invalid payload data", Reason.PROTOCOL_ERROR),
    1008: ("policy violation", Reason.AUTH_NOT_AUTHORIZED),
    1009: ("message too big", Reason.PROTOCOL_ERROR),
    1010: ("mandatory extension", Reason.PROTOCOL_ERROR),
    1011: ("internal error", Reason.SERVER_ERROR),
    1012: ("service restart", Reason.SERVER_UNAVAILABLE),
    1013: ("try again later", Reason.SERVER_UNAVAILABLE),
    1014: ("bad gateway", Reason.SERVER_ERROR),
}


def close_reason(code: int) -> tuple[str, Reason]:
    """A close code's name and reason; unregistered and application codes (3000-4999) are
    the server's own words, so protocol_error."""
    if code in CLOSE_CODES:
        return CLOSE_CODES[code]
    if 3000 <= code < 5000:
        return "application code", Reason.PROTOCOL_ERROR
    return "unknown code", Reason.PROTOCOL_ERROR


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the repeated 4-byte key, as one big-integer operation (a byte loop in
    Python would cost more than the rest of the frame)."""
    if not payload:
        return payload
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (a client must mask every frame, RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = secrets.token_bytes(4)
    return head + key + _mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()[:123]


# -- the upgrade ----------------------------------------------------------------------------


def host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != (443 if target.tls_mode == "direct" else 80):
        host += f":{target.port}"
    return host


def _problem(attempt: Attempt, reason: Reason, message: str, finding: str) -> ProbeFailure:
    """A failure the probe diagnosed itself: its finding leads the hint (and, being there,
    tells the runner's follow-up that nothing is left to find out)."""
    attempt.findings = [finding]
    return ProbeFailure(reason, f"{message}; {finding}")


def _refusal(
    attempt: Attempt, status: int, phrase: str, headers: dict[str, str], subprotocol: str
) -> ProbeFailure:
    """The verdict on an Upgrade answered with anything but 101."""
    path = attempt.target.path
    line = f"HTTP {status} {phrase}".rstrip()
    message = f"the WebSocket upgrade at {path} was answered {line}, not 101 Switching Protocols"
    mismatch_ = Reason.PROTOCOL_MISMATCH
    if 200 <= status < 300:
        return _problem(
            attempt, mismatch_, message,
            "a plain HTTP answer where WebSocket was expected: the server, or a proxy in front "
            "of it that does not pass the Upgrade and Connection headers, did not upgrade "
            "(nginx needs proxy_http_version 1.1 and proxy_set_header Upgrade/Connection)",
        )
    if 300 <= status < 400:
        where = headers.get("location", "nowhere")[:200]
        return _problem(
            attempt, mismatch_, message,
            f"the WebSocket endpoint has moved to {where!r}: put its path in the URL "
            "(WebSocket clients do not follow redirects)",
        )
    if status == 404:
        return _problem(
            attempt, mismatch_, message,
            f"nothing is served at {path}: the WebSocket path is wrong or has moved; check "
            "the URL's path against the server's (or proxy's) WebSocket location",
        )
    if status in (400, 426):
        # nginx answers plain HTTP on its TLS port with 400 too.
        tls_port = (
            f", or this is a TLS port spoken to without TLS (use {attempt.target.scheme}s://)"
            if attempt.tls is None and status == 400 else ""
        )
        return _problem(
            attempt, mismatch_, message,
            "the server wanted a WebSocket upgrade but did not see one: a proxy on the way "
            "probably strips the Upgrade header (nginx needs proxy_http_version 1.1 and "
            f"proxy_set_header Upgrade/Connection){tls_port}",
        )
    if status == 501:
        return _problem(
            attempt, mismatch_, message,
            f"the endpoint does not speak the {subprotocol!r} WebSocket subprotocol: the "
            "path may belong to another service",
        )
    if status in (401, 403):
        return _problem(
            attempt, Reason.AUTH_NOT_AUTHORIZED, message,
            "the WebSocket endpoint wants HTTP authentication or refuses this client (an "
            "Origin or address rule in the server or its proxy)",
        )
    if status in (429, 503):
        retry = headers.get("retry-after")
        return ProbeFailure(
            Reason.SERVER_UNAVAILABLE, message + (f" (retry after {retry[:40]})" if retry else "")
        )
    if status == 502:
        return _problem(
            attempt, Reason.SERVER_ERROR, message,
            "the proxy got no valid answer from the WebSocket server behind it: that server is "
            "down, or the proxy does not pass the Upgrade and Connection headers and the server "
            "hangs up on a plain GET",
        )
    if 500 <= status < 600:
        return ProbeFailure(Reason.SERVER_ERROR, message)
    return _problem(
        attempt, mismatch_, message,
        f"the endpoint at {path} refused the WebSocket upgrade: check the URL's path",
    )


async def read_response(
    conn: Conn, parser: h11.Connection, opening: str
) -> h11.Response | h11.InformationalResponse:
    """The final HTTP answer (or 101) to a request already sent through parser, its head
    bounded by MAX_HEAD_BYTES. Anything but HTTP is named as what it is."""

    async def read(received: int) -> bytes:
        try:
            data = await conn.recv(4096)
        except ProbeFailure as failure:
            if received == 0 and failure.reason in (Reason.PROTOCOL_ERROR, Reason.TCP_RESET):
                # An HTTP server always answers something, even 400.
                raise mismatch.hung_up(conn.attempt, failure, opening) from None
            raise
        if received == 0 and not data.startswith(b"HTTP/"[: len(data)]):
            other = mismatch.foreign(conn.attempt, data)
            if other is not None:
                raise other
            raise ProbeFailure(
                Reason.PROTOCOL_MISMATCH,
                f"the port answered {printable(data, 60)!r} to {opening}, not HTTP",
            )
        return data

    return await head_event(parser, read, upgrade=True)


def _headers(event: h11.Response | h11.InformationalResponse) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}


async def upgrade(
    attempt: Attempt,
    conn: Conn,
    subprotocol: str,
    text: bool,
    translate: Callable[[bytes], bytes] | None = None,
) -> WsConn:
    """The upgrade phase: the HTTP/1.1 Upgrade to WebSocket with our subprotocol; returns the
    WebSocket connection. Everything but 101 with that subprotocol fails with its diagnosis."""
    target = attempt.target
    with attempt.phase("upgrade"):
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES + 4096)
        request = parser.send(h11.Request(method="GET", target=target.path or "/", headers=[
            ("Host", host_header(target)),
            ("User-Agent", f"loginprobe/{__version__}"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", subprotocol),
        ]))
        parser.send(h11.EndOfMessage())  # a GET has no body; h11 then awaits the answer
        assert request is not None
        await conn.send(request)
        event = await read_response(conn, parser, "the WebSocket upgrade request")
        headers = _headers(event)
        phrase = event.reason.decode("latin-1").strip()
        if event.status_code != 101:
            raise _refusal(attempt, event.status_code, phrase, headers, subprotocol)
        if headers.get("upgrade", "").lower() != "websocket":
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"HTTP 101 switched to {headers.get('upgrade', 'nothing')[:60]!r}, not websocket",
            )
        # SHA-1 is what RFC 6455 fixes for the accept key; it protects nothing.
        digest = hashlib.sha1(key.encode() + GUID, usedforsecurity=False).digest()
        accept = base64.b64encode(digest).decode()
        if headers.get("sec-websocket-accept", "").strip() != accept:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                "HTTP 101 with a wrong Sec-WebSocket-Accept: the server (or a proxy) does not "
                "implement RFC 6455's handshake",
            )
        agreed = headers.get("sec-websocket-protocol", "").strip()
        if agreed != subprotocol:
            said = f"agreed on {agreed[:60]!r}" if agreed else "agreed on no subprotocol"
            raise _problem(
                attempt, Reason.PROTOCOL_MISMATCH,
                f"the server upgraded to WebSocket but {said}, asked for {subprotocol!r}",
                f"the WebSocket endpoint at {target.path} does not speak {subprotocol!r} (RFC "
                f"{7395 if subprotocol == 'xmpp' else 6455} requires the server to echo it): "
                "the path may belong to another service, or a proxy dropped the "
                "Sec-WebSocket-Protocol header",
            )
        leftover, _ = parser.trailing_data
        attempt.note("*", f"WebSocket open, subprotocol {agreed!r}")
        return WsConn(attempt, conn, bytes(leftover), text, translate)


# -- the messages ---------------------------------------------------------------------------


class WsConn(Conn):
    """A WebSocket as the byte connection a login reads and writes: each send is one message
    (text or binary), reads hand out the payload of the server's data messages. Pings are
    answered, a close frame ends the attempt with its code and reason."""

    def __init__(
        self,
        attempt: Attempt,
        raw: Conn,
        leftover: bytes,
        text: bool,
        translate: Callable[[bytes], bytes] | None = None,
    ) -> None:
        super().__init__(attempt, raw.reader, raw.writer)
        attempt.conns.remove(raw)  # closed through us, after our close frame
        self.text = text
        # How a message becomes bytes for the login (XMPP's framing elements, RFC 7395).
        self.translate = translate
        self._buf = bytearray(leftover)  # raw bytes, frames not yet decoded
        self._data = bytearray()  # payload of data messages not yet read by the login
        self.closed = False  # a close frame went either way
        self.frames = 0  # received
        self.close_code: int | None = None  # the server's close frame's code

    async def send(self, data: bytes, shown: str | None = None) -> None:
        self.attempt.note(">", shown if shown is not None else printable(data))
        await self._write(OP_TEXT if self.text else OP_BINARY, data)

    async def _write(self, opcode: int, payload: bytes) -> None:
        try:
            self.writer.write(encode_frame(opcode, payload))
            await self.writer.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ProbeFailure(Reason.TCP_RESET, f"connection reset while sending: {exc}") from None

    async def recv(self, max_bytes: int = 65536) -> bytes:
        if not self._data:
            self._data += await self.message()
        data = bytes(self._data[:max_bytes])
        del self._data[:max_bytes]
        return data

    async def recv_exactly(self, n: int) -> bytes:
        if n > MAX_MESSAGE_BYTES:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"the server announced a {n}-byte message; refused"
            )
        while len(self._data) < n:
            self._data += await self.message()
        data = bytes(self._data[:n])
        del self._data[:n]
        return data

    async def _fill(self, n: int) -> None:
        """Raw bytes until n are buffered, counted against MAX_TOTAL_BYTES."""
        while len(self._buf) < n:
            try:
                data = await self.reader.read(READ_BYTES)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ProbeFailure(
                    Reason.TCP_RESET, f"connection reset by the server: {exc}"
                ) from None
            if not data:
                self.attempt.note("*", "connection closed by the server without a close frame")
                message = (
                    "the server closed the connection during the login, without a WebSocket "
                    "close frame"
                )
                if not self.frames:
                    # nginx does exactly this when it relays a 101 it did not ask for.
                    raise _problem(
                        self.attempt, Reason.PROTOCOL_MISMATCH, message,
                        "the connection ended right after the upgrade, before a single "
                        "WebSocket frame: a proxy that does not pass the Upgrade and "
                        "Connection headers answers so (nginx needs proxy_http_version 1.1 "
                        "and proxy_set_header Upgrade/Connection)",
                    )
                raise ProbeFailure(Reason.PROTOCOL_ERROR, message)
            self.attempt.bytes_read += len(data)
            if self.attempt.bytes_read > MAX_TOTAL_BYTES:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    f"the server sent more than {MAX_TOTAL_BYTES} bytes without completing "
                    "the login",
                )
            self._buf += data

    async def _frame(self) -> tuple[bool, int, bytes]:
        """One frame: (final, opcode, payload), checked as RFC 6455 section 5 demands."""
        await self._fill(2)
        b0, b1 = self._buf[0], self._buf[1]
        final, opcode, length, head = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F, 2
        if b0 & 0x70:
            raise self._bad("a frame with reserved bits set (no extension was agreed)")
        if b1 & 0x80:
            raise self._bad("a masked frame (a server must never mask, RFC 6455 5.1)")
        if opcode not in _DATA + _CONTROL:
            raise self._bad(f"a frame with the reserved opcode 0x{opcode:X}")
        if length == 126:
            await self._fill(4)
            length, head = int.from_bytes(self._buf[2:4], "big"), 4
        elif length == 127:
            await self._fill(10)
            length, head = int.from_bytes(self._buf[2:10], "big"), 10
        if opcode in _CONTROL and (length > 125 or not final):
            raise self._bad("a control frame longer than 125 bytes or fragmented")
        if length > MAX_MESSAGE_BYTES:
            raise self._bad(f"a frame announcing {length} bytes; refused")
        await self._fill(head + length)
        payload = bytes(self._buf[head : head + length])
        del self._buf[: head + length]
        self.frames += 1
        return final, opcode, payload

    def _bad(self, what: str) -> ProbeFailure:
        return ProbeFailure(Reason.PROTOCOL_ERROR, f"the server sent {what}")

    async def message(self) -> bytes:
        """The next data message's payload (fragments joined, at most MAX_MESSAGE_BYTES);
        control frames on the way are handled."""
        parts: list[bytes] = []
        size = 0
        kind: int | None = None
        while True:
            final, opcode, payload = await self._frame()
            if opcode in _CONTROL:
                await self._control(opcode, payload)
                continue
            if opcode == OP_CONT and kind is None:
                raise self._bad("a continuation frame with no message to continue")
            if opcode != OP_CONT and kind is not None:
                raise self._bad("a new message inside a fragmented one")
            kind = kind if opcode == OP_CONT else opcode
            size += len(payload)
            if size > MAX_MESSAGE_BYTES:
                raise self._bad(f"a message of more than {MAX_MESSAGE_BYTES} bytes; refused")
            parts.append(payload)
            if final:
                break
        message = b"".join(parts)
        self.attempt.note("<", hexdump(message) if self.binary else printable(message))
        return self.translate(message) if self.translate else message

    async def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.attempt.note("<", f"WebSocket ping ({len(payload)} bytes); pong sent")
            await self._write(OP_PONG, payload)
            return
        if opcode == OP_PONG:
            return
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        text = payload[2:].decode("utf-8", "replace")[:123]
        name, reason = close_reason(code)
        self.close_code = code
        self.attempt.note("<", f"WebSocket close {code} ({name}) {text!r}")
        with contextlib.suppress(ProbeFailure, OSError):
            await self._write(OP_CLOSE, payload[:2])  # the closing handshake's echo
        self.closed = True
        said = f": {text!r}" if text else " (no reason given)"
        raise ProbeFailure(
            reason, f"the server closed the WebSocket with code {code} ({name}){said}"
        )

    async def close(self) -> None:
        """Our close frame (best effort, briefly), then the connection."""
        if not self.closed and not self.writer.is_closing():
            self.closed = True
            with contextlib.suppress(ProbeFailure, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await self._write(OP_CLOSE, close_payload(1000))
        await super().close()

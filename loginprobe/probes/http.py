"""The HTTP login probe: one hand-written HTTP/1.1 request with the credentials (so the
transcript shows it redacted), its response read by h11, judged by the status line alone."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import h11

from loginprobe import __version__
from loginprobe.contract import Reason
from loginprobe.probes import mismatch
from loginprobe.probes.attempt import REDACTED, Attempt, Conn, ProbeFailure, printable
from loginprobe.probes.transport import establish
from loginprobe.target import Target

# The status line and headers may not exceed this; the body is never read beyond
# BODY_PREFIX_BYTES, and only for a failure's message.
MAX_HEAD_BYTES = 64 * 1024
BODY_PREFIX_BYTES = 4096
READ_BYTES = 4096
BODY_GRACE = 0.2  # seconds
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A challenge starts the header or follows a comma, and is a token not followed by "=".
_BASIC_CHALLENGE = re.compile(r"(?:^|,)\s*basic(?:\s|,|$)", re.IGNORECASE)


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != _DEFAULT_PORTS.get(target.scheme):
        host += f":{target.port}"
    return host


def hello(target: Target) -> bytes:
    """A credential-free request, for the follow-up that asks whether a port speaks HTTP."""
    return (
        f"HEAD / HTTP/1.1\r\nHost: {_host_header(target)}\r\n"
        f"User-Agent: loginprobe/{__version__}\r\nConnection: close\r\n\r\n"
    ).encode()


def build_request(attempt: Attempt) -> tuple[bytes, str]:
    """The request bytes and their transcript form, with the credentials redacted."""
    target = attempt.target
    password = attempt.options.password or ""
    host = _host_header(target)
    method = "POST" if target.params.get("auth") == "json" else "GET"
    head = [
        f"{method} {target.path} HTTP/1.1",
        f"Host: {host}",
        f"User-Agent: loginprobe/{__version__}",
        "Accept: */*",
    ]
    shown = list(head)
    body = b""
    if method == "POST":
        body = json.dumps({"username": target.user, "password": password}).encode()
        shown_body = json.dumps({"username": target.user, "password": REDACTED})
        for lines in (head, shown):
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    else:
        token = base64.b64encode(f"{target.user}:{password}".encode()).decode()
        head.append(f"Authorization: Basic {token}")
        shown.append(f"Authorization: Basic {REDACTED}")
        shown_body = ""
    # One request per connection: the server closes after its answer, and a keep-alive
    # server has no reason to wait for a second request from us.
    for lines in (head, shown):
        lines += ["Connection: close", "", ""]
    return "\r\n".join(head).encode() + body, "\r\n".join(shown) + shown_body


class Response:
    """The server's answer as h11 reads it: status, phrase, headers (lower-case names, last
    one wins), and the parser, which holds whatever part of the body came with them."""

    def __init__(self, parser: h11.Connection, status: int, phrase: str,
                 headers: dict[str, str]) -> None:
        self.parser = parser
        self.status = status
        self.phrase = phrase
        self.headers = headers


def _parser_for(attempt: Attempt) -> h11.Connection:
    """An h11 client that knows the request we sent by hand, so it reads the response to
    it (a body or none, chunked or not) as HTTP/1.1 says."""
    parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES + READ_BYTES)
    target = attempt.target
    post = target.params.get("auth") == "json"
    headers = [("Host", _host_header(target)), ("Connection", "close")]
    if post:
        headers.append(("Content-Length", "1"))
    parser.send(h11.Request(method="POST" if post else "GET", target=target.path or "/",
                            headers=headers))
    if post:
        parser.send(h11.Data(data=b"x"))  # its length is all h11 checks
    parser.send(h11.EndOfMessage())
    return parser


async def head_event(
    parser: h11.Connection, read: Callable[[int], Awaitable[bytes]], *, upgrade: bool = False
) -> h11.Response | h11.InformationalResponse:
    """The final response's head (with `upgrade`, a 101 too) from parser, fed by read(bytes
    received so far), which names a first answer that is not HTTP. Other 1xx interim answers
    are skipped; all of the head counts against MAX_HEAD_BYTES."""
    received = 0
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"malformed status line or headers: {exc}"
            ) from None
        if event is h11.NEED_DATA:
            if received > MAX_HEAD_BYTES:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    f"the response headers are longer than {MAX_HEAD_BYTES} bytes",
                )
            data = await read(received)
            received += len(data)
            parser.receive_data(data)
        elif isinstance(event, h11.Response):
            return event
        elif isinstance(event, h11.InformationalResponse):
            if upgrade and event.status_code == 101:
                return event
        elif upgrade:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"unexpected HTTP event {type(event).__name__}"
            )


async def read_head(conn: Conn, parser: h11.Connection | None = None) -> Response:
    """Read up to the end of the final response's headers (1xx interim answers, 100
    Continue or 103 Early Hints, are skipped), all of it counted against MAX_HEAD_BYTES.
    `parser` knows the request sent (default: the login request of the attempt's URL)."""
    parser = parser or _parser_for(conn.attempt)

    async def read(received: int) -> bytes:
        data = await conn.recv(READ_BYTES)
        if received == 0 and not data.startswith(b"HTTP/"[: len(data)]):
            other = mismatch.foreign(conn.attempt, data)
            raise ProbeFailure(
                Reason.PROTOCOL_MISMATCH,
                f"the server does not speak HTTP: {printable(data, 60)!r}"
                + (f" ({other.message})" if other else ""),
            )
        return data

    event = await head_event(parser, read)
    phrase = event.reason.decode("latin-1").strip()
    if not phrase:
        try:
            phrase = HTTPStatus(event.status_code).phrase
        except ValueError:
            phrase = ""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
    return Response(parser, event.status_code, phrase, headers)


async def _body_prefix(conn: Conn, response: Response) -> str:
    """A short text body (a JSON error, a plain-text reason) for a failure's message; h11
    undoes chunked framing. Never reads past BODY_PREFIX_BYTES, nor waits past a short
    grace: the verdict is already known, and a server that announces a body it never
    sends must not turn it into a timeout."""
    kind = response.headers.get("content-type", "").lower()
    if not ("json" in kind or kind.startswith("text/plain")):
        return ""  # an HTML error page says no more than the status line
    body = b""
    with contextlib.suppress(TimeoutError, ProbeFailure, h11.RemoteProtocolError):
        async with asyncio.timeout(BODY_GRACE):
            while len(body) < BODY_PREFIX_BYTES:
                event = response.parser.next_event()
                if event is h11.NEED_DATA:
                    response.parser.receive_data(await conn.recv(READ_BYTES))
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                else:
                    break  # the end of the body
    text = " ".join(body[:BODY_PREFIX_BYTES].decode("utf-8", "replace").split())
    return text[:200]


def judge(status: int, phrase: str, headers: dict[str, str], auth: str) -> tuple[Reason, str]:
    """The verdict on a final status code, as (reason, message)."""
    message = f"HTTP {status} {phrase}".rstrip()
    if 200 <= status < 300:
        return Reason.OK, message
    if status == 401:
        challenge = headers.get("www-authenticate", "")
        if auth == "basic" and challenge and not _BASIC_CHALLENGE.search(challenge):
            return (
                Reason.AUTH_MECHANISM_UNSUPPORTED,
                f"{message}: the server asks for {challenge[:100]!r}, not Basic",
            )
        return Reason.AUTH_REJECTED, message
    if status == 403:
        return Reason.AUTH_NOT_AUTHORIZED, message
    if status in (429, 503):
        retry = headers.get("retry-after")
        return Reason.SERVER_UNAVAILABLE, message + (f" (retry after {retry})" if retry else "")
    if 500 <= status < 600:
        return Reason.SERVER_ERROR, message
    if 300 <= status < 400:
        where = headers.get("location", "nowhere")
        return (
            Reason.PROTOCOL_ERROR,
            f"{message}: redirected to {where}; point the URL at the login endpoint",
        )
    if status == 404:
        return Reason.PROTOCOL_ERROR, f"{message}: login endpoint not found; check the URL path"
    if status == 405:
        method = "POST" if auth == "json" else "GET"
        return (
            Reason.PROTOCOL_ERROR,
            f"{message}: the endpoint does not take a {method}; check ?auth=basic|json",
        )
    return Reason.PROTOCOL_ERROR, message


async def probe(attempt: Attempt) -> None:
    auth = attempt.target.params.get("auth", "basic")
    conn = await establish(attempt, alpn=("http/1.1",))
    with attempt.phase("login"):
        request, shown = build_request(attempt)
        await conn.send(request, shown=shown)
        try:
            response = await read_head(conn)
        except ProbeFailure as failure:
            if not attempt.bytes_read and failure.reason in (
                Reason.PROTOCOL_ERROR, Reason.TCP_RESET
            ):
                # An HTTP server always answers something, even 400.
                raise mismatch.hung_up(attempt, failure, "the HTTP request") from None
            raise
        reason, message = judge(response.status, response.phrase, response.headers, auth)
        attempt.note("*", message)
        if reason is not Reason.OK:
            detail = await _body_prefix(conn, response)
            raise ProbeFailure(reason, f"{message}: {detail}" if detail else message)

"""The HTTP login probe: one HTTP/1.1 request with the credentials, judged by the status line
alone; h11 (sans-IO) frames the bytes, this module times and reads them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from http import HTTPStatus
from typing import Any

import h11

from loginprobe import __version__
from loginprobe.contract import Reason
from loginprobe.probes.attempt import REDACTED, Attempt, Conn, ProbeFailure, printable
from loginprobe.probes.transport import establish

# The status line and headers may not exceed this; the body is never read beyond
# BODY_PREFIX_BYTES, and only for a failure's message.
MAX_HEAD_BYTES = 64 * 1024
BODY_PREFIX_BYTES = 4096
READ_BYTES = 4096
BODY_GRACE = 0.2  # seconds
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BYTEARRAY = re.compile(r"bytearray\(b('.*'|\".*\")\)")
# A challenge starts the header or follows a comma, and is a token not followed by "=".
_BASIC_CHALLENGE = re.compile(r"(?:^|,)\s*basic(?:\s|,|$)", re.IGNORECASE)


def build_request(attempt: Attempt, http: h11.Connection) -> tuple[bytes, str]:
    """The request bytes (through h11, which then expects the answer to this request) and
    their transcript form, with the credentials redacted."""
    target = attempt.target
    password = attempt.options.password or ""
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != _DEFAULT_PORTS.get(target.scheme):
        host += f":{target.port}"
    method = "POST" if target.params.get("auth") == "json" else "GET"
    headers = [("Host", host), ("User-Agent", f"loginprobe/{__version__}"), ("Accept", "*/*")]
    shown = list(headers)
    body = b""
    shown_body = ""
    if method == "POST":
        body = json.dumps({"username": target.user, "password": password}).encode()
        shown_body = json.dumps({"username": target.user, "password": REDACTED})
        for lines in (headers, shown):
            lines += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    else:
        token = base64.b64encode(f"{target.user}:{password}".encode()).decode()
        headers.append(("Authorization", f"Basic {token}"))
        shown.append(("Authorization", f"Basic {REDACTED}"))
    # One request per connection: the server closes after its answer, and a keep-alive
    # server has no reason to wait for a second request from us.
    for lines in (headers, shown):
        lines.append(("Connection", "close"))
    data = http.send(h11.Request(method=method, target=target.path, headers=headers)) or b""
    if body:
        data += http.send(h11.Data(data=body)) or b""
    data += http.send(h11.EndOfMessage()) or b""
    text = "".join(f"{k}: {v}\r\n" for k, v in shown)
    return data, f"{method} {target.path} HTTP/1.1\r\n{text}\r\n{shown_body}"


async def _next_event(conn: Conn, http: h11.Connection) -> Any:
    """h11's next event, reading from the connection as it needs more bytes. The first
    bytes tell HTTP from another protocol; what h11 refuses is malformed HTTP."""
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                message = f"the response headers are longer than {MAX_HEAD_BYTES} bytes"
            else:  # h11 says e.g. "illegal status line: bytearray(b'HTTP/1.1 2xx')"
                message = _BYTEARRAY.sub(r"\1", str(exc)).replace("illegal ", "malformed ", 1)
            raise ProbeFailure(Reason.PROTOCOL_ERROR, message[:300]) from None
        if event is not h11.NEED_DATA:
            return event
        data = await conn.recv(READ_BYTES)
        if conn.attempt.bytes_read == len(data) and not data.startswith(b"HTTP/"[: len(data)]):
            raise ProbeFailure(
                Reason.PROTOCOL_MISMATCH,
                f"the server does not speak HTTP: {printable(data, 60)!r}",
            )
        http.receive_data(data)


async def read_head(conn: Conn, http: h11.Connection) -> tuple[int, str, dict[str, str]]:
    """Read up to the end of the final response's headers (1xx interim answers, such as 100
    Continue or 103 Early Hints, are passed over). Returns the status code, the reason
    phrase and the headers (lower-case names, last one wins)."""
    while True:
        event = await _next_event(conn, http)
        if isinstance(event, h11.Response):
            break
    phrase = event.reason.decode("latin-1").strip()
    if not phrase:
        try:
            phrase = HTTPStatus(event.status_code).phrase
        except ValueError:
            phrase = ""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
    return event.status_code, phrase, headers


async def _body_prefix(conn: Conn, http: h11.Connection, headers: dict[str, str]) -> str:
    """A short text body (a JSON error, a plain-text reason) for a failure's message, chunked
    or not. Read only for a short grace and never past BODY_PREFIX_BYTES: the verdict is
    already known, and a server that announces a body it never sends must not turn it into
    a timeout."""
    kind = headers.get("content-type", "").lower()
    if not ("json" in kind or kind.startswith("text/plain")):
        return ""  # an HTML error page says no more than the status line
    body = b""

    async def read() -> None:
        nonlocal body
        while len(body) < BODY_PREFIX_BYTES:
            event = await _next_event(conn, http)
            if not isinstance(event, h11.Data):
                return
            body += event.data

    with contextlib.suppress(TimeoutError, ProbeFailure):
        await asyncio.wait_for(read(), BODY_GRACE)
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
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        request, shown = build_request(attempt, http)
        await conn.send(request, shown=shown)
        try:
            status, phrase, headers = await read_head(conn, http)
        except ProbeFailure as failure:
            if failure.reason is Reason.PROTOCOL_ERROR and not attempt.bytes_read:
                # Closed without a byte: an HTTP server always answers something, even 400.
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    "the server closed the connection without answering the HTTP request"
                    " (does this port serve HTTP?)",
                ) from None
            raise
        reason, message = judge(status, phrase, headers, auth)
        attempt.note("*", message)
        if reason is not Reason.OK:
            detail = await _body_prefix(conn, http, headers)
            raise ProbeFailure(reason, f"{message}: {detail}" if detail else message)

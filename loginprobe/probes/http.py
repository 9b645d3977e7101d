"""The HTTP login probe: one hand-written HTTP/1.1 request with the credentials, judged by the
status line alone."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from http import HTTPStatus

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
_HEAD_END = re.compile(rb"\r?\n\r?\n")
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


async def read_head(conn: Conn) -> tuple[int, str, dict[str, str], bytes]:
    """Read up to the end of the final response's headers. Returns the status code, the
    reason phrase, the headers (lower-case names, last one wins) and whatever part of the
    body arrived with them."""
    data = b""
    interim = 0  # bytes of 1xx answers, which count against the same limit
    while True:
        end = _HEAD_END.search(data)
        if end is None:
            if interim + len(data) > MAX_HEAD_BYTES:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    f"the response headers are longer than {MAX_HEAD_BYTES} bytes",
                )
            data += await conn.recv(READ_BYTES)
            if not data.startswith(b"HTTP/"[: len(data)]):
                other = mismatch.foreign(conn.attempt, data)
                raise ProbeFailure(
                    Reason.PROTOCOL_MISMATCH,
                    f"the server does not speak HTTP: {printable(data, 60)!r}"
                    + (f" ({other.message})" if other else ""),
                )
            continue
        head, data = data[: end.start()], data[end.end() :]
        status, phrase, headers = _parse_head(head)
        # 1xx are interim answers (100 Continue, 103 Early Hints); the final one follows.
        if 100 <= status < 200 and status != 101:
            interim += end.end()
            continue
        return status, phrase, headers, data


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"malformed status line {lines[0][:100]!r}")
    status = int(parts[1])
    phrase = parts[2].strip() if len(parts) == 3 else ""
    if not phrase:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, phrase, headers


async def _body_prefix(conn: Conn, headers: dict[str, str], body: bytes) -> str:
    """A short text body (a JSON error, a plain-text reason) for a failure's message. Reads
    on only while Content-Length says more is coming, and never past BODY_PREFIX_BYTES."""
    kind = headers.get("content-type", "").lower()
    if not ("json" in kind or kind.startswith("text/plain")):
        return ""  # an HTML error page says no more than the status line
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return ""  # chunk framing would need parsing for a message's worth of text
    length = headers.get("content-length", "")
    want = min(int(length), BODY_PREFIX_BYTES) if length.isdigit() else len(body)
    if len(body) < want:
        # Only a short grace: the verdict is already known, and a server that announces a
        # body it never sends must not turn it into a timeout.
        with contextlib.suppress(TimeoutError, ProbeFailure):
            body += await asyncio.wait_for(conn.recv_exactly(want - len(body)), BODY_GRACE)
    body = body[:want]
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
            status, phrase, headers, body = await read_head(conn)
        except ProbeFailure as failure:
            if not attempt.bytes_read and failure.reason in (
                Reason.PROTOCOL_ERROR, Reason.TCP_RESET
            ):
                # An HTTP server always answers something, even 400.
                raise mismatch.hung_up(attempt, failure, "the HTTP request") from None
            raise
        reason, message = judge(status, phrase, headers, auth)
        attempt.note("*", message)
        if reason is not Reason.OK:
            detail = await _body_prefix(conn, headers, body)
            raise ProbeFailure(reason, f"{message}: {detail}" if detail else message)

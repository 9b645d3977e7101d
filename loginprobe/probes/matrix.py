"""The Matrix login probe: the client-server API over HTTPS, as a Matrix client logs in.

The dns, tcp and tls phases connect to SERVER[:PORT] of `matrix://USER@SERVER[:PORT]`. The
login phase asks it for /.well-known/matrix/client (server discovery); when that names a
homeserver elsewhere, connects there (its dns, tcp and tls timed in the transcript), then
GET /_matrix/client/versions and POST /_matrix/client/v3/login (m.login.password). After the
verdict, untimed, the new device is logged out so that probing piles up no devices.
Requests are written by hand (credentials and tokens shown redacted), responses read by h11
as in the HTTP probe, on one keep-alive connection while the server allows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import h11

from loginprobe import __version__
from loginprobe.contract import Reason
from loginprobe.probes import http, mismatch
from loginprobe.probes.attempt import REDACTED, Attempt, Conn, ProbeFailure
from loginprobe.probes.transport import establish
from loginprobe.target import Target

WELL_KNOWN = "/.well-known/matrix/client"
VERSIONS = "/_matrix/client/versions"
LOGIN = "/_matrix/client/v3/login"
LOGOUT = "/_matrix/client/v3/logout"
ALPN = ("http/1.1",)
# A Matrix answer here is a few hundred bytes (versions: ~2 KiB); more is refused.
MAX_BODY_BYTES = 64 * 1024
LOGOUT_WAIT = 2.0  # seconds, within what is left of the deadline
DEVICE_NAME = "loginprobe"
# Matrix error codes (client-server API, "Standard error response") and what they mean here;
# M_LIMIT_EXCEEDED is judged apart (it carries the retry delay).
ERRCODES: dict[str, Reason] = {
    "M_FORBIDDEN": Reason.AUTH_REJECTED,
    "M_UNAUTHORIZED": Reason.AUTH_REJECTED,
    "M_USER_DEACTIVATED": Reason.AUTH_NOT_AUTHORIZED,
    "M_USER_LOCKED": Reason.AUTH_NOT_AUTHORIZED,
    "M_USER_SUSPENDED": Reason.AUTH_NOT_AUTHORIZED,
    "M_CONSENT_NOT_GIVEN": Reason.AUTH_NOT_AUTHORIZED,
    "M_RESOURCE_LIMIT_EXCEEDED": Reason.SERVER_UNAVAILABLE,
    # An unknown login type: the server takes no passwords (SSO only, say).
    "M_UNKNOWN": Reason.AUTH_MECHANISM_UNSUPPORTED,
    "M_UNRECOGNIZED": Reason.AUTH_MECHANISM_UNSUPPORTED,
    "M_NOT_JSON": Reason.PROTOCOL_ERROR,
    "M_BAD_JSON": Reason.PROTOCOL_ERROR,
    "M_INVALID_PARAM": Reason.PROTOCOL_ERROR,
}


@dataclass(frozen=True)
class Origin:
    """Where a homeserver's client API is: https://HOST:PORT/PREFIX."""

    host: str
    port: int
    prefix: str = ""  # a base_url's path, without the trailing slash

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"

    def url(self, path: str = "") -> str:
        return f"https://{self.authority}{self.prefix}{path}"


@dataclass
class Answer:
    status: int
    phrase: str
    headers: dict[str, str]
    body: bytes

    @property
    def line(self) -> str:
        return f"HTTP {self.status} {self.phrase}".rstrip()

    @property
    def kind(self) -> str:
        return self.headers.get("content-type", "no content type").split(";")[0].strip()

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object, None when it is not one."""
        try:
            data = json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            return None
        return data if isinstance(data, dict) else None


class Client:
    """One HTTPS connection to an origin, reused while the server keeps it alive."""

    def __init__(self, conn: Conn, origin: Origin) -> None:
        self.conn = conn
        self.origin = origin
        self.reusable = True
        self.calls = 0

    async def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        shown_body: str = "",
        token: str | None = None,
        secret_answer: bool = False,
    ) -> Answer:
        """One request and its whole (bounded) answer. With secret_answer the received
        bytes stay out of the transcript: the caller notes them redacted."""
        target = self.origin.prefix + path
        head = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.origin.authority}",
            f"User-Agent: loginprobe/{__version__}",
            "Accept: application/json",
        ]
        shown = list(head)
        if token is not None:
            head.append(f"Authorization: Bearer {token}")
            shown.append(f"Authorization: Bearer {REDACTED}")
        if method == "POST":
            for lines in (head, shown):
                lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        for lines in (head, shown):
            lines += ["", ""]
        first = self.calls == 0
        self.calls += 1
        await self.conn.send("\r\n".join(head).encode() + body,
                             shown="\r\n".join(shown) + shown_body)
        parser = _parser(self.origin, method, target, body)
        self.conn.redact_received = secret_answer
        try:
            response = await http.read_head(self.conn, parser)
            data = await _read_body(self.conn, response)
        except ProbeFailure as failure:
            if first and not self.conn.attempt.bytes_read and failure.reason in (
                Reason.PROTOCOL_ERROR, Reason.TCP_RESET
            ):
                # An HTTP server always answers something, even 400.
                raise mismatch.hung_up(self.conn.attempt, failure, "an HTTP request") from None
            raise
        finally:
            self.conn.redact_received = False
        self.reusable = parser.our_state is h11.DONE and parser.their_state is h11.DONE
        return Answer(response.status, response.phrase, response.headers, data)


def hello(target: Target) -> bytes:
    """A credential-free opening for the follow-up that asks what a port speaks: Matrix is
    HTTP underneath."""
    return http.hello(target)


def _parser(origin: Origin, method: str, target: str, body: bytes) -> h11.Connection:
    """An h11 client that knows the request sent by hand, to read the answer to it."""
    parser = h11.Connection(h11.CLIENT,
                            max_incomplete_event_size=http.MAX_HEAD_BYTES + http.READ_BYTES)
    headers = [("Host", origin.authority)]
    if method == "POST":
        headers.append(("Content-Length", str(len(body))))
    parser.send(h11.Request(method=method, target=target, headers=headers))
    if body:
        parser.send(h11.Data(data=body))
    parser.send(h11.EndOfMessage())
    return parser


async def _read_body(conn: Conn, response: http.Response) -> bytes:
    """The whole body (h11 undoes chunking), at most MAX_BODY_BYTES."""
    body = bytearray()
    closed = False
    while True:
        try:
            event = response.parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"malformed response body: {exc}") from None
        if event is h11.NEED_DATA:
            if closed:
                raise ProbeFailure(Reason.PROTOCOL_ERROR,
                                   "the server closed the connection inside its answer")
            try:
                response.parser.receive_data(await conn.recv(http.READ_BYTES))
            except ProbeFailure as failure:
                if failure.reason is not Reason.PROTOCOL_ERROR:
                    raise
                closed = True  # the end of a body that runs to the close, or a cut one
                response.parser.receive_data(b"")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                raise ProbeFailure(Reason.PROTOCOL_ERROR,
                                   f"an answer longer than {MAX_BODY_BYTES} bytes; refused")
        else:  # EndOfMessage (or the close that ends it)
            return bytes(body)


async def _connect(attempt: Attempt, origin: Origin, named_by: Origin | None = None) -> Client:
    """A connection to the homeserver when it is not the one already open. Its dns, tcp and
    tls are timed into the transcript (the attempt's phases are those of SERVER's). When
    named_by's .well-known sent us there, a failure says so: the server in the URL is fine,
    and a follow-up there would look at the wrong host."""
    attempt.waiting_for = f"a connection to {origin.url()}"
    target = dataclasses.replace(
        attempt.target, host=origin.host, port=origin.port, srv=None, path=origin.prefix or "/",
        url=f"matrix://{quote(attempt.target.user, safe='')}@{origin.authority}",
    )
    inner = Attempt(target, attempt.options, attempt.clock)
    # One transcript and clock, and the runner closes its connection with the others.
    inner.t0 = attempt.t0
    inner.transcript = attempt.transcript
    inner.conns = attempt.conns
    try:
        conn = await establish(inner, alpn=ALPN)
    except ProbeFailure as failure:
        if named_by is None:
            raise
        attempt.findings.append(
            f"{named_by.url(WELL_KNOWN)} sends clients to {origin.url()}: the failure is there"
        )
        raise ProbeFailure(failure.reason, f"{origin.url()}: {failure.message}") from None
    steps = ", ".join(f"{p.name} {p.duration_ns / 1e6:.2f} ms" for p in inner.phases)
    attempt.note("*", f"connected to {origin.url()}: {steps}")
    return Client(conn, origin)


def _failed(answer: Answer, what: str) -> ProbeFailure:
    """A server-side failure (5xx) of one request."""
    reason = Reason.SERVER_UNAVAILABLE if answer.status == 503 else Reason.SERVER_ERROR
    return ProbeFailure(reason, f"{what} answered {answer.line}")


async def discover(client: Client, attempt: Attempt) -> Origin:
    """Server discovery (the client-server API's .well-known/matrix/client): a 404 means
    the server is its own homeserver; an answer must name one by m.homeserver.base_url."""
    url = client.origin.url(WELL_KNOWN)
    attempt.waiting_for = f"the answer to GET {url}"
    answer = await client.call("GET", WELL_KNOWN)
    if answer.status == 404:
        attempt.note("*", f"no {WELL_KNOWN} (404): the homeserver is {client.origin.url()}")
        return client.origin
    if answer.status >= 500:
        raise _failed(answer, f"GET {url}")
    if answer.status != 200:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR,
            f"GET {url} answered {answer.line}: discovery fails there (only 404, 'none "
            "here', lets a client go on)",
        )
    data = answer.json()
    homeserver = data.get("m.homeserver") if data is not None else None
    base_url = homeserver.get("base_url") if isinstance(homeserver, dict) else None
    if not isinstance(base_url, str):
        found = "no JSON object" if data is None else "no m.homeserver.base_url"
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR,
            f"{url} has {found} ({answer.kind}): a client stops there; publish "
            '{"m.homeserver": {"base_url": "https://..."}} or nothing (404)',
        )
    origin = _origin(base_url, url)
    attempt.note("*", f"{WELL_KNOWN} names the homeserver {origin.url()}")
    return origin


def _origin(base_url: str, where: str) -> Origin:
    try:
        parts = urlsplit(base_url.strip())
        port = parts.port or 443
        host = parts.hostname or ""
    except ValueError:
        host, port, parts = "", 0, urlsplit("")
    if parts.scheme == "http" and host:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR,
            f"{where} names a plain-HTTP homeserver ({base_url[:100]!r}); matrix:// logs in "
            "over HTTPS only",
        )
    if parts.scheme != "https" or not host:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR,
            f"{where} names {base_url[:100]!r} as base_url, which is no https:// URL",
        )
    return Origin(host, port, parts.path.rstrip("/"))


async def versions(client: Client, attempt: Attempt) -> None:
    """GET /_matrix/client/versions: whether a Matrix homeserver answers there at all."""
    url = client.origin.url(VERSIONS)
    attempt.waiting_for = f"the answer to GET {url}"
    answer = await client.call("GET", VERSIONS)
    if answer.status >= 500:
        raise _failed(answer, f"GET {url}")
    data = answer.json() if answer.status == 200 else None
    spoken = data.get("versions") if data is not None else None
    if not isinstance(spoken, list) or not spoken:
        port = attempt.port or attempt.target.port
        attempt.findings.append(
            f"port {port} speaks HTTP over TLS, but {client.origin.url()} serves no Matrix "
            "client API: use the homeserver's name, or publish its "
            f"{WELL_KNOWN} there"
        )
        raise ProbeFailure(
            Reason.PROTOCOL_MISMATCH,
            f"GET {url} answered {answer.line} ({answer.kind}), not a Matrix versions list: "
            "no Matrix homeserver there",
        )
    shown = ", ".join(str(v) for v in spoken[-3:])
    attempt.note("*", f"the homeserver speaks {len(spoken)} API versions, the latest {shown}")


async def login(client: Client, attempt: Attempt) -> str:
    """POST /_matrix/client/v3/login with m.login.password; the access token."""
    user = attempt.target.user
    request: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": attempt.options.password or "",
        "initial_device_display_name": DEVICE_NAME,
    }
    shown = json.dumps({**request, "password": REDACTED})
    attempt.waiting_for = f"the answer to POST {client.origin.url(LOGIN)}"
    answer = await client.call("POST", LOGIN, json.dumps(request).encode(), shown,
                               secret_answer=True)
    data = answer.json()
    shown_answer = json.dumps(_redacted(data))[:2048] if data else answer.kind
    attempt.note("<", f"{answer.line} {shown_answer}")
    if data is None:
        data = {}
    token = data.get("access_token")
    if answer.status == 200 and isinstance(token, str) and token:
        attempt.secrets.append(token)
        if isinstance(data.get("refresh_token"), str):
            attempt.secrets.append(data["refresh_token"])
        attempt.note("*", f"logged in as {data.get('user_id')} (device {data.get('device_id')})")
        return token
    raise ProbeFailure(*judge(answer, data))


def _redacted(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {k: REDACTED if k in ("access_token", "refresh_token") else v
            for k, v in data.items()}


def judge(answer: Answer, data: dict[str, Any]) -> tuple[Reason, str]:
    """A failed login's reason and message, from the Matrix error code where there is one."""
    errcode = data.get("errcode")
    errcode = errcode if isinstance(errcode, str) else ""
    error = data.get("error")
    text = " ".join(error.split())[:200] if isinstance(error, str) else ""
    message = " ".join(x for x in (answer.line, errcode) if x) + (f": {text}" if text else "")
    if errcode == "M_LIMIT_EXCEEDED" or answer.status == 429:
        delay = data.get("retry_after_ms")
        if isinstance(delay, int) and not isinstance(delay, bool):
            message += f" (retry_after_ms {delay}: the server takes logins again in "
            message += f"{delay / 1000:.1f} s)"
        elif answer.headers.get("retry-after"):
            message += f" (Retry-After: {answer.headers['retry-after'][:40]} s)"
        return Reason.SERVER_UNAVAILABLE, message
    if errcode in ERRCODES and (errcode not in ("M_UNKNOWN", "M_UNRECOGNIZED")
                                or answer.status == 400):
        return ERRCODES[errcode], message
    if answer.status in (401, 403):
        return Reason.AUTH_REJECTED, message
    if answer.status == 503:
        return Reason.SERVER_UNAVAILABLE, message
    if answer.status >= 500:
        return Reason.SERVER_ERROR, message
    if answer.status == 404:
        return Reason.PROTOCOL_ERROR, f"{message}: no {LOGIN} on this homeserver"
    return Reason.PROTOCOL_ERROR, message


async def logout(client: Client, attempt: Attempt, token: str) -> None:
    """POST /logout, so that every probe's device is gone again. The verdict is in: nothing
    here may change it, nor run past the deadline (that would turn a success into a
    timeout)."""
    left = attempt.options.timeout - attempt.now() / 1e9 - 0.05
    with contextlib.suppress(ProbeFailure, TimeoutError, OSError):
        async with asyncio.timeout(min(LOGOUT_WAIT, left)):
            if not client.reusable:
                client = await _connect(attempt, client.origin)
            answer = await client.call("POST", LOGOUT, b"{}", "{}", token=token)
            attempt.note("*", "logged out" if answer.status == 200
                         else f"logout answered {answer.line}")
            return
    attempt.note("*", "logout did not finish; the device stays until it expires")


async def probe(attempt: Attempt) -> None:
    target = attempt.target
    server = Origin(target.host, target.port)
    client = Client(await establish(attempt, alpn=ALPN), server)
    with attempt.phase("login"):
        homeserver = await discover(client, attempt)
        if homeserver != server:
            client = await _connect(attempt, homeserver, named_by=server)
        elif not client.reusable:
            client = await _connect(attempt, homeserver)
        await versions(client, attempt)
        if not client.reusable:
            client = await _connect(attempt, homeserver)
        token = await login(client, attempt)
        attempt.waiting_for = None
    # The verdict is in; the logout after it is manners, not login time.
    attempt.verdict()
    await logout(client, attempt, token)

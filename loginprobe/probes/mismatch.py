"""What the other end speaks when it is not what we expected: one classification that every
probe and TLS mode shares, and the bounded follow-up that finds out what a port really speaks."""

from __future__ import annotations

import asyncio
import importlib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from loginprobe.contract import Reason
from loginprobe.probes.attempt import Attempt, ProbeFailure, printable
from loginprobe.probes.phases.tcp import socket_for
from loginprobe.protocols import BY_NAME, PROTOCOLS, Protocol, Scheme
from loginprobe.target import Target

# The follow-up spends at most this share of what is left of the deadline, and never more
# than FOLLOW_UP_MAX_SECONDS, so a port that stalls it cannot stall the attempt.
FOLLOW_UP_SHARE = 0.5
FOLLOW_UP_MAX_SECONDS = 2.0
# Below this there is no time for a useful connection: the follow-up is skipped.
FOLLOW_UP_MIN_SECONDS = 0.05
# How long one follow-up connection waits for an answer once its bytes are sent: a few of
# the attempt's TCP round trips, within these bounds.
ANSWER_MIN_SECONDS = 0.1
ANSWER_MAX_SECONDS = 1.0
# At most this many guesses at another protocol, and this many sibling ports.
MAX_GUESSES = 3
MAX_SIBLINGS = 3
_HEAD_BYTES = 512

# Protocols named by their first bytes, as a label and how a message names them.
_NAMES = {
    "tls": "TLS",
    "http": "HTTP",
    "xmpp": "XMPP",
    "mqtt": "MQTT",
    "ssh": "SSH",
    "smtp": "SMTP",
    "matrix": "Matrix",
    "xmpp+ws": "XMPP over WebSocket",
    "mqtt+ws": "MQTT over WebSocket",
}
_SMTP = re.compile(rb"^2[0-9]{2}[ -]")


def sniff(head: bytes) -> str | None:
    """Which protocol these first bytes from a server are, by the shape every implementation
    of it shares; None when they say nothing certain."""
    if len(head) >= 2 and head[0] in (0x14, 0x15, 0x16, 0x17) and head[1] == 0x03:
        return "tls"  # a TLS record: handshake, alert, change cipher spec or data
    if head.startswith(b"HTTP/"):
        return "http"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith((b"<?xml", b"<stream:", b"<stream ")) or b"jabber:" in head[:300]:
        return "xmpp"
    # A CONNACK: type 0x20, remaining length 2 (3.1.1) or more (5), then flags 0 or 1.
    if len(head) >= 4 and head[0] == 0x20 and 2 <= head[1] < 0x80 and head[2] in (0, 1):
        return "mqtt"
    if head.startswith(b"SSH-"):
        return "ssh"
    if _SMTP.match(head) and b"SMTP" in head[:200].upper():
        return "smtp"
    return None


def describe(kind: str, head: bytes) -> str:
    """A protocol named from first bytes, with what says so (an HTTP status line, ...)."""
    if kind == "http":
        line = head.split(b"\r\n", 1)[0].decode("ascii", "replace")
        return f"HTTP ({line!r})"
    if kind == "tls":
        return "a TLS record"
    return _NAMES.get(kind, kind)


def _scheme(protocol: Protocol, direct: bool) -> Scheme | None:
    """The protocol's scheme in a TLS mode: direct TLS, or without it (plain or STARTTLS)."""
    for scheme in protocol.schemes:
        if (scheme.tls_mode == "direct") == direct:
            return scheme
    return None


def foreign(attempt: Attempt, head: bytes) -> ProbeFailure | None:
    """protocol_mismatch when a server's first bytes are recognisably another protocol than
    the target's (a TLS record where plaintext was expected, HTTP where XMPP was, ...)."""
    kind = sniff(head)
    expected = attempt.target.protocol
    if kind is None or kind == expected:
        return None
    what = describe(kind, head)
    if kind == "tls" and attempt.tls is None:
        direct = _scheme(BY_NAME[expected], direct=True)
        if direct is not None:
            what += f" (a direct-TLS port: use {direct.name}://)"
    return ProbeFailure(
        Reason.PROTOCOL_MISMATCH,
        f"the port answered with {what}, not {_NAMES.get(expected, expected.upper())}",
    )


def hung_up(attempt: Attempt, failure: ProbeFailure, opening: str) -> ProbeFailure:
    """The server reset or closed the connection right after our first bytes, without a byte
    back. Every server of the expected protocol answers its opening, even to refuse it, so
    this suggests another protocol or TLS mode; it stays tcp_reset (a reset) or
    protocol_error (a close) until the follow-up finds evidence of what the port speaks."""
    reset = failure.reason is Reason.TCP_RESET
    name = _NAMES.get(attempt.target.protocol, attempt.target.protocol.upper())
    over = " over TLS" if attempt.tls is not None else ""
    return ProbeFailure(
        Reason.TCP_RESET if reset else Reason.PROTOCOL_ERROR,
        f"the server {'reset' if reset else 'closed'} the connection without answering "
        f"{opening} (does this port serve {name}{over}? a proxy with no server behind it "
        "does the same)",
    )


def suspicious(attempt: Attempt, reason: Reason, message: str) -> bool:
    """Whether a failure fell in the TCP/TLS/first-exchange window in a way that suggests
    the wrong protocol, TLS mode or port, so that a follow-up may find out which."""
    if attempt.findings:
        return False  # the probe itself found out what the port speaks
    if reason is Reason.TCP_REFUSED:
        return bool(BY_NAME[attempt.target.protocol].well_known_ports)
    if reason is Reason.PROTOCOL_MISMATCH:
        return True
    if reason is Reason.PROTOCOL_ERROR and message.startswith("HTTP 400"):
        # Our request is well-formed: a 400 says it reached the wrong kind of port (nginx
        # answers plain HTTP on its TLS port so).
        return attempt.tls is None
    if attempt.bytes_read:
        return False  # the server spoke the protocol to us: the port is right
    if reason is Reason.TLS_HANDSHAKE_FAILED:
        # A TLS alert is TLS spoken back; a hang-up in the handshake says nothing yet.
        return "closed the connection" in message
    return reason in (Reason.TCP_RESET, Reason.PROTOCOL_ERROR)


# -- the follow-up --------------------------------------------------------------------------


@dataclass
class Answer:
    """What one follow-up connection met."""

    kind: str  # refused, reset, closed, silent, data, not_tls, unreachable
    head: bytes = b""
    tls: bool = False  # a TLS handshake completed (or the server sent a TLS alert)


def _hello(protocol: str, target: Target) -> bytes | None:
    """The protocol's credential-free opening, from its probe module's `hello(target)`."""
    module = importlib.import_module(f"loginprobe.probes.{BY_NAME[protocol].probe}")
    make: Callable[[Target], bytes] | None = getattr(module, "hello", None)
    return make(target) if make is not None else None


def _tls_context() -> ssl.SSLContext:
    # The follow-up asks only whether TLS is spoken: trust is the attempt's business.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}


async def exchange(
    attempt: Attempt, address: str, port: int, hello: bytes | None, tls: bool
) -> Answer:
    """One short connection on the attempt's network path (interface, source address):
    (TLS,) our opening, the first bytes back. Never raises for what the server does; the
    caller bounds it in time."""
    loop = asyncio.get_running_loop()
    try:
        sock = socket_for(attempt, address)
    except ProbeFailure:
        return Answer("unreachable")
    try:
        await loop.sock_connect(sock, (address, port))
        reader, writer = await asyncio.open_connection(
            sock=sock,
            ssl=_tls_context() if tls else None,
            server_hostname=attempt.target.tls_server_name if tls else None,
        )
    except ConnectionRefusedError:
        sock.close()
        return Answer("refused")
    except ssl.SSLError as exc:
        sock.close()
        if (exc.reason or "") in _NOT_TLS:
            return Answer("not_tls")
        # An alert is TLS spoken back to us; an EOF in the handshake is a hang-up.
        return Answer("closed") if "EOF" in (exc.reason or "") else Answer("data", tls=True)
    except (ConnectionResetError, BrokenPipeError):
        sock.close()
        return Answer("reset")
    except OSError:
        sock.close()
        return Answer("unreachable")
    except BaseException:
        sock.close()
        raise
    try:
        if hello:
            writer.write(hello)
            await writer.drain()
        try:
            async with asyncio.timeout(_answer_wait(attempt)):
                head = await reader.read(_HEAD_BYTES)
        except TimeoutError:
            return Answer("silent", tls=tls)
        return Answer("data" if head else "closed", head, tls=tls)
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return Answer("reset", tls=tls)
    finally:
        writer.transport.abort()  # nothing polite to say: these bytes were a question


def _answer_wait(attempt: Attempt) -> float:
    tcp = next((p for p in attempt.phases if p.name == "tcp" and p.ok), None)
    rtt = tcp.duration_ns / 1e9 if tcp else ANSWER_MAX_SECONDS / 4
    return min(ANSWER_MAX_SECONDS, max(ANSWER_MIN_SECONDS, 4 * rtt + ANSWER_MIN_SECONDS))


def _port_of(scheme: Scheme | None, host: str, port: int) -> str:
    return f"{scheme.name}://{host}:{port}" if scheme else f"port {port}"


def _what(answer: Answer) -> str:
    return {
        "refused": "refuses connections",
        "reset": "resets the connection",
        "closed": "closes the connection without a byte",
        "silent": "accepts but says nothing",
        "not_tls": "answers, but not with TLS",
        "unreachable": "cannot be reached",
    }.get(answer.kind, "answers")


def _use(kind: str, tls: bool) -> str:
    """Which scheme to use for a port found to speak `kind`, in that TLS mode."""
    protocol = BY_NAME.get(kind)
    scheme = _scheme(protocol, direct=tls) if protocol else None
    return f": use {scheme.name}://" if scheme else ""


def _speaks(port: int, kind: str, tls: bool) -> str:
    over = " over TLS" if tls else ""
    return f"port {port} speaks {_NAMES.get(kind, kind)}{over}{_use(kind, tls)}"


async def follow_up(attempt: Attempt, reason: Reason, found: list[str]) -> bool:
    """Find out what the attempt's port speaks (or, for a refused port, which of the
    protocol's other well-known ports answers). Appends findings to `found` as they come,
    so a caller that cuts it short keeps what was learned; returns True when they show
    the port speaks another protocol or TLS mode. Never sends a credential."""
    target = attempt.target
    address = attempt.resolved_address
    if address is None:
        return False
    port = attempt.port or target.port
    protocol = BY_NAME[target.protocol]
    if reason is Reason.TCP_REFUSED:
        await _siblings(attempt, protocol, address, port, found)
        return False
    own = _hello(protocol.name, target)
    name = _NAMES.get(protocol.name, protocol.name.upper())
    if target.tls_mode != "direct":
        # Does the port speak TLS (and what inside it)?
        answer = await exchange(attempt, address, port, own, True)
        attempt.note("*", f"follow-up: TLS ClientHello to port {port}: {_what(answer)}")
        if answer.tls:
            kind = sniff(answer.head)
            if kind is not None and kind != "tls":
                found.insert(0, _speaks(port, kind, tls=True))
                return True
            if not await _guess(attempt, protocol, address, port, found, tls=True):
                found.insert(0, f"port {port} speaks TLS{_use(protocol.name, True)}")
            return True
    elif own is not None:
        # Does the port speak our protocol without TLS?
        answer = await exchange(attempt, address, port, own, False)
        kind = sniff(answer.head)
        attempt.note("*", f"follow-up: plaintext {name} opening to port {port}: {_what(answer)}"
                     + (f" ({printable(answer.head, 60)!r})" if answer.head else ""))
        if kind == protocol.name:
            found.insert(0, f"port {port} speaks {name} without TLS{_use(kind, False)}")
            return True
        # Or TLS, with something else inside (an HTTPS port answers plaintext with HTTP 400
        # too, so TLS is asked before the plaintext answer is believed)?
        inside = await exchange(attempt, address, port, own, True)
        attempt.note("*", f"follow-up: TLS ClientHello to port {port}: {_what(inside)}")
        if inside.tls:
            other = sniff(inside.head)
            if other is not None and other not in ("tls", protocol.name):
                found.insert(0, _speaks(port, other, tls=True))
                return True
            return await _guess(attempt, protocol, address, port, found, tls=True)
        if kind is not None and kind != "tls":
            found.insert(0, _speaks(port, kind, tls=False))
            return True
    return await _guess(attempt, protocol, address, port, found, tls=False)


async def _guess(
    attempt: Attempt, protocol: Protocol, address: str, port: int, found: list[str],
    tls: bool,
) -> bool:
    """Our openings of the other protocols, side by side: whichever the port answers names
    what it speaks. The protocol whose default port this is goes first."""
    others = [p for p in PROTOCOLS if p.name != protocol.name and p.logs_in]
    others.sort(key=lambda p: all(s.default_port != port for s in p.schemes))
    openings = [(p, _hello(p.name, attempt.target)) for p in others]
    # One try per distinct opening: Matrix opens as HTTP does, and HTTP comes first.
    distinct = {hello: p for p, hello in reversed(openings) if hello}
    tries = [(p, hello) for p, hello in openings if hello and distinct[hello] is p]
    tries = tries[:MAX_GUESSES]

    async def ask(other: Protocol, hello: bytes) -> tuple[Protocol, Answer]:
        return other, await exchange(attempt, address, port, hello, tls)

    # The first answer that names a protocol settles it; the rest are not waited for.
    pending = [asyncio.ensure_future(ask(p, hello)) for p, hello in tries]
    answers: list[Answer] = []
    over = "TLS" if tls else "plaintext"
    try:
        for next_answer in asyncio.as_completed(pending):
            other, answer = await next_answer
            answers.append(answer)
            kind = sniff(answer.head)
            attempt.note("*", f"follow-up: {over} {_NAMES.get(other.name)} opening to port "
                         f"{port}: {_what(answer)}")
            if kind is not None and kind != protocol.name and kind != "tls":
                found.insert(0, _speaks(port, kind, tls))
                return True
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if not tls and len(answers) == len(tries) > 0 and all(a.kind == "reset" for a in answers):
        found.append(
            f"port {port} resets every opening, TLS or not (a firewall or proxy that resets "
            "after the handshake, or a server that refuses this client)"
        )
    return False


async def _siblings(
    attempt: Attempt, protocol: Protocol, address: str, port: int, found: list[str]
) -> None:
    """For a refused port: which of the protocol's other well-known ports answer it."""
    ports = [p for p in protocol.well_known_ports if p != port][:MAX_SIBLINGS]
    name = _NAMES.get(protocol.name, protocol.name.upper())
    own = _hello(protocol.name, attempt.target)

    async def one(p: int) -> tuple[int, Scheme | None, Answer]:
        scheme = next((s for s in protocol.schemes if s.default_port == p), None)
        direct = scheme is not None and scheme.tls_mode == "direct"
        return p, scheme, await exchange(attempt, address, p, own, direct)

    for p, scheme, answer in await asyncio.gather(*(one(p) for p in ports)):
        attempt.note("*", f"follow-up: port {p}: {_what(answer)}")
        if answer.kind == "refused":
            continue
        mode = " over direct TLS" if answer.tls else ""
        if sniff(answer.head) == protocol.name:
            use = f": use {_port_of(scheme, attempt.target.host, p)}" if scheme else ""
            found.insert(0, f"nothing listens on {port}, but {p} answers {name}{mode}{use}")
        else:
            found.append(f"nothing listens on {port}; {p} {_what(answer)}")
    if not found and ports:
        found.append(f"nothing listens on {port}, nor on {', '.join(map(str, ports))}")


def budget(attempt: Attempt) -> float:
    """Seconds the follow-up may spend: a share of what is left of the deadline."""
    left = attempt.options.timeout - attempt.now() / 1e9
    return min(FOLLOW_UP_MAX_SECONDS, left * FOLLOW_UP_SHARE)


async def investigate(attempt: Attempt, reason: Reason, message: str) -> tuple[Reason, str]:
    """Run the follow-up inside its budget; record the findings on the attempt and in its
    transcript, and say what is true in the message. The reason stays the attempt's own,
    except a reset from a port shown to speak something else, which is protocol_mismatch."""
    seconds = budget(attempt)
    if seconds < FOLLOW_UP_MIN_SECONDS:
        attempt.note("*", "follow-up skipped: no time left before the deadline")
        return reason, message
    found: list[str] = []
    other = False
    attempt.note("*", f"follow-up: what does the port speak? (at most {seconds:.2f}s)")
    try:
        async with asyncio.timeout(seconds):
            other = await follow_up(attempt, reason, found)
    except TimeoutError:
        attempt.note("*", f"follow-up stopped at its {seconds:.2f}s budget")
    except Exception as exc:  # the attempt's verdict stands whatever happens here
        attempt.note("*", f"follow-up failed: {type(exc).__name__}")
    for line in found:
        attempt.note("*", f"finding: {line}")
    attempt.findings = found
    if found and (other or reason is Reason.TCP_REFUSED):
        message = f"{message}; {found[0]}"
    if other and reason is Reason.TCP_RESET:
        reason = Reason.PROTOCOL_MISMATCH
    return reason, message


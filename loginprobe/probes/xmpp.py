"""The XMPP c2s login probe (RFC 6120): stream, STARTTLS, SASL (SCRAM or PLAIN) and resource
bind, written on the raw stream so every step is timed and every failure has its reason."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

from scramp import ScramException
from scramp.utils import saslprep

from loginprobe.contract import Reason
from loginprobe.probes import mismatch
from loginprobe.probes.attempt import MAX_MESSAGE_BYTES, Attempt, Conn, ProbeFailure, printable
from loginprobe.probes.phases import tls
from loginprobe.probes.transport import establish
from loginprobe.target import Target

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SM = "urn:xmpp:sm:3"  # XEP-0198 stream management
RESOURCE = "loginprobe"
ALPN = ("xmpp-client",)  # XEP-0368
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")  # most preferred first
# A hostile server could ask for billions of PBKDF2 rounds to pin our CPU; real servers use
# 4096..600000.
MAX_SCRAM_ITERATIONS = 1_000_000
# After the login, how long we wait for the server to close its stream too (a clean
# goodbye in its log); the verdict is made by then, so this never changes it.
CLOSE_WAIT = 0.25
_TEXT_LIMIT = 300  # of a server's <text/>, quoted in our message

# <stream:error> conditions (RFC 6120 4.9.3) that are not "protocol_error". The server
# saying it cannot serve (down, overloaded, wrong host, elsewhere) is server_unavailable.
STREAM_ERRORS = {
    "system-shutdown": Reason.SERVER_UNAVAILABLE,
    "resource-constraint": Reason.SERVER_UNAVAILABLE,
    "remote-connection-failed": Reason.SERVER_UNAVAILABLE,
    "connection-timeout": Reason.SERVER_UNAVAILABLE,
    "host-gone": Reason.SERVER_UNAVAILABLE,
    "host-unknown": Reason.SERVER_UNAVAILABLE,
    "see-other-host": Reason.SERVER_UNAVAILABLE,
    "internal-server-error": Reason.SERVER_ERROR,
    "not-authorized": Reason.AUTH_NOT_AUTHORIZED,
    "policy-violation": Reason.AUTH_NOT_AUTHORIZED,
    "conflict": Reason.AUTH_NOT_AUTHORIZED,
}
# SASL <failure/> conditions (RFC 6120 6.5); anything else is protocol_error.
SASL_FAILURES = {
    "not-authorized": Reason.AUTH_REJECTED,
    "credentials-expired": Reason.AUTH_REJECTED,
    "account-disabled": Reason.AUTH_NOT_AUTHORIZED,
    "encryption-required": Reason.STARTTLS_UNAVAILABLE,
    "invalid-mechanism": Reason.AUTH_MECHANISM_UNSUPPORTED,
    "mechanism-too-weak": Reason.AUTH_MECHANISM_UNSUPPORTED,
    "temporary-auth-failure": Reason.SERVER_UNAVAILABLE,
}
# Resource bind <iq type='error'/> conditions; anything else is server_error.
BIND_ERRORS = {
    "not-allowed": Reason.AUTH_NOT_AUTHORIZED,
    "forbidden": Reason.AUTH_NOT_AUTHORIZED,
}


@dataclass
class Element:
    """A parsed stanza: namespace, local name, attributes, children and text."""

    ns: str
    name: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def find(self, ns: str, name: str) -> Element | None:
        return next((c for c in self.children if c.ns == ns and c.name == name), None)

    def condition(self, ns: str) -> str:
        """The defined condition of an error element: its first child in ns other than text."""
        return next((c.name for c in self.children if c.ns == ns and c.name != "text"), "")

    def error_text(self, ns: str) -> str:
        text = self.find(ns, "text")
        return " ".join(text.text.split())[:_TEXT_LIMIT] if text is not None else ""


def _split(qname: str) -> tuple[str, str]:
    ns, _, name = qname.rpartition(" ")  # expat's namespace_separator
    return ns, name


class _Refused(Exception):
    """Raised from an expat callback to stop parsing at once (a DTD)."""


class XmlStream:
    """One XML stream from the server, parsed incrementally as bytes arrive. A fresh one is
    made for every stream (re)start: after STARTTLS and after SASL success (RFC 6120 4.3.3)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.parser = expat.ParserCreate(namespace_separator=" ")
        # Entities are never expanded: any DTD aborts the parse (billion laughs, XXE).
        self.parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        self.parser.StartDoctypeDeclHandler = self._refuse_dtd
        self.parser.EntityDeclHandler = self._refuse_dtd
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._text
        self.parser.StartNamespaceDeclHandler = self._namespace
        self.header: dict[str, str] | None = None  # the <stream:stream> attributes
        self.root: tuple[str, str] | None = None
        self.default_ns: str | None = None
        self.closed = False  # the server sent </stream:stream>
        self.stanzas: list[Element] = []
        self._stack: list[Element] = []
        self._stanza_start = 0  # byte offset where the stanza being parsed began
        self._fed = 0
        self._head = b""  # the first bytes, to say what the port speaks if not XMPP

    # -- expat callbacks ----------------------------------------------------------------

    def _refuse_dtd(self, *args: Any) -> None:
        raise _Refused("the server sent a DTD/entity declaration; refused")

    def _namespace(self, prefix: str | None, uri: str) -> None:
        if prefix is None and self.root is None:
            self.default_ns = uri

    def _start(self, qname: str, attrs: dict[str, str]) -> None:
        ns, name = _split(qname)
        if self.root is None:
            self.root = (ns, name)
            self.header = attrs
            return
        if not self._stack:
            self._stanza_start = self.parser.CurrentByteIndex
        element = Element(ns, name, attrs)
        if self._stack:
            self._stack[-1].children.append(element)
        self._stack.append(element)

    def _end(self, qname: str) -> None:
        if not self._stack:
            self.closed = True  # </stream:stream>
            return
        element = self._stack.pop()
        if not self._stack:
            self.stanzas.append(element)

    def _text(self, data: str) -> None:
        if self._stack:
            self._stack[-1].text += data

    # -- reading --------------------------------------------------------------------------

    async def _feed_more(self) -> None:
        try:
            data = await self.conn.recv()
        except ProbeFailure as failure:
            if self.conn.attempt.bytes_read == 0 and failure.reason in (
                Reason.TCP_RESET,
                Reason.PROTOCOL_ERROR,
            ):
                # Every XMPP server answers a stream header with its own, even to refuse us.
                raise mismatch.hung_up(
                    self.conn.attempt, failure, "the XMPP stream header"
                ) from None
            raise
        if len(self._head) < 64:
            self._head += data[: 64 - len(self._head)]
        self._fed += len(data)
        if self.header is None and not self._may_be_xml():
            # Expat would buffer a run of name characters waiting for it to end; an XMPP
            # stream starts with '<', so anything else is another protocol already.
            raise self._mismatch()
        try:
            self.parser.Parse(data, False)
        except _Refused as exc:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, str(exc)) from None
        except expat.ExpatError as exc:
            if self.header is None:
                raise self._mismatch() from None
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"malformed XML from the server: {expat.errors.messages[exc.code]} "
                f"(line {exc.lineno}, column {exc.offset})",
            ) from None
        # The stream header counts as a stanza here: both are held whole until they end.
        if (
            self.header is None or self._stack
        ) and self._fed - self._stanza_start > MAX_MESSAGE_BYTES:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"the server sent a stanza of more than {MAX_MESSAGE_BYTES} bytes; refused",
            )
        if self.root is not None:
            self._check_header()

    def _may_be_xml(self) -> bool:
        start = self._head.removeprefix(b"\xef\xbb\xbf").lstrip()  # a BOM is allowed
        return start[:1] in (b"", b"<")

    def _mismatch(self) -> ProbeFailure:
        """What the first bytes say the port speaks, since it is not XMPP."""
        other = mismatch.foreign(self.conn.attempt, self._head)
        if other is not None:
            return other
        what = f"data that is not XML ({printable(self._head, 40)!r})"
        return ProbeFailure(Reason.PROTOCOL_MISMATCH, f"the port answered with {what}, not XMPP")

    def _check_header(self) -> None:
        if self.root != (NS_STREAM, "stream"):
            ns, name = self.root or ("", "")
            raise ProbeFailure(
                Reason.PROTOCOL_MISMATCH,
                f"the server opened an XML document <{name}> (namespace {ns!r}), "
                "not an XMPP stream",
            )
        if self.default_ns != NS_CLIENT:
            raise ProbeFailure(
                Reason.PROTOCOL_MISMATCH,
                f"the server opened a stream of namespace {self.default_ns!r}, not jabber:client"
                + (" (a server-to-server port?)" if self.default_ns == "jabber:server" else ""),
            )

    async def opened(self) -> dict[str, str]:
        """Wait for the server's <stream:stream> header; its attributes."""
        while self.header is None:
            await self._feed_more()
        version = self.header.get("version", "")
        if not version.startswith("1."):
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"the server speaks XMPP version {version or '0.9 (no version)'}, not 1.x",
            )
        return self.header

    async def next(self) -> Element:
        """The next top-level element. A stream error or the server's close ends the probe."""
        while not self.stanzas:
            if self.closed:
                raise ProbeFailure(Reason.PROTOCOL_ERROR, "the server closed its XMPP stream")
            await self._feed_more()
        stanza = self.stanzas.pop(0)
        if (stanza.ns, stanza.name) == (NS_STREAM, "error"):
            condition = stanza.condition(NS_STREAM_ERRORS) or "undefined-condition"
            text = stanza.error_text(NS_STREAM_ERRORS)
            raise ProbeFailure(
                STREAM_ERRORS.get(condition, Reason.PROTOCOL_ERROR),
                f"stream error: {condition}" + (f" ({text})" if text else ""),
            )
        return stanza

    async def expect(self, ns: str, *names: str) -> Element:
        stanza = await self.next()
        if stanza.ns != ns or stanza.name not in names:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"expected <{'/'.join(names)}> from the server, got <{stanza.name}> "
                f"(namespace {stanza.ns!r})",
            )
        return stanza


# -- the probe --------------------------------------------------------------------------


def hello(target: Target) -> bytes:
    """Our stream header, for the follow-up that asks whether a port speaks XMPP: every
    XMPP server answers it with its own, even to refuse us."""
    # Attribute values in single quotes, as the XMPP examples do: escape those too.
    domain = escape(target.domain or target.host, {"'": "&apos;"})
    return (
        f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
        f"xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'>"
    ).encode()


async def probe(attempt: Attempt) -> None:
    target = attempt.target
    if target.tls_mode == "direct":
        session = Session(attempt, await establish(attempt, alpn=ALPN))
    else:
        session = Session(attempt, await establish(attempt))
        # STARTTLS negotiation belongs to the tls phase: it is what it takes to get TLS.
        with attempt.phase("tls"):
            await session.starttls()
    await login(attempt, session)


async def login(attempt: Attempt, session: Session) -> None:
    """The login phase on an open transport (TCP and TLS, or a WebSocket): stream, SASL,
    resource bind, then the polite close."""
    with attempt.phase("login"):
        features = await session.open_stream()
        await session.authenticate(features)
        features = await session.open_stream()
        # A held session uses stream management where the server offers it, as mobile
        # SDKs do: after a drop it may resume the session instead of logging in anew.
        managed = (attempt.keep and attempt.options.stream_management
                   and features.find(NS_SM, "sm") is not None)
        resume = attempt.options.resume
        if managed and resume is not None and await session.resume(*resume):
            attempt.note("*", "resumed the previous session (XEP-0198)")
        else:
            jid = await session.bind(features)
            attempt.note("*", f"logged in as {jid}")
            if managed:
                await session.enable_management()
    if attempt.keep:
        attempt.held = session  # a session holder keeps the stream open
        return
    # The verdict is in: the duration ends here, however late the server closes its stream.
    attempt.verdict()
    await session.close()


class Session:
    """One client connection and the server's stream currently in use."""

    def __init__(self, attempt: Attempt, conn: Conn) -> None:
        self.attempt = attempt
        self.conn = conn
        self.stream = XmlStream(conn)
        # XEP-0198: the id to resume this session by ("" when not resumable), stanzas
        # handled from the server, and whether (and how fast) this one resumed an earlier.
        self.sm_id = ""
        self.sm_handled = 0
        self.resumed = False
        self.resume_ns: int | None = None

    async def enable_management(self) -> None:
        """Ask for stream management with resumption; a refusal leaves it off."""
        await self.conn.send(f"<enable xmlns='{NS_SM}' resume='true'/>".encode())
        while True:
            stanza = await self.stream.next()
            if stanza.ns == NS_SM and stanza.name in ("enabled", "failed"):
                break
        if stanza.name == "enabled" and stanza.attrs.get("resume") in ("true", "1"):
            self.sm_id = stanza.attrs.get("id", "")

    async def resume(self, previd: str, handled: int) -> bool:
        """Resume an earlier session instead of binding: True when the server did. Timed:
        resumption's cost beside a full login's is what an SDK saves by it."""
        began = time.monotonic_ns()
        await self.conn.send(
            f"<resume xmlns='{NS_SM}' previd={quoteattr(previd)} h='{handled}'/>".encode())
        stanza = await self.stream.next()
        self.resume_ns = time.monotonic_ns() - began
        if (stanza.ns, stanza.name) == (NS_SM, "resumed"):
            self.sm_id, self.sm_handled, self.resumed = previd, handled, True
            return True
        if (stanza.ns, stanza.name) != (NS_SM, "failed"):
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"unexpected answer to resume: <{stanza.name}>")
        self.attempt.note("*", "the server could not resume the session: full login")
        return False

    async def open_stream(self) -> Element:
        """(Re)start the stream: send our header, read the server's and its features."""
        self.stream = XmlStream(self.conn)
        await self.conn.send(self.opening())
        await self.stream.opened()
        return await self.stream.expect(NS_STREAM, "features")

    def opening(self) -> bytes:
        """What (re)starts our stream: the stream header."""
        return hello(self.attempt.target)

    # What ends our stream.
    closing = b"</stream:stream>"

    async def starttls(self) -> None:
        features = await self.open_stream()
        if features.find(NS_TLS, "starttls") is None:
            raise ProbeFailure(
                Reason.STARTTLS_UNAVAILABLE,
                f"the server offered no STARTTLS (features: {_feature_names(features)})",
            )
        await self.conn.send(f"<starttls xmlns='{NS_TLS}'/>".encode())
        answer = await self.stream.expect(NS_TLS, "proceed", "failure")
        if answer.name == "failure":
            raise ProbeFailure(
                Reason.TLS_HANDSHAKE_FAILED, "the server answered <starttls/> with <failure/>"
            )
        await tls.handshake(self.attempt, self.conn, self.attempt.target.tls_server_name)

    async def authenticate(self, features: Element) -> None:
        offered = _mechanisms(features)
        mechanism = next((m for m in MECHANISMS if m in offered), None)
        if mechanism is None:
            raise ProbeFailure(
                Reason.AUTH_MECHANISM_UNSUPPORTED,
                "no common SASL mechanism: the server offers "
                + (", ".join(offered) or "none")
                + f"; loginprobe supports {', '.join(MECHANISMS)}",
            )
        password = self.attempt.options.password
        if password is None:
            raise ProbeFailure(Reason.AUTH_REJECTED, "no password given")
        user = self.attempt.target.user
        if mechanism == "PLAIN":
            # Only ever sent inside TLS: both modes have completed the handshake by now.
            payload = b"\0" + _saslprep(user).encode() + b"\0" + _saslprep(password).encode()
            await self._send_sasl("auth", mechanism, payload, redact=True)
            await self._sasl_answer("success")
        else:
            await self._scram(mechanism, user, password)

    async def _send_sasl(
        self, element: str, mechanism: str, payload: bytes, redact: bool = False
    ) -> None:
        data = base64.b64encode(payload).decode() or "="
        mech = f" mechanism='{mechanism}'" if element == "auth" else ""
        shown = f"<{element}{mech}>(redacted)</{element}>" if redact else None
        await self.conn.send(
            f"<{element} xmlns='{NS_SASL}'{mech}>{data}</{element}>".encode(), shown
        )

    async def _sasl_answer(self, *names: str) -> Element:
        """The server's next SASL step; a <failure/> ends the probe with its reason."""
        answer = await self.stream.expect(NS_SASL, "failure", *names)
        if answer.name == "failure":
            condition = answer.condition(NS_SASL) or "undefined-condition"
            text = answer.error_text(NS_SASL)
            raise ProbeFailure(
                SASL_FAILURES.get(condition, Reason.PROTOCOL_ERROR),
                f"SASL failure: {condition}" + (f" ({text})" if text else ""),
            )
        return answer

    async def _scram(self, mechanism: str, user: str, password: str) -> None:
        """RFC 5802 / 7677, without channel binding (gs2 header 'n,,')."""
        digest = "sha256" if mechanism == "SCRAM-SHA-256" else "sha1"
        name = _saslprep(user).replace("=", "=3D").replace(",", "=2C")
        client_nonce = _client_nonce()
        client_first_bare = f"n={name},r={client_nonce}"
        await self._send_sasl("auth", mechanism, f"n,,{client_first_bare}".encode())

        challenge = await self._sasl_answer("challenge")
        server_first = _scram_message(challenge.text, "server-first-message")
        fields = _scram_fields(server_first)
        nonce, salt_b64, rounds = fields.get("r", ""), fields.get("s", ""), fields.get("i", "")
        if not nonce.startswith(client_nonce) or len(nonce) == len(client_nonce):
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, "SCRAM: the server's nonce does not extend ours"
            )
        if not rounds.isdigit() or not 0 < int(rounds) <= MAX_SCRAM_ITERATIONS:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"SCRAM: unusable iteration count {rounds!r}")
        salt = _b64decode(salt_b64, "SCRAM salt")

        started = self.attempt.now()
        salted = await _salted_password(digest, password, salt, int(rounds))
        # This is our CPU, not the server's, yet inside the login phase: say how much.
        took_ms = (self.attempt.now() - started) / 1e6
        self.attempt.note("*", f"{mechanism}: {rounds} PBKDF2 rounds took {took_ms:.1f} ms here")
        client_final_bare = f"c=biws,r={nonce}"  # biws: base64 of the gs2 header "n,,"
        auth_message = f"{client_first_bare},{server_first},{client_final_bare}".encode()
        client_key = hmac.digest(salted, b"Client Key", digest)
        stored_key = hashlib.new(digest, client_key).digest()
        signature = hmac.digest(stored_key, auth_message, digest)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", digest)
        expected = hmac.digest(server_key, auth_message, digest)
        client_final = f"{client_final_bare},p={base64.b64encode(proof).decode()}"
        # The proof is password-equivalent for this exchange: never in the transcript.
        await self._send_sasl("response", mechanism, client_final.encode(), redact=True)

        answer = await self._sasl_answer("success", "challenge")
        if answer.name == "challenge":
            # RFC 6120 6.3.10 allows the server-final in a challenge answered by an empty
            # response (older servers do this).
            await self._send_sasl("response", mechanism, b"")
            self._verify_server(_scram_message(answer.text, "server-final-message"), expected)
            await self._sasl_answer("success")
        else:
            self._verify_server(_scram_message(answer.text, "server-final-message"), expected)

    def _verify_server(self, server_final: str, expected: bytes) -> None:
        """The server's signature proves it knows our password too (not an impostor)."""
        fields = _scram_fields(server_final)
        if "e" in fields:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"SCRAM: the server sent error {fields['e']!r}"
            )
        if "v" not in fields:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "SCRAM: the server sent no signature")
        try:
            got = base64.b64decode(fields["v"], validate=True)
        except ValueError:
            got = b""
        if not hmac.compare_digest(got, expected):
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "server signature mismatch")

    async def bind(self, features: Element) -> str:
        """Resource bind (RFC 6120 7); the JID the server gave us."""
        if features.find(NS_BIND, "bind") is None:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"the server offered no resource binding (features: {_feature_names(features)})",
            )
        # A held session gets a resource of its own, as each device of an SDK does: two
        # held at once (one per network path) would otherwise replace each other (conflict).
        resource = f"{RESOURCE}-{secrets.token_hex(4)}" if self.attempt.keep else RESOURCE
        await self.conn.send(
            f"<iq xmlns='{NS_CLIENT}' type='set' id='bind1'><bind xmlns='{NS_BIND}'>"
            f"<resource>{escape(resource)}</resource></bind></iq>".encode()
        )
        while True:
            # Servers may push other stanzas first; the answer is the iq with our id.
            stanza = await self.stream.next()
            if (stanza.ns, stanza.name) == (NS_CLIENT, "iq") and stanza.attrs.get("id") == "bind1":
                break
        kind = stanza.attrs.get("type")
        if kind == "result":
            bound = stanza.find(NS_BIND, "bind")
            jid = bound.find(NS_BIND, "jid") if bound is not None else None
            return jid.text.strip() if jid is not None else "(no JID returned)"
        error = stanza.find(NS_CLIENT, "error")
        condition = error.condition(NS_STANZA_ERRORS) if error is not None else ""
        text = error.error_text(NS_STANZA_ERRORS) if error is not None else ""
        if kind != "error" or not condition:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"unexpected answer to bind: <iq type={kind!r}>"
            )
        raise ProbeFailure(
            BIND_ERRORS.get(condition, Reason.SERVER_ERROR),
            f"resource bind failed: {condition}" + (f" ({text})" if text else ""),
        )

    async def close(self) -> None:
        """End our stream and wait briefly for the server to end its own. The login has
        succeeded by now: nothing here may change the verdict."""
        # Stay inside the runner's deadline: overrunning it would turn a login that
        # succeeded into a timeout.
        left = self.attempt.options.timeout - self.attempt.now() / 1e9 - 0.05
        with contextlib.suppress(ProbeFailure, TimeoutError, OSError):
            async with asyncio.timeout(min(CLOSE_WAIT, left)):
                await self.conn.send(self.closing)
                while not self.stream.closed:
                    await self.stream.next()


def _mechanisms(features: Element) -> list[str]:
    mechanisms = features.find(NS_SASL, "mechanisms")
    if mechanisms is None:
        return []
    return [m.text.strip().upper() for m in mechanisms.children if m.name == "mechanism"]


def _feature_names(features: Element) -> str:
    return ", ".join(c.name for c in features.children) or "none"


def _client_nonce() -> str:
    # A function of its own so tests can replay the RFC 5802/7677 example exchanges.
    return secrets.token_urlsafe(18)


def _saslprep(text: str) -> str:
    """SASLprep (RFC 4013) of a user name or password. A prohibited character (a control
    character, say) fails the login here, without the text in the message."""
    try:
        prepared: str = saslprep(text)
    except ScramException:
        raise ProbeFailure(
            Reason.AUTH_REJECTED,
            "the user name or password has a character SASLprep (RFC 4013) prohibits",
        ) from None
    return prepared


def _b64decode(text: str, what: str) -> bytes:
    """Base64 as the server sent it; a lone '=' is RFC 6120's empty payload."""
    text = "".join(text.split())
    try:
        return base64.b64decode(text if text != "=" else "", validate=True)
    except ValueError:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR, f"the server sent invalid base64 as {what}"
        ) from None


def _scram_message(text: str, what: str) -> str:
    # UTF-8 both ways, so the AuthMessage we sign has exactly the server's bytes.
    try:
        return _b64decode(text, what).decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR, f"the server's SCRAM {what} is not UTF-8"
        ) from None


def _scram_fields(message: str) -> dict[str, str]:
    """'r=...,s=...,i=...' as a dict (values may contain '=')."""
    fields: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            fields.setdefault(key, value)
    return fields


# RFC 5802 section 5.1 lets a client keep SaltedPassword for a (password, salt, count): a
# probe that logs in every few seconds would otherwise spend most of its CPU on PBKDF2
# (~11 ms for prosody's 10,000 rounds). Keyed by a digest, so the cache holds no password.
_SALTED_CACHE: OrderedDict[tuple[str, bytes, bytes, int], bytes] = OrderedDict()
_SALTED_CACHE_SIZE = 256


async def _salted_password(digest: str, password: str, salt: bytes, rounds: int) -> bytes:
    secret = _saslprep(password).encode()
    key = (digest, hashlib.sha256(secret).digest(), salt, rounds)
    salted = _SALTED_CACHE.get(key)
    if salted is None:
        # PBKDF2 blocks; a thread keeps the event loop (other probes, the deadline) running.
        salted = await asyncio.to_thread(hashlib.pbkdf2_hmac, digest, secret, salt, rounds)
        _SALTED_CACHE[key] = salted
        if len(_SALTED_CACHE) > _SALTED_CACHE_SIZE:
            _SALTED_CACHE.popitem(last=False)
    return salted

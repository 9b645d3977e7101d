"""The XMPP probe against real prosody (the servers), and against tiny fake servers for the
faults and server answers prosody never produces."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devstack import certs, fakes
from devstack.servers import Servers
from loginprobe.contract import Reason
from loginprobe.probes import xmpp
from loginprobe.probes.attempt import (
    MAX_MESSAGE_BYTES,
    MAX_TOTAL_BYTES,
    Attempt,
    ProbeFailure,
    ProbeOptions,
)
from loginprobe.probes.run import run_check
from loginprobe.result import Result
from loginprobe.target import parse_target

FAKE_PASSWORD = "fake-Pa55word!"
READ = 65536

# What a fake server says, in the order a login needs it.
HEADER = (
    b"<?xml version='1.0'?><stream:stream from='xmpp.test' id='fake' version='1.0' "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
BIND = b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
BOUND = (
    b"<iq type='result' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<jid>alice@xmpp.test/loginprobe</jid></bind></iq>"
)
END = b"</stream:stream>"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def features(*children: bytes) -> bytes:
    return b"<stream:features>" + b"".join(children) + b"</stream:features>"


def mechanisms(*names: str) -> bytes:
    inner = "".join(f"<mechanism>{name}</mechanism>" for name in names)
    return f"<mechanisms xmlns='{SASL}'>{inner}</mechanisms>".encode()


def sasl(element: str, text: str = "") -> bytes:
    data = base64.b64encode(text.encode()).decode()
    return f"<{element} xmlns='{SASL}'>{data}</{element}>".encode()


def sasl_failure(condition: str, text: str = "") -> bytes:
    extra = f"<text>{text}</text>" if text else ""
    return f"<failure xmlns='{SASL}'><{condition}/>{extra}</failure>".encode()


def stream_error(condition: str, text: str = "") -> bytes:
    ns = "urn:ietf:params:xml:ns:xmpp-streams"
    extra = f"<text xmlns='{ns}'>{text}</text>" if text else ""
    return f"<stream:error><{condition} xmlns='{ns}'/>{extra}</stream:error>".encode() + END


# -- helpers ----------------------------------------------------------------------------


def resolver(servers: Servers) -> tuple[str, int]:
    ip, port = servers.resolver.rsplit(":", 1)
    return ip, int(port)


async def check(
    url: str,
    password: str = FAKE_PASSWORD,
    *,
    servers: Servers | None = None,
    ca_file: Path | None = None,
    deadline: float = 5.0,
) -> Result:
    """One run_check; every result is also checked for the password leaking anywhere."""
    options = ProbeOptions(
        password=password,
        ca_file=str(ca_file or (servers.ca_file if servers else "")) or None,
        resolver=resolver(servers) if servers else None,
        timeout=deadline,
    )
    result = await run_check(parse_target(url), options)
    dumped = json.dumps(result.to_dict(transcript=True))
    assert password not in dumped
    # PLAIN's payload would carry the password in base64: it must be redacted too.
    user = parse_target(url).user
    assert base64.b64encode(f"\0{user}\0{password}".encode()).decode() not in dumped
    return result


def phases(result: Result) -> dict[str, bool]:
    return {p.name: p.ok for p in result.phases}


def assert_reason(result: Result, reason: Reason, *words: str) -> None:
    assert (result.reason, result.reason.step) == (reason, reason.step), result.message
    assert result.success is (reason is Reason.OK)
    for word in words:
        assert word in result.message


def fake_url(port: int, scheme: str = "xmpp") -> str:
    return f"{scheme}://alice@xmpp.test:{port}?host=127.0.0.1"


def recording(received: list[bytes], *replies: bytes) -> fakes.Handler:
    """Like fakes.scripted (one read, one reply), keeping what the client sent."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            data = await reader.read(READ)
            if not data:
                return
            received.append(data)
            writer.write(reply)
            await writer.drain()
        await fakes.stall(reader, writer)

    return handler


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.TestPKI:
    """Certificates for fake direct-TLS servers (the servers keeps its keys to itself)."""
    return certs.make_pki(tmp_path_factory.mktemp("xmpp-pki"))


def server_context(pki: certs.TestPKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.valid.cert, pki.valid.key)
    return ctx


async def probe_directly(url: str, deadline: float) -> tuple[Attempt, ProbeFailure]:
    """Run the probe without run_check, to look at the attempt's byte count afterwards."""
    attempt = Attempt(parse_target(url), ProbeOptions(password=FAKE_PASSWORD, timeout=deadline))
    try:
        with pytest.raises(ProbeFailure) as info:
            async with asyncio.timeout(deadline):
                await xmpp.probe(attempt)
    finally:
        for conn in attempt.conns:
            await conn.close()
    return attempt, info.value


# -- logins against prosody -------------------------------------------------------------


async def test_login_via_srv(servers: Servers) -> None:
    result = await check("xmpp://alice@xmpp.test", servers.password, servers=servers)
    assert_reason(result, Reason.OK)
    assert phases(result) == {"dns": True, "tcp": True, "tls": True, "login": True}
    assert result.dns is not None and result.dns.srv == f"xmpp.test:{servers.xmpp_port}"
    assert result.tls is not None and result.tls.verified
    lines = [t.text for t in result.transcript]
    assert "logged in as alice@xmpp.test/loginprobe" in lines
    assert "</stream:stream>" in [t.text for t in result.transcript if t.direction == ">"]


async def test_login_explicit_port_and_host(servers: Servers) -> None:
    result = await check(fake_url(servers.xmpp_port), servers.password, servers=servers)
    assert_reason(result, Reason.OK)
    # Nothing to resolve: the dns phase is absent, not zero.
    assert phases(result) == {"tcp": True, "tls": True, "login": True}
    assert result.tls is not None and result.tls.subject == "CN=xmpp.test"


async def test_login_direct_tls_via_srv(servers: Servers) -> None:
    result = await check("xmpps://alice@xmpp.test", servers.password, servers=servers)
    assert_reason(result, Reason.OK)
    assert phases(result) == {"dns": True, "tcp": True, "tls": True, "login": True}
    assert result.dns is not None and result.dns.srv == f"xmpp.test:{servers.xmpps_port}"


async def test_login_direct_tls_explicit_port(servers: Servers) -> None:
    result = await check(fake_url(servers.xmpps_port, "xmpps"), servers.password, servers=servers)
    assert_reason(result, Reason.OK)


async def test_wrong_password(servers: Servers) -> None:
    result = await check("xmpp://alice@xmpp.test", "not-the-password", servers=servers)
    assert_reason(result, Reason.AUTH_REJECTED, "SASL failure: not-authorized")
    assert phases(result) == {"dns": True, "tcp": True, "tls": True, "login": False}
    # The client's proof is password-derived: redacted, while the SCRAM start is shown.
    sent = [t.text for t in result.transcript if t.direction == ">"]
    assert "<response>(redacted)</response>" in sent
    assert any("mechanism='SCRAM-SHA-1'" in line for line in sent)


async def test_salted_password_cache_keeps_verdicts_apart_and_holds_no_password(
    servers: Servers,
) -> None:
    # The derived key is cached per (password, salt, rounds): a right and a wrong password
    # in turn must still get their own verdicts, and the cache must not hold the password.
    for password, reason in [
        (servers.password, Reason.OK),
        ("not-the-password", Reason.AUTH_REJECTED),
    ] * 2:
        result = await check("xmpp://alice@xmpp.test", password, servers=servers)
        assert result.reason is reason
    assert xmpp._SALTED_CACHE
    assert all(servers.password.encode() not in b"".join(k[1:3]) for k in xmpp._SALTED_CACHE)


async def test_unknown_user(servers: Servers) -> None:
    result = await check("xmpp://nobody@xmpp.test", servers.password, servers=servers)
    assert_reason(result, Reason.AUTH_REJECTED, "not-authorized")


async def test_disabled_account(servers: Servers) -> None:
    result = await check(
        f"xmpp://{servers.disabled_user}@xmpp.test", servers.password, servers=servers
    )
    assert_reason(result, Reason.AUTH_NOT_AUTHORIZED, "account-disabled")


async def test_unknown_domain(servers: Servers) -> None:
    """prosody answers a stream to a domain it does not host with <host-unknown/>; that
    comes before STARTTLS, so the tls phase is the one that fails."""
    url = f"xmpp://alice@other.test:{servers.xmpp_port}?host=127.0.0.1"
    result = await check(url, servers.password, servers=servers)
    assert_reason(result, Reason.SERVER_UNAVAILABLE, "stream error: host-unknown")
    assert phases(result) == {"tcp": True, "tls": False}


# -- the right host, another protocol -----------------------------------------------------


async def test_http_port(servers: Servers) -> None:
    result = await check(fake_url(servers.http_port), servers.password, servers=servers)
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "HTTP", "400 Bad Request")
    assert phases(result) == {"tcp": True, "tls": False}


async def test_mqtt_port(servers: Servers) -> None:
    """mosquitto takes our '<' for a packet header and hangs up without a byte (a reset,
    as our stream header is still unread). Every XMPP server answers a stream header with
    its own, even to refuse, so hanging up on it silently says the port is not XMPP:
    protocol_mismatch, with the reset named in the message."""
    result = await check(fake_url(servers.mqtt_port), servers.password, servers=servers)
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "without answering the XMPP stream header")


async def test_starttls_against_direct_tls_port(servers: Servers) -> None:
    result = await check(fake_url(servers.xmpps_port), servers.password, servers=servers)
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "xmpps://")


async def test_direct_tls_against_starttls_port(servers: Servers) -> None:
    result = await check(fake_url(servers.xmpp_port, "xmpps"), servers.password, servers=servers)
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "did not answer with TLS")
    assert phases(result) == {"tcp": True, "tls": False}


# -- fake servers: what prosody never says ----------------------------------------------------


async def test_starttls_not_offered() -> None:
    handler = fakes.scripted(HEADER + features(mechanisms("PLAIN")))
    async with fakes.serve(handler) as port:
        result = await check(fake_url(port))
    assert_reason(result, Reason.STARTTLS_UNAVAILABLE, "no STARTTLS", "mechanisms")
    assert phases(result) == {"tcp": True, "tls": False}


async def test_starttls_refused() -> None:
    failure = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + END
    async with fakes.serve(fakes.scripted(HEADER + features(STARTTLS), failure)) as port:
        result = await check(fake_url(port))
    assert_reason(result, Reason.TLS_HANDSHAKE_FAILED, "<failure/>")


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("system-shutdown", Reason.SERVER_UNAVAILABLE),
        ("resource-constraint", Reason.SERVER_UNAVAILABLE),
        ("internal-server-error", Reason.SERVER_ERROR),
        ("policy-violation", Reason.AUTH_NOT_AUTHORIZED),
        ("bad-format", Reason.PROTOCOL_ERROR),
    ],
)
async def test_stream_errors(condition: str, reason: Reason) -> None:
    reply = HEADER + stream_error(condition, "said the server")
    async with fakes.serve(fakes.scripted(reply, then="close")) as port:
        result = await check(fake_url(port))
    assert_reason(result, reason, f"stream error: {condition} (said the server)")


async def test_stream_of_the_wrong_namespace() -> None:
    reply = HEADER.replace(b"jabber:client", b"jabber:server")
    async with fakes.serve(fakes.scripted(reply)) as port:
        result = await check(fake_url(port))
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "jabber:server")


async def test_xml_that_is_not_a_stream() -> None:
    async with fakes.serve(fakes.scripted(b"<?xml version='1.0'?><html><body>")) as port:
        result = await check(fake_url(port))
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "<html>")


async def test_malformed_xml_after_the_stream_start() -> None:
    async with fakes.serve(fakes.scripted(HEADER + b"<stream:features><a></b>")) as port:
        result = await check(fake_url(port))
    assert_reason(result, Reason.PROTOCOL_ERROR, "malformed XML", "mismatched tag")


async def test_garbage() -> None:
    async with fakes.serve(fakes.garbage) as port:
        result = await check(fake_url(port))
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "not XML")


async def test_stall_before_starttls() -> None:
    """The stream header gets no answer. With STARTTLS negotiation inside the tls phase,
    the phase in flight when the deadline passes is tls: tls_timeout."""
    async with fakes.serve(fakes.stall) as port:
        result = await check(fake_url(port), deadline=1.0)
    assert_reason(result, Reason.TLS_TIMEOUT)
    assert phases(result) == {"tcp": True, "tls": False}
    assert result.duration_ns < 1.5e9


async def test_stall_after_direct_tls(pki: certs.TestPKI) -> None:
    """A direct-TLS server that completes the handshake, then says nothing."""
    async with fakes.serve(fakes.stall, server_context(pki)) as port:
        result = await check(fake_url(port, "xmpps"), ca_file=pki.ca_file, deadline=1.0)
    assert_reason(result, Reason.LOGIN_TIMEOUT)
    assert phases(result) == {"tcp": True, "tls": True, "login": False}


async def test_flood_of_non_xml() -> None:
    """Bytes without end from the first one: not XML, so it is not XMPP at all."""
    async with fakes.serve(fakes.flood) as port:
        result = await check(fake_url(port), deadline=3.0)
    assert_reason(result, Reason.PROTOCOL_MISMATCH, "not XML")
    assert result.duration_ns < 2e9


async def test_flood_after_the_stream_header() -> None:
    """Character data without end at stream level: the total read cap stops it."""
    async with fakes.serve(fakes.greeting(HEADER, then="flood")) as port:
        result = await check(fake_url(port), deadline=3.0)
        attempt, failure = await probe_directly(fake_url(port), deadline=3.0)
    assert_reason(result, Reason.PROTOCOL_ERROR, f"more than {MAX_TOTAL_BYTES} bytes")
    assert result.duration_ns < 3e9
    assert failure.reason is Reason.PROTOCOL_ERROR
    assert attempt.bytes_read <= MAX_TOTAL_BYTES + 64 * 1024


async def test_flood_inside_a_stanza() -> None:
    """One stanza that never ends: the per-stanza cap stops it well before the total."""
    flood_start = fakes.greeting(HEADER + b"<stream:features><x>", then="flood")
    async with fakes.serve(flood_start) as port:
        result = await check(fake_url(port), deadline=3.0)
        attempt, _ = await probe_directly(fake_url(port), deadline=3.0)
    assert_reason(result, Reason.PROTOCOL_ERROR, f"stanza of more than {MAX_MESSAGE_BYTES}")
    assert attempt.bytes_read <= MAX_MESSAGE_BYTES + 2 * 64 * 1024


# Nine levels of ten: 10**9 "lol"s if anyone expanded them.
_LOLS = '<!ENTITY lol0 "lol">' + "".join(
    f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
)
BILLION_LAUGHS = (
    f"<?xml version='1.0'?><!DOCTYPE stream:stream [{_LOLS}]>".encode()
    + HEADER.removeprefix(b"<?xml version='1.0'?>")
    + b"<stream:features>&lol9;</stream:features>"
)


async def test_billion_laughs_is_refused_unexpanded() -> None:
    async with fakes.serve(fakes.scripted(BILLION_LAUGHS)) as port:
        result = await check(fake_url(port), deadline=3.0)
    assert_reason(result, Reason.PROTOCOL_ERROR, "DTD/entity declaration; refused")
    assert result.duration_ns < 1e9


async def test_undeclared_entity_is_not_expanded() -> None:
    async with fakes.serve(fakes.scripted(HEADER + b"<stream:features>&xxe;")) as port:
        result = await check(fake_url(port))
    assert_reason(result, Reason.PROTOCOL_ERROR, "undefined entity")


# -- SASL against fake direct-TLS servers -------------------------------------------------

# RFC 7677 section 3: user "user", password "pencil".
RFC7677_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL = (
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

Serve = Callable[[fakes.Handler], Awaitable[Result]]


@pytest.fixture
def serve_tls(pki: certs.TestPKI) -> Serve:
    """Runs a fake direct-TLS server with a handler and probes it as "user"/"pencil"."""

    async def run(handler: fakes.Handler) -> Result:
        async with fakes.serve(handler, server_context(pki)) as port:
            url = f"xmpps://user@xmpp.test:{port}?host=127.0.0.1"
            return await check(url, "pencil", ca_file=pki.ca_file, deadline=3.0)

    return run


def scram_sha256_server(received: list[bytes], server_final: str) -> fakes.Handler:
    return recording(
        received,
        HEADER + features(mechanisms("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256")),
        sasl("challenge", RFC7677_SERVER_FIRST),
        sasl("success", server_final),
        HEADER + features(BIND),
        BOUND,
        END,
    )


async def test_scram_sha256_rfc7677_exchange(
    serve_tls: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SCRAM-SHA-256 is preferred and computed exactly as RFC 7677's example."""
    monkeypatch.setattr(xmpp, "_client_nonce", lambda: RFC7677_NONCE)
    received: list[bytes] = []
    result = await serve_tls(scram_sha256_server(received, RFC7677_SERVER_FINAL))
    assert_reason(result, Reason.OK)
    sent = b"".join(received).decode()
    assert "mechanism='SCRAM-SHA-256'" in sent
    assert base64.b64encode(f"n,,n=user,r={RFC7677_NONCE}".encode()).decode() in sent
    assert base64.b64encode(RFC7677_CLIENT_FINAL.encode()).decode() in sent
    assert "pencil" not in json.dumps(result.to_dict(transcript=True))


async def test_scram_server_final_in_a_challenge(
    serve_tls: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 6120 6.3.10: some servers send the server-final in a <challenge/>, answered by
    an empty <response/> before <success/>."""
    monkeypatch.setattr(xmpp, "_client_nonce", lambda: RFC7677_NONCE)
    received: list[bytes] = []
    handler = recording(
        received,
        HEADER + features(mechanisms("SCRAM-SHA-256")),
        sasl("challenge", RFC7677_SERVER_FIRST),
        sasl("challenge", RFC7677_SERVER_FINAL),
        sasl("success"),
        HEADER + features(BIND),
        BOUND,
        END,
    )
    result = await serve_tls(handler)
    assert_reason(result, Reason.OK)
    assert f"<response xmlns='{SASL}'>=</response>".encode() in received


async def test_scram_server_signature_mismatch(
    serve_tls: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that cannot prove it knows the password is not the server we meant."""
    monkeypatch.setattr(xmpp, "_client_nonce", lambda: RFC7677_NONCE)
    wrong = "v=" + base64.b64encode(b"\0" * 32).decode()
    result = await serve_tls(scram_sha256_server([], wrong))
    assert_reason(result, Reason.PROTOCOL_ERROR, "server signature mismatch")
    assert phases(result)["login"] is False


async def test_plain_is_redacted(serve_tls: Serve) -> None:
    received: list[bytes] = []
    handler = recording(
        received,
        HEADER + features(mechanisms("PLAIN")),
        sasl("success"),
        HEADER + features(BIND),
        BOUND,
        END,
    )
    result = await serve_tls(handler)
    assert_reason(result, Reason.OK)
    assert base64.b64encode(b"\0user\0pencil").decode() in b"".join(received).decode()
    sent = [t.text for t in result.transcript if t.direction == ">"]
    assert "<auth mechanism='PLAIN'>(redacted)</auth>" in sent


async def test_no_common_mechanism(serve_tls: Serve) -> None:
    handler = fakes.scripted(HEADER + features(mechanisms("DIGEST-MD5", "X-OAUTH2")))
    result = await serve_tls(handler)
    assert_reason(result, Reason.AUTH_MECHANISM_UNSUPPORTED, "DIGEST-MD5, X-OAUTH2")


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("credentials-expired", Reason.AUTH_REJECTED),
        ("account-disabled", Reason.AUTH_NOT_AUTHORIZED),
        ("encryption-required", Reason.STARTTLS_UNAVAILABLE),
        ("mechanism-too-weak", Reason.AUTH_MECHANISM_UNSUPPORTED),
        ("temporary-auth-failure", Reason.SERVER_UNAVAILABLE),
        ("malformed-request", Reason.PROTOCOL_ERROR),
    ],
)
async def test_sasl_failures(serve_tls: Serve, condition: str, reason: Reason) -> None:
    handler = fakes.scripted(
        HEADER + features(mechanisms("PLAIN")), sasl_failure(condition, "said the server")
    )
    result = await serve_tls(handler)
    assert_reason(result, reason, f"SASL failure: {condition} (said the server)")


@pytest.mark.parametrize(
    ("condition", "reason"),
    [("not-allowed", Reason.AUTH_NOT_AUTHORIZED), ("internal-server-error", Reason.SERVER_ERROR)],
)
async def test_bind_errors(serve_tls: Serve, condition: str, reason: Reason) -> None:
    error = (
        f"<iq type='error' id='bind1'><error type='cancel'><{condition} "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ).encode()
    handler = fakes.scripted(
        HEADER + features(mechanisms("PLAIN")),
        sasl("success"),
        HEADER + features(BIND),
        error,
    )
    result = await serve_tls(handler)
    assert_reason(result, reason, f"resource bind failed: {condition}")


def test_saslprep_maps_and_prohibits() -> None:
    # RFC 4013: a soft hyphen maps to nothing, a non-ASCII space to a space, compatibility
    # forms are NFKC-normalised; control characters are prohibited, without echoing them.
    assert xmpp._saslprep("I\u00adX") == "IX"
    assert xmpp._saslprep("a\u00a0b") == "a b"
    assert xmpp._saslprep("\u2168") == "IX"
    with pytest.raises(ProbeFailure) as caught:
        xmpp._saslprep("pw\u0007secret")
    assert caught.value.reason is Reason.AUTH_REJECTED
    assert "secret" not in caught.value.message

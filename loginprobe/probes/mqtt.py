"""The MQTT login probe: CONNECT with username and password, read the CONNACK, DISCONNECT."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from loginprobe.contract import Reason
from loginprobe.probes import mismatch
from loginprobe.probes.attempt import REDACTED, Attempt, Conn, ProbeFailure, printable
from loginprobe.probes.transport import establish
from loginprobe.target import Target

KEEPALIVE_SECONDS = 30
# A CONNACK is 2 bytes in 3.1.1; in 5 its properties (reason string, user properties) are
# the only variable part, and no honest server needs more than this for them.
MAX_CONNACK_BYTES = 64 * 1024
# How long to wait for the rest of a reply that is not MQTT, to see what it is instead.
SNIFF_SECONDS = 0.2

# CONNACK codes as (name, reason). 3.1.1 return codes (1-5) and MQTT 5 reason codes
# (>= 0x80) do not overlap, so one table serves both versions, including a 3.1.1-only
# broker that answers a version 5 CONNECT with rc 1.
_CODES: dict[int, tuple[str, Reason]] = {
    0x00: ("Connection accepted", Reason.OK),
    # A version the broker does not speak is fixed in the check's URL (?version=), so it
    # is a config-step mismatch, not a server failure.
    0x01: ("Unacceptable protocol version", Reason.PROTOCOL_MISMATCH),
    0x02: ("Identifier rejected", Reason.AUTH_NOT_AUTHORIZED),
    0x03: ("Server unavailable", Reason.SERVER_UNAVAILABLE),
    0x04: ("Bad user name or password", Reason.AUTH_REJECTED),
    # mosquitto answers 5 for a wrong password and for an unknown user alike.
    0x05: ("Not authorized", Reason.AUTH_REJECTED),
    0x80: ("Unspecified error", Reason.SERVER_ERROR),
    0x81: ("Malformed Packet", Reason.PROTOCOL_ERROR),
    0x82: ("Protocol Error", Reason.PROTOCOL_ERROR),
    0x83: ("Implementation specific error", Reason.SERVER_ERROR),
    0x84: ("Unsupported Protocol Version", Reason.PROTOCOL_MISMATCH),
    0x85: ("Client Identifier not valid", Reason.AUTH_NOT_AUTHORIZED),
    0x86: ("Bad User Name or Password", Reason.AUTH_REJECTED),
    # Strictly "not authorized", but mosquitto answers a wrong password with it, as with 5
    # in 3.1.1: calling it auth_not_authorized would send every such operator to the
    # account's permissions instead of its password.
    0x87: ("Not authorized", Reason.AUTH_REJECTED),
    0x88: ("Server unavailable", Reason.SERVER_UNAVAILABLE),
    0x89: ("Server busy", Reason.SERVER_UNAVAILABLE),
    0x8A: ("Banned", Reason.AUTH_NOT_AUTHORIZED),
    0x8C: ("Bad authentication method", Reason.AUTH_MECHANISM_UNSUPPORTED),
    0x90: ("Topic Name invalid", Reason.PROTOCOL_ERROR),
    0x95: ("Packet too large", Reason.PROTOCOL_ERROR),
    0x97: ("Quota exceeded", Reason.SERVER_UNAVAILABLE),
    0x99: ("Payload format invalid", Reason.PROTOCOL_ERROR),
    0x9A: ("Retain not supported", Reason.PROTOCOL_ERROR),
    0x9B: ("QoS not supported", Reason.PROTOCOL_ERROR),
    0x9C: ("Use another server", Reason.SERVER_UNAVAILABLE),
    0x9D: ("Server moved", Reason.SERVER_UNAVAILABLE),
    0x9F: ("Connection rate exceeded", Reason.SERVER_UNAVAILABLE),
}

# What to do about a code, where its reason's generic hint would not say (0x9C and 0x9D
# name their server reference instead).
_ADVICE: dict[int, str] = {
    0x02: "the broker refused the client identifier: set ?client_id= to one it accepts",
    0x85: "the broker refused the client identifier: set ?client_id= to one it accepts",
    0x87: "a wrong password or an account without permission (mosquitto says this for both)",
    0x89: "the broker is busy: it may be at its connection limit",
    0x8A: "this account or client is banned on the broker",
    0x8C: "the broker wants another authentication method (MQTT 5 enhanced authentication)",
    0x95: "our CONNECT exceeded the broker's maximum packet size",
    0x97: "a broker quota is exhausted (connections, messages)",
    0x9F: "the broker limits the connection rate: checks from this address may run too often",
}

# MQTT 5 property identifiers and their value types (MQTT 5.0 section 2.2.2.2), to walk the
# CONNACK properties; only the reason string and server reference are kept.
_REASON_STRING = 0x1F
_SERVER_REFERENCE = 0x1C
_PROPERTY_TYPES = {
    0x01: "byte", 0x02: "four", 0x03: "string", 0x08: "string", 0x09: "binary",
    0x0B: "varint", 0x11: "four", 0x12: "string", 0x13: "two", 0x15: "string",
    0x16: "binary", 0x17: "byte", 0x18: "four", 0x19: "byte", 0x1A: "string",
    0x1C: "string", 0x1F: "string", 0x21: "two", 0x22: "two", 0x23: "two",
    0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "four", 0x28: "byte",
    0x29: "byte", 0x2A: "byte",
}



def _string(value: bytes) -> bytes:
    """An MQTT string or binary field: two-byte length, then the bytes."""
    return len(value).to_bytes(2, "big") + value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(version: str, client_id: str, user: str, password: str | None) -> bytes:
    """A CONNECT with clean session, no will, and the credentials we have."""
    v5 = version == "5"
    flags = 0x02  # clean session / clean start: a probe must not leave state behind
    payload = _string(client_id.encode())
    if user:
        flags |= 0x80
        payload += _string(user.encode())
    # 3.1.1 forbids a password without a user name; 5 allows it.
    if password is not None and (user or v5):
        flags |= 0x40
        payload += _string(password.encode())
    header = _string(b"MQTT") + bytes([5 if v5 else 4, flags])
    header += KEEPALIVE_SECONDS.to_bytes(2, "big")
    if v5:
        header += b"\x00"  # no properties
    body = header + payload
    return b"\x10" + _varint(len(body)) + body


def parse_properties(data: bytes) -> dict[int, str]:
    """The string-valued CONNACK properties we report. Never raises: a truncated or unknown
    property ends the walk, since the reason code alone decides the verdict."""
    found: dict[int, str] = {}
    i = 0
    while i < len(data):
        kind = _PROPERTY_TYPES.get(data[i])
        ident, i = data[i], i + 1
        if kind is None:
            break
        if kind in ("byte", "two", "four"):
            i += {"byte": 1, "two": 2, "four": 4}[kind]
        elif kind == "varint":
            while i < len(data) and data[i] & 0x80:
                i += 1
            i += 1
        else:
            strings = 2 if kind == "pair" else 1
            for _ in range(strings):
                if i + 2 > len(data):
                    return found
                size = int.from_bytes(data[i : i + 2], "big")
                value = data[i + 2 : i + 2 + size]
                i += 2 + size
            if kind == "string" and i <= len(data):
                found[ident] = value.decode("utf-8", "replace")
    return found


def _describe_code(code: int, version: str, properties: dict[int, str]) -> tuple[Reason, str]:
    name, reason = _CODES.get(code, ("unknown return code", Reason.PROTOCOL_ERROR))
    message = f"CONNACK 0x{code:02X} {name}"
    if reason is Reason.PROTOCOL_MISMATCH:
        other = "5" if version == "3.1.1" else "3.1.1"
        message += f": the server does not speak MQTT {version}; try ?version={other}"
    elif code in _ADVICE:
        message += f": {_ADVICE[code]}"
    if _REASON_STRING in properties:
        message += f" ({properties[_REASON_STRING][:200]!r})"
    if _SERVER_REFERENCE in properties:
        message += f"; server reference {properties[_SERVER_REFERENCE][:200]!r}"
    return reason, message


async def _not_mqtt(conn: Conn, head: bytes) -> ProbeFailure:
    """Name what the server sent instead of a CONNACK. The rest of its first reply has
    usually arrived with the first bytes; wait only briefly for it."""
    with contextlib.suppress(TimeoutError, ProbeFailure):
        head += await asyncio.wait_for(conn.recv(256), SNIFF_SECONDS)
    other = mismatch.foreign(conn.attempt, head)
    if other is not None:
        return ProbeFailure(other.reason, f"{other.message}: {printable(head, 60)!r}")
    return ProbeFailure(
        Reason.PROTOCOL_ERROR,
        f"expected a CONNACK (0x20), got {head[:16].hex(' ')}",
    )


async def read_connack(conn: Conn, version: str) -> tuple[int, dict[int, str]]:
    """Read one CONNACK with bounded reads; returns (return code, string properties)."""
    try:
        head = await conn.recv_exactly(2)  # every CONNACK starts with type and a length byte
    except ProbeFailure as failure:
        if conn.attempt.bytes_read or failure.reason not in (
            Reason.TCP_RESET, Reason.PROTOCOL_ERROR
        ):
            raise
        # A broker answers every CONNECT with a CONNACK, even to refuse it.
        raise mismatch.hung_up(conn.attempt, failure, "our CONNECT") from None
    if head[0] != 0x20:
        raise await _not_mqtt(conn, head)
    length, shift, byte = 0, 0, head[1]
    for count in range(1, 5):  # the remaining length is a varint of at most 4 bytes
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        if count == 4:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, "CONNACK length longer than 4 bytes")
        shift += 7
        byte = (await conn.recv_exactly(1))[0]
    if not 2 <= length <= MAX_CONNACK_BYTES:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"CONNACK with an impossible length {length}")
    body = await conn.recv_exactly(length)
    properties: dict[int, str] = {}
    if version == "5" and length > 2:
        # The properties length is a varint too; whatever follows it is the properties.
        i = 2
        while i < length and body[i] & 0x80:
            i += 1
        properties = parse_properties(body[i + 1 :])
    return body[1], properties


def hello(target: Target) -> bytes:
    """A CONNECT without credentials, for the follow-up that asks whether a port speaks
    MQTT: every broker answers it with a CONNACK, if only to refuse it."""
    return connect_packet(target.params.get("version", "3.1.1"), "loginprobefollowup", "", None)


async def probe(attempt: Attempt) -> None:
    # mosquitto ignores an ALPN offer it has no use for; brokers behind an ALPN-routing
    # proxy (port 443) need it.
    conn = await establish(attempt, alpn=("mqtt",))
    await login(attempt, conn)


async def login(attempt: Attempt, conn: Conn) -> None:
    """The login phase on an open transport (TCP and TLS, or a WebSocket): CONNECT,
    CONNACK, then the DISCONNECT."""
    target = attempt.target
    version = target.params["version"]  # parse_target sets the default
    conn.binary = True
    with attempt.phase("login"):
        # An explicit ?client_id= wins, even empty (the broker then assigns one). The
        # default keeps to the 23 alphanumeric characters every 3.1.1 broker must accept.
        client_id = target.params.get("client_id", f"loginprobe{secrets.token_hex(6)}")
        password = attempt.options.password
        packet = connect_packet(version, client_id, target.user, password)
        shown_password = REDACTED if password is not None else "none"
        await conn.send(
            packet,
            shown=(
                f"CONNECT MQTT {version} client_id={client_id!r} user={target.user!r} "
                f"password={shown_password} clean_session keepalive={KEEPALIVE_SECONDS} "
                f"({len(packet)} bytes)"
            ),
        )
        code, properties = await read_connack(conn, version)
        reason, message = _describe_code(code, version, properties)
        attempt.note("*", message)
        if code != 0:
            raise ProbeFailure(reason, message)
        if attempt.keep:
            attempt.held = conn  # a session holder keeps the connection open
            return
    # The verdict is in; the DISCONNECT after it is manners, not login time.
    attempt.verdict()
    await conn.send(b"\xe0\x00", shown="DISCONNECT")

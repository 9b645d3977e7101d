"""The MQTT over WebSocket login probe: dns, tcp, tls, the upgrade (subprotocol `mqtt`), then
mqtt://'s own login (CONNECT, CONNACK, DISCONNECT) over binary messages."""

from __future__ import annotations

from loginprobe.probes import mqtt, websocket
from loginprobe.probes.attempt import Attempt
from loginprobe.probes.transport import establish


async def probe(attempt: Attempt) -> None:
    conn = await establish(attempt, alpn=("http/1.1",))
    ws = await websocket.upgrade(attempt, conn, "mqtt", text=False)
    await mqtt.login(attempt, ws)

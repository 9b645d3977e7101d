"""Held sessions against the real prosody and mosquitto: keepalives, drops with their reason
(server restart, dead network), reconnects with backoff; the backoff schedule; the CLI's
usage errors."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from devstack import fakes, faults
from devstack.servers import Servers
from loginprobe.agent.backoff import Backoff
from loginprobe.agent.sessions import sdk_backoff
from loginprobe.cli import main
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.probes.session import Event, SessionOptions, Summary, hold_session
from loginprobe.target import parse_target
from tests.probing import options


def _url(servers: Servers, protocol: str) -> str:
    port = servers.xmpp_port if protocol == "xmpp" else servers.mqtt_port
    host = "xmpp.test" if protocol == "xmpp" else "127.0.0.1"
    return f"{protocol}://alice@{host}:{port}"


async def _hold(
    servers: Servers, protocol: str, opts: SessionOptions, backoff: Backoff,
    stream_management: bool = True,
) -> tuple[list[Event], Summary]:
    events: list[Event] = []
    summary = await hold_session(
        parse_target(_url(servers, protocol)),
        options(servers, stream_management=stream_management), opts, backoff, events.append
    )
    return events, summary


def _kinds(events: list[Event]) -> list[str]:
    return [e["event"] for e in events]


def test_backoff_schedule_with_injected_random() -> None:
    top = sdk_backoff(initial=1.0, multiplier=2.0, cap=8.0, rand=lambda: 1.0)
    assert [top.delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    top.reset()
    assert top.delay() == 1.0
    # Full jitter: anywhere from zero up to the ceiling.
    assert sdk_backoff(rand=lambda: 0.0).delay() == 0.0
    half = sdk_backoff(initial=0.5, multiplier=3.0, cap=100.0, rand=lambda: 0.5)
    assert [half.delay() for _ in range(3)] == [0.25, 0.75, 2.25]
    with pytest.raises(ValueError):
        Backoff(base=1.0, cap=2.0, multiplier=0.5)


@pytest.mark.parametrize("protocol", ["xmpp", "mqtt"])
async def test_keepalives_timed_while_held(servers: Servers, protocol: str) -> None:
    events, summary = await _hold(
        servers, protocol, SessionOptions(0.2, 2.0, hold=1.3), sdk_backoff(0.1, 2.0, 0.5)
    )
    assert _kinds(events)[0] == "login" and events[0]["success"]
    keepalives = [e for e in events if e["event"] == "keepalive"]
    assert len(keepalives) >= 3
    assert all(0 < e["rtt_seconds"] < 2.0 for e in keepalives)
    assert (summary.sessions, summary.drops) == (1, 0)
    assert summary.to_event()["keepalive_rtt_seconds"]["p50"] is not None


@pytest.mark.parametrize("protocol,server", [("xmpp", "prosody"), ("mqtt", "mosquitto")])
async def test_server_restart_drop_then_reconnect(
    servers: Servers, protocol: str, server: str
) -> None:
    async def restart() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(servers.server_down, server)
        down = time.monotonic()
        await asyncio.sleep(0.8)
        # From the main thread: the server dies with the thread that started it
        # (pdeathsig), and the loop is only paused while it boots.
        servers.server_up(server)
        restart.downtime = time.monotonic() - down  # type: ignore[attr-defined]

    task = asyncio.create_task(restart())
    # Without stream management: prosody closes a resumable session on restart without a
    # stream error (so that it can be resumed), see the resumption test below.
    events, summary = await _hold(
        servers, protocol, SessionOptions(0.3, 2.0, hold=4.0), sdk_backoff(0.1, 2.0, 0.4),
        stream_management=False,
    )
    await task
    drops = [e for e in events if e["event"] == "drop"]
    assert len(drops) == 1, events
    # prosody ends its stream with <system-shutdown/>; mosquitto just closes, cleanly.
    want = {"xmpp": "server_unavailable", "mqtt": "session_closed"}[protocol]
    assert drops[0]["reason"] == want, drops
    if protocol == "xmpp":
        assert "system-shutdown" in drops[0]["message"]
    reconnects = [e for e in events if e["event"] == "reconnect"]
    assert reconnects and reconnects[-1]["success"]
    assert [e["attempts"] for e in reconnects] == list(range(1, len(reconnects) + 1))
    # The server was down for most of the downtime: drop to logged in covers it.
    assert reconnects[-1]["downtime_seconds"] >= 0.8
    assert (summary.drops, summary.sessions) == (1, 2)


async def test_dead_network_keepalive_timeout_then_recovery(servers: Servers) -> None:
    keepalive, timeout = 0.3, 0.5
    events: list[Event] = []
    dropped = asyncio.Event()

    def emit(event: Event) -> None:
        events.append(event)
        if event["event"] == "drop":
            dropped.set()

    async def session() -> Any:
        return await hold_session(
            parse_target(_url(servers, "mqtt")),
            options(servers, timeout=1.0),
            SessionOptions(keepalive, timeout, hold=6.0),
            sdk_backoff(0.2, 2.0, 0.8),
            emit,
        )

    task = asyncio.create_task(session())
    await asyncio.sleep(0.5)
    with faults.drop_all(servers.mqtt_port):
        cut = time.monotonic()
        async with asyncio.timeout(keepalive + timeout + 5):
            await dropped.wait()
        noticed = time.monotonic() - cut
        await asyncio.sleep(2.0)  # reconnects fail while the rule is there
    summary = await task
    drop = next(e for e in events if e["event"] == "drop")
    assert drop["reason"] == "keepalive_timeout" and drop["step"] == "network"
    assert noticed <= keepalive + timeout + 0.5
    reconnects = [e for e in events if e["event"] == "reconnect"]
    assert len(reconnects) >= 2 and not reconnects[0]["success"]
    assert reconnects[-1]["success"], reconnects
    assert summary.drops == 1


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--hold", "0"], "--hold"),
        (["--hold=-5m"], "--hold"),
        (["--hold", "soon"], "--hold"),
        (["--keepalive", "0"], "--keepalive"),
        (["--keepalive", "100000"], "--keepalive"),
    ],
)
def test_nonsense_hold_or_keepalive_is_a_usage_error(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGINPROBE_PASSWORD", "x")
    assert main(["session", "mqtt://alice@127.0.0.1:1", *argv]) == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["xmpp", "mqtt"])
async def test_tcp_reset_mid_session(servers: Servers, protocol: str) -> None:
    port = servers.xmpp_port if protocol == "xmpp" else servers.mqtt_port
    events: list[Event] = []
    dropped = asyncio.Event()

    def emit(event: Event) -> None:
        events.append(event)
        if event["event"] == "drop":
            dropped.set()

    task = asyncio.create_task(
        hold_session(
            parse_target(_url(servers, protocol)),
            options(servers, timeout=1.0),
            SessionOptions(0.2, 1.0, hold=3.0),
            sdk_backoff(0.1, 2.0, 0.3),
            emit,
        )
    )
    await asyncio.sleep(0.4)
    with faults.reset_all(port):
        async with asyncio.timeout(3):
            await dropped.wait()
    await task
    drop = next(e for e in events if e["event"] == "drop")
    assert drop["reason"] == "tcp_reset", drop
    assert [e for e in events if e["event"] == "reconnect"][-1]["success"]


def test_session_command_json_lines(
    servers: Servers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGINPROBE_PASSWORD", servers.password)
    argv = ["session", _url(servers, "mqtt"), "--hold", "1.2s", "--keepalive", "0.3", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["event"] == "login" and lines[0]["success"]
    assert lines[0]["phases"] and "keepalive" in [e["event"] for e in lines]
    summary = lines[-1]
    assert summary["event"] == "summary"
    assert (summary["sessions"], summary["drops"], summary["uptime_ratio"] > 0.5) == (1, 0, True)
    assert set(summary["keepalive_rtt_seconds"]) == {"p50", "p90", "p99"}
    assert servers.password not in out


@pytest.mark.parametrize("then,reason", [("flood", "protocol_error"), ("close", "session_closed")])
async def test_mqtt_server_that_floods_or_closes_cleanly(then: str, reason: str) -> None:
    # No broker floods or hangs up without a DISCONNECT on demand: a fake one that accepts
    # the login (CONNACK 0) and then does.
    async with fakes.serve(fakes.scripted(b"\x20\x02\x00\x00", then=then)) as port:
        events: list[Event] = []
        await hold_session(
            parse_target(f"mqtt://alice@127.0.0.1:{port}"),
            ProbeOptions(password="x", timeout=2.0),
            SessionOptions(5.0, 1.0, hold=1.0),
            sdk_backoff(0.5, 2.0, 1.0, rand=lambda: 1.0),
            events.append,
        )
    drop = next(e for e in events if e["event"] == "drop")
    assert drop["reason"] == reason, drop
    if then == "flood":
        assert "more than" in drop["message"]  # cut off at the size limit, not after the hold
        assert drop["session_seconds"] < 0.9


def test_session_command_text(
    servers: Servers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGINPROBE_PASSWORD", servers.password)
    where = ["--resolver", servers.resolver, "--ca-file", str(servers.ca_file)]
    argv = ["session", _url(servers, "xmpp"), *where, "--hold", "0.8", "--keepalive", "0.3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert " logged in (" in out and "keepalive round trip" in out
    assert "summary: 1 session(s), 0 drop(s)" in out


async def test_xmpp_resumes_after_a_reset_and_logs_in_anew_after_a_restart(
    servers: Servers,
) -> None:
    """prosody offers stream management (mod_smacks): a session lost to a reset is resumed
    (XEP-0198), timed; one lost to a server restart cannot be and is logged in anew."""
    events: list[Event] = []
    dropped, back = asyncio.Event(), asyncio.Event()

    def emit(event: Event) -> None:
        events.append(event)
        if event["event"] == "drop":
            dropped.set()
        if event["event"] == "reconnect" and event["success"]:
            back.set()

    async def faults_then_restart() -> None:
        await asyncio.sleep(0.6)
        with faults.reset_all(servers.xmpp_port):
            async with asyncio.timeout(3):
                await dropped.wait()
        dropped.clear()
        async with asyncio.timeout(3):
            await back.wait()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(servers.server_down, "prosody")
        async with asyncio.timeout(3):
            await dropped.wait()
        servers.server_up("prosody")

    task = asyncio.create_task(faults_then_restart())
    await hold_session(
        parse_target(_url(servers, "xmpp")), options(servers, timeout=2.0),
        SessionOptions(0.2, 1.0, hold=6.0), sdk_backoff(0.1, 2.0, 0.3), emit)
    await task
    drops = [e for e in events if e["event"] == "drop"]
    # prosody closes a resumable session on restart without a stream error, keeping its
    # count so that a client can be told it cannot resume (mod_smacks, server-stopping).
    assert [d["reason"] for d in drops] == ["tcp_reset", "session_closed"], [
        (d["reason"], d["message"]) for d in drops]
    reconnected = [e for e in events if e["event"] == "reconnect" and e["success"]]
    assert len(reconnected) == 2, events
    assert reconnected[0]["resumed"] and 0 < reconnected[0]["resume_seconds"] < 2.0, reconnected[0]
    # prosody lost its sessions with its restart: tried, refused, a full login instead.
    assert not reconnected[1]["resumed"] and "resume_seconds" in reconnected[1], reconnected[1]
    assert [e for e in events if e["event"] == "keepalive"][-1]["rtt_seconds"] > 0

"""Checks with mode: session in the agent's scheduler, against the real prosody and
mosquitto: the session held per network path, its events (login, keepalive round trips,
drop with reason and phase, reconnect with drop-to-login time) as Reports that survive the
wire, a first login that fails tried again; the config's checks of the mode."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devstack.servers import Servers
from devstack.websocket import WsServers
from loginprobe.agent.config import PasswordSource, load_config
from loginprobe.agent.network_paths import ProbePath
from loginprobe.agent.scheduler import LOCAL, CheckSpec, Scheduler
from loginprobe.agent.uplink import encode
from loginprobe.codec import Report, SessionInfo, from_wire
from loginprobe.config import ConfigError
from loginprobe.wire import collector_pb2 as pb


def _spec(servers: Servers, protocol: str, keepalive: float = 0.2) -> CheckSpec:
    port = servers.xmpp_port if protocol == "xmpp" else servers.mqtt_port
    host = "xmpp.test" if protocol == "xmpp" else "127.0.0.1"
    return CheckSpec.build(
        f"{protocol}-held", f"{protocol}://alice@{host}:{port}", 60.0, 3.0,
        password=PasswordSource(env="LOGINPROBE_TEST_HELD"), ca_file=str(servers.ca_file),
        resolver=f"127.0.0.1:{servers.dns_port}", mode="session", keepalive=keepalive,
    )


def ev(report: Report) -> SessionInfo:
    assert report.session is not None
    return report.session


class Spool:
    """What the agent's spool would receive, each Report through the wire and back."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.changed = asyncio.Event()

    async def sink(self, report: Report) -> None:
        seq = len(self.reports) + 1
        self.reports.append(from_wire(pb.ProbeResult.FromString(encode(report, seq))))
        self.changed.set()

    def kinds(self, path: str | None = None) -> list[str]:
        return [ev(r).kind for r in self.reports if r.session
                and (path is None or r.labels["path"] == path)]

    async def until(self, kind: str, count: int = 1, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while self.kinds().count(kind) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(autouse=True)
def _password(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGINPROBE_TEST_HELD", servers.password)


# mosquitto closes its clients on SIGTERM; a PINGREQ it received but never read as it went
# down turns its close into a reset (the kernel's rule for unread data), so a keepalive every
# 0.2 s sees either: both are what the wire said.
@pytest.mark.parametrize("protocol,server,reasons", [
    ("mqtt", "mosquitto", ("session_closed", "tcp_reset")),
    ("xmpp", "prosody", ("session_closed",))])
async def test_held_per_path_drop_and_reconnect_become_reports(
    servers: Servers, protocol: str, server: str, reasons: tuple[str, ...]
) -> None:
    spool = Spool()
    paths = [ProbePath("one", labels={"region": "eu"}, network_type="wired"),
             ProbePath("two", labels={"region": "eu"}, network_type="wifi")]
    sched = Scheduler(spool.sink, paths, concurrency=1)
    sched.replace(LOCAL, [_spec(servers, protocol)])
    await spool.until("login", 2)
    await asyncio.sleep(0.5)  # a few keepalives
    await asyncio.to_thread(servers.server_down, server)
    down = time.monotonic()
    await spool.until("drop", 2)
    await asyncio.sleep(0.5)
    servers.server_up(server)
    downtime = time.monotonic() - down
    await spool.until("reconnect", 2, within=15.0)
    while sum(1 for r in spool.reports if r.session and ev(r).kind == "reconnect"
              and r.result.success) < 2:
        await spool.until("reconnect", spool.kinds().count("reconnect") + 1, within=15.0)
    await sched.stop()

    for path in ("one", "two"):
        kinds = spool.kinds(path)
        assert kinds[0] == "login" and kinds.index("keepalive") < kinds.index("drop"), [
            (ev(r).kind, r.labels["path"], str(r.result.reason), r.result.message)
            for r in spool.reports]
        mine = [r for r in spool.reports if r.labels["path"] == path]
        login = mine[0]
        assert login.result.success and login.result.phases and ev(login).segment == 1
        assert login.labels["network_type"] == {"one": "wired", "two": "wifi"}[path]
        keepalive = next(r for r in mine if ev(r).kind == "keepalive")
        assert keepalive.result.success and ev(keepalive).keepalive_rtt_ns
        assert all(0 < ns < 2e9 for ns in ev(keepalive).keepalive_rtt_ns)
        drop = next(r for r in mine if ev(r).kind == "drop")
        assert str(drop.result.reason) in reasons and not drop.result.success
        assert ev(drop).phase in ("idle", "keepalive") and ev(drop).session_ns > 0
        assert drop.labels["path"] == path and drop.result.network is not None
        back = [r for r in mine if ev(r).kind == "reconnect"]
        assert [ev(r).attempts for r in back] == list(range(1, len(back) + 1))
        assert back[-1].result.success and ev(back[-1]).segment == 2
        # Drop to logged in again covers the server's downtime.
        assert ev(back[-1]).downtime_ns / 1e9 >= downtime - 0.6
    # Every event got its own place in the one sequence of the spool.
    assert len({r.seq for r in spool.reports}) == len(spool.reports)


async def test_a_failed_first_login_is_tried_again(servers: Servers,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGINPROBE_TEST_HELD", "wrong")
    spool = Spool()
    sched = Scheduler(spool.sink, [ProbePath("default")], concurrency=1)
    sched.replace(LOCAL, [_spec(servers, "mqtt")])
    await spool.until("login", 1)
    first = spool.reports[0]
    assert not first.result.success and str(first.result.reason) == "auth_rejected"
    monkeypatch.setenv("LOGINPROBE_TEST_HELD", servers.password)
    await spool.until("login", 2, within=6.0)  # first backoff: at most 1 s, then 2 s
    await sched.stop()
    logins = [r for r in spool.reports if ev(r).kind == "login"]
    assert any(r.result.success for r in logins[1:]), logins


@pytest.mark.parametrize("check,problem", [
    ({"url": "https://alice@example.test/", "mode": "session"}, "XMPP and MQTT"),
    ({"url": "mqtt://alice@127.0.0.1", "mode": "session", "keepalive": 70000}, "keepalive"),
    ({"url": "mqtt://alice@127.0.0.1", "mode": "hold"}, "mode"),
])
def test_config_refuses_a_session_check_that_cannot_run(
    tmp_path: Path, check: dict[str, object], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({
        "collector": {"address": "127.0.0.1:1", "plaintext": True},
        "spool": {"path": "spool.db"},
        "checks": [{"name": "c", "password_env": "LOGINPROBE_TEST_HELD", **check}],
    }))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert problem in str(err.value) and "agent.yaml:" in str(err.value)


def test_an_assigned_session_check_reaches_the_agent_as_one() -> None:
    """The collector's mode and keepalive travel in the Check message (additive fields),
    and the agent refuses an assigned session check it cannot hold, saying why."""
    from loginprobe.collector.config import Check as AssignedCheck
    from loginprobe.collector.server import check_to_wire

    wire = check_to_wire(AssignedCheck(name="held", url="mqtts://probe@broker.example.com",
                                       mode="session", keepalive=45.0))
    assert (wire.mode, wire.keepalive.ToNanoseconds()) == ("session", 45 * 10**9)
    spec = CheckSpec.build(wire.name, wire.url, 60.0, None, mode=wire.mode,
                           keepalive=wire.keepalive.ToNanoseconds() / 1e9)
    assert (spec.mode, spec.keepalive) == ("session", 45.0)
    plain = check_to_wire(AssignedCheck(name="login", url="mqtts://probe@broker.example.com"))
    assert CheckSpec.build(plain.name, plain.url, 60.0, None, mode=plain.mode).mode == "login"
    with pytest.raises(ValueError, match="XMPP and MQTT"):
        CheckSpec.build("web", "https://probe@example.com/", 60.0, None, mode="session")


@pytest.mark.parametrize("template", [
    "xmpp+wss://alice@xmpp.test:{xmpp_wss_port}/xmpp-websocket",
    "mqtt+wss://alice@mqtt.test:{proxy_https_port}/mqtt",
])
async def test_the_agent_holds_sessions_over_websocket(
    servers: Servers, ws_servers: WsServers, template: str
) -> None:
    """mode: session over WebSocket: each path logs in through the upgrade and keeps the
    session with keepalives, reported like the bare protocols' sessions."""
    url = template.format(**ws_servers.ports())
    spec = CheckSpec.build(
        "ws-held", url, 60.0, 3.0, password=PasswordSource(env="LOGINPROBE_TEST_HELD"),
        ca_file=str(servers.ca_file), resolver=f"127.0.0.1:{servers.dns_port}",
        mode="session", keepalive=0.2,
    )
    spool = Spool()
    sched = Scheduler(spool.sink, [ProbePath("one"), ProbePath("two")], concurrency=1)
    sched.replace(LOCAL, [spec])
    await spool.until("login", 2)
    await asyncio.sleep(3.0)  # a few keepalives, reported when the agent stops
    await sched.stop()
    for path in ("one", "two"):
        mine = [r for r in spool.reports if r.labels["path"] == path]
        login = mine[0]
        assert ev(login).kind == "login" and login.result.success, login.result.message
        assert [p.name for p in login.result.phases][-2:] == ["upgrade", "login"]
        assert any(ev(r).kind == "keepalive" and ev(r).keepalive_rtt_ns for r in mine), [
            (ev(r).kind, str(r.result.reason), r.result.message) for r in mine]
        assert not any(ev(r).kind == "drop" for r in mine)


async def test_keepalives_are_reported_at_most_a_hundred_round_trips_at_a_time(
    servers: Servers,
) -> None:
    """A short keepalive reports its round trips as the session runs, not only once a
    minute or at the end, and no event grows past KEEPALIVE_REPORT_MAX round trips."""
    from loginprobe.agent.held import KEEPALIVE_REPORT_MAX

    spool = Spool()
    sched = Scheduler(spool.sink, [ProbePath("default")], concurrency=1)
    sched.replace(LOCAL, [_spec(servers, "mqtt", keepalive=0.01)])
    await spool.until("keepalive", 1, within=20.0)
    await sched.stop()
    sizes = [len(ev(r).keepalive_rtt_ns) for r in spool.reports if ev(r).kind == "keepalive"]
    assert sizes[0] == KEEPALIVE_REPORT_MAX and max(sizes) <= KEEPALIVE_REPORT_MAX, sizes


async def test_a_stop_waits_for_every_path_to_hand_over_its_last_events(
    servers: Servers,
) -> None:
    """At a stop each path's session reports the round trips it has not reported yet; the
    stop returns only when all of them are in the spool, so the agent's drain sends them
    (one path's session ending first must not end the wait)."""
    spool = Spool()

    async def slow_sink(report: Report) -> None:
        # The agent's spool writes in a thread: some paths' writes finish later than others.
        await asyncio.sleep(0.05 * int(report.labels["path"][1:]))
        await spool.sink(report)

    paths = [ProbePath(f"p{i}") for i in range(4)]
    sched = Scheduler(slow_sink, paths, concurrency=1)
    sched.replace(LOCAL, [_spec(servers, "mqtt", keepalive=0.05)])
    await spool.until("login", len(paths))
    await asyncio.sleep(1.0)
    await sched.stop()
    reported = {r.labels["path"] for r in spool.reports if ev(r).kind == "keepalive"}
    assert reported == {p.name for p in paths}, spool.kinds()

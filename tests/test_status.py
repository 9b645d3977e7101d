"""The /status page: what it shows of a real collector's results, that a hostile server's
words show as text, that no secret reaches it, and who may read it."""

from __future__ import annotations

import os
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from devstack.fleet import Collector, collector_config, new_token
from loginprobe.codec import Report, to_wire
from loginprobe.collector.ingest import Accepted, FleetState
from loginprobe.collector.status import StatusPage, StatusStore
from loginprobe.contract import Reason
from loginprobe.result import Phase, Result, TranscriptLine
from loginprobe.wire import collector_pb2 as pb
from tests.test_collector import Stream

HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"
PASSWORD = "hunter2-never-on-the-page"
LABELS = {"region": "eu-west", "carrier": "acme", "network_type": "wifi", "path": "wifi"}


def attempt(seq: int, ok: bool, message: str = "") -> pb.ProbeResult:
    phases = [Phase("dns", True, 0, 600_000), Phase("tcp", True, 600_000, 200_000),
              Phase("tls", True, 800_000, 7_100_000),
              Phase("login", ok, 7_900_000, 13_500_000, message=message)]
    r = Result(url="xmpp://alice@xmpp.test:5222", protocol="xmpp", success=ok,
               reason=Reason.OK if ok else Reason.AUTH_REJECTED, message=message,
               started_at=datetime.now(UTC), duration_ns=21_400_000, phases=phases)
    return to_wire(Report(r, seq, "xmpp-login", os.urandom(16), labels=LABELS))


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.headers["Content-Type"]), str(response.read().decode())


def render(store: StatusStore, query: str = "", remote: str = "127.0.0.1",
           auth: str = "", token: str | None = None) -> tuple[str, str]:
    got: list[str] = []
    page = StatusPage(store, token)
    environ = {"QUERY_STRING": query, "REMOTE_ADDR": remote, "HTTP_AUTHORIZATION": auth}
    body = b"".join(page(environ, lambda status, headers: got.append(status)))
    return got[0], body.decode()


def test_a_hostile_server_message_shows_as_text() -> None:
    store = StatusStore(FleetState(), max_attempts=3)
    store.write(Accepted("a1", {}, [attempt(1, True),
                                    attempt(2, False, f"SASL failure: {HOSTILE}")]))
    status, html = render(store)
    assert status == "200 OK"
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert "auth_rejected" in html and Reason.AUTH_REJECTED.hint.split(";")[0] in html
    _, detail = render(store, "check=xmpp-login&agent=a1&path=wifi")
    assert "<script" not in detail and "&lt;script&gt;" in detail
    assert "<details" in detail and "login" in detail


def test_memory_is_bounded_per_check_agent_and_path() -> None:
    store = StatusStore(FleetState(), max_attempts=3)
    for seq in range(1, 50):
        store.write(Accepted("a1", {}, [attempt(seq, seq % 2 == 0, "no")]))
    assert len(store.series[("xmpp-login", "a1", "wifi")].attempts) == 3
    assert len(store.failures) <= 20


def test_only_loopback_or_the_bearer_token_may_read() -> None:
    store = StatusStore(FleetState())
    assert render(store, remote="192.0.2.7")[0].startswith("403")
    assert render(store, remote="::1")[0] == "200 OK"
    assert render(store, remote="127.0.0.1", token="s3cret")[0].startswith("403")
    assert render(store, remote="192.0.2.7", auth="Bearer s3cret",
                  token="s3cret")[0] == "200 OK"
    _, html = render(store, auth="Bearer s3cret", token="s3cret")
    assert "s3cret" not in html


async def test_a_real_collector_serves_the_page(tmp_path: Path) -> None:
    token, digest = new_token()
    config = collector_config(
        tmp_path, pki=None, agents=[{"id": "a1", "token_sha256": digest}],
        checks=[{"name": "xmpp-login", "url": "xmpp://alice@xmpp.test",
                 "password_ref": "ALICE"}])
    c = Collector(tmp_path / "collector", config)
    c.start_healthy()
    stream = Stream(c, token)
    try:
        await stream.open({"region": "eu-west", "carrier": "acme", "network_type": "wifi"})
        await stream.ack(pb.ConnectRequest(results=pb.ResultBatch(results=[
            attempt(1, True), attempt(2, False, f"SASL failure: {HOSTILE}")])))
        url = f"http://{config['metrics_listen']}/status"
        content_type, html = get(url)
        assert content_type.startswith("text/html")
        assert "a1" in html and "xmpp-login" in html and "wifi" in html
        assert "failing since" in html and "auth_rejected" in html
        assert "<script" not in html and token not in html and PASSWORD not in html
        # /metrics is still there, on the same listener.
        assert "loginprobe_attempts" in get(c.metrics_url)[1]
    finally:
        await stream.close()
        c.stop()


def test_the_grid_counts_every_attempt_of_the_last_hour_and_the_fleet_its_versions() -> None:
    fleet = FleetState(connected={"a1": {}}, versions={"a1": "0.1.0"},
                       connected_since={"a1": 1_764_000_000.0})
    store = StatusStore(fleet, max_attempts=3)  # keeps 3 attempts, counts all 20
    store.write(Accepted("a1", {}, [attempt(i + 1, i % 4 != 0) for i in range(20)]))
    _, html = render(store)
    assert "success 75.0% of 20, median 21." in html  # 21.4 ms to within 2%
    assert "0.1.0" in html and "yes since 2025-11-24 16:00:00 UTC" in html


def test_a_failed_attempt_shows_its_redacted_transcript() -> None:
    store = StatusStore(FleetState(), max_attempts=3)
    failed = attempt(1, False, "SASL failure: not-authorized")
    failed.transcript.add(offset_ns=1_000_000, direction=">",
                          text="<auth mechanism='PLAIN'>(redacted)</auth>")
    failed.transcript.add(offset_ns=2_000_000, direction="<", text=f"<failure>{HOSTILE}")
    store.write(Accepted("a1", {}, [failed]))
    _, detail = render(store, "check=xmpp-login&agent=a1&path=wifi")
    assert "transcript" in detail and "(redacted)" in detail
    assert "&lt;failure&gt;&lt;script&gt;" in detail and "<script" not in detail


def test_only_the_newest_attempt_keeps_its_transcript_and_the_wire_caps_it() -> None:
    store = StatusStore(FleetState(), max_attempts=3)
    for seq in (1, 2):
        failed = attempt(seq, False, "SASL failure: not-authorized")
        failed.transcript.add(offset_ns=seq, direction="<", text=f"<failure seq={seq}/>")
        store.write(Accepted("a1", {}, [failed]))
    _, detail = render(store, "check=xmpp-login&agent=a1&path=wifi")
    assert "seq=2" in detail and "seq=1" not in detail

    r = Result(url="xmpp://alice@xmpp.test:5222", protocol="xmpp", success=False,
               reason=Reason.PROTOCOL_ERROR, message="chatty", started_at=datetime.now(UTC),
               duration_ns=1, phases=[],
               transcript=[TranscriptLine(i, "<", "x" * 100) for i in range(300)])
    sent = to_wire(Report(r, 1, "c", os.urandom(16))).transcript
    assert len(sent) == 82 and sent[-1].text == "... (219 more lines)"  # 8,192 characters

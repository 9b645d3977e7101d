"""The collector's parts without a process: identity from credentials, assignment and its
changes, the batch path's dedupe and refusals, the results log's recovery, the rate bucket."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from loginprobe.codec import Report, check_wire, from_wire, to_wire
from loginprobe.collector.assign import assigned, changes
from loginprobe.collector.auth import AuthError, Credential, credential, identify
from loginprobe.collector.config import Agent, Check
from loginprobe.collector.exporters.results_log import ResultsLog
from loginprobe.collector.ingest import Accepted, FleetState, Ingest, Refused
from loginprobe.collector.server import Bucket, check_to_wire
from loginprobe.contract import Reason
from loginprobe.result import Phase, Result
from loginprobe.wire import collector_pb2 as pb


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


AGENTS = [
    Agent(id="t1", token_sha256=sha("secret-1"), labels={"region": "eu-west"}),
    Agent(id="t2", token_sha256=sha("secret-2").upper()),  # stored upper case: normalised
    Agent(id="c1", cert_cn="agent-c1"),
    Agent(id="s1", cert_san="spiffe://fleet/s1"),
    Agent(id="r1", token_sha256=sha("secret-r"), revoked=True),
]


def cred(token: str | None = None, cn: str | None = None, *sans: str) -> Credential:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    auth = {}
    if cn:
        auth["x509_common_name"] = [cn.encode()]
    if sans:
        auth["x509_subject_alternative_name"] = [s.encode() for s in sans]
    return credential(metadata, auth)


def test_identity_from_token_or_certificate() -> None:
    assert identify(cred("secret-1"), AGENTS).id == "t1"
    assert identify(cred("secret-2"), AGENTS).id == "t2"
    assert identify(cred(cn="agent-c1"), AGENTS).id == "c1"
    assert identify(cred(None, "other", "dns.test", "spiffe://fleet/s1"), AGENTS).id == "s1"
    # A certificate the registry does not know, with a token it does: the token decides.
    assert identify(cred("secret-1", "stranger"), AGENTS).id == "t1"
    assert cred("secret-1").token_sha256 == sha("secret-1")  # only the hash is kept


@pytest.mark.parametrize(("c", "unknown", "words"), [
    (cred(), True, "no credential"),
    (cred("secret-3"), True, "unknown credential"),
    (cred(cn="agent-zz"), True, "unknown credential"),
    (cred("secret-r"), False, "agent r1 is revoked"),
])
def test_refused_credentials(c: Credential, unknown: bool, words: str) -> None:
    with pytest.raises(AuthError) as err:
        identify(c, AGENTS)
    assert err.value.unknown is unknown and words in str(err.value)
    assert "secret" not in str(err.value)


def test_assignment_by_selector_and_changes() -> None:
    every = Check(name="every", url="tcp://h:1")
    eu = Check(name="eu", url="tcp://h:2", selector={"region": "eu-west"})
    eu_cell = Check(name="eu-cell", url="tcp://h:3",
                    selector={"region": "eu-west", "network_type": "cellular"})
    checks = [every, eu, eu_cell]
    assert set(assigned(checks, {"region": "eu-west", "network_type": "cellular"})) == {
        "every", "eu", "eu-cell"}
    assert set(assigned(checks, {"region": "eu-west", "network_type": "wifi"})) == {"every", "eu"}
    assert set(assigned(checks, {})) == {"every"}

    old = assigned(checks, {"region": "eu-west"})
    moved = Check(name="every", url="tcp://h:1", selector={"region": "eu-west"})
    slower = Check(name="eu", url="tcp://h:2", interval=120, selector={"region": "eu-west"})
    new = assigned([moved, slower], {"region": "eu-west"})
    upsert, remove = changes(old, new)
    # Only the selector of "every" changed: nothing the agent runs, so nothing to send.
    assert [c.name for c in upsert] == ["eu"] and remove == []
    assert changes(new, {}) == ([], ["every", "eu"])


def test_check_on_the_wire_carries_a_password_name_only() -> None:
    msg = check_to_wire(Check.model_validate({
        "name": "x", "url": "xmpp://alice@xmpp.test", "interval": "1m", "timeout": "2500ms",
        "password_ref": "ALICE_PW", "insecure": True}))
    assert (msg.interval.seconds, msg.timeout.ToMilliseconds()) == (60, 2500)
    assert msg.password_ref == "ALICE_PW" and msg.insecure


def result(seq: int, reason: Reason = Reason.OK, check: str = "c") -> pb.ProbeResult:
    ok = reason is Reason.OK
    r = Result(url="tcp://h:1", protocol="tcp", success=ok, reason=reason, message="",
               started_at=datetime.now(UTC), duration_ns=5, phases=[Phase("tcp", ok, 0, 5)])
    return to_wire(Report(r, seq, check, os.urandom(16), labels={"region": "claimed"}))


def test_check_wire_refuses_what_from_wire_cannot_decode() -> None:
    good = result(1)
    check_wire(good)
    assert from_wire(good).seq == 1
    broken = []
    for field, value in (("reason", "nope"), ("step", "account"), ("success", False)):
        msg = result(1)
        setattr(msg, field, value)
        broken.append(msg)
    far = result(1)
    far.tls.not_after_unix = 2**62
    broken.append(far)
    for msg in broken:
        with pytest.raises(ValueError):
            check_wire(msg)
        with pytest.raises(ValueError):
            from_wire(msg)


class Collect:
    """A sink that hands each batch to a function."""

    def __init__(self, fn: Callable[[Accepted], object]) -> None:
        self._fn = fn

    def write(self, batch: Accepted) -> None:
        self._fn(batch)

    def close(self) -> None:
        pass


def test_batches_dedupe_refuse_and_ack(tmp_path: Path) -> None:
    fleet = FleetState()
    seen: list[int] = []
    ingest = Ingest(fleet, [Collect(lambda b: seen.extend(r.seq for r in b.reports()))])
    assert ingest.hello("a", 0) == 0
    assert ingest.batch("a", {}, [result(1), result(2), result(3)]) == 3
    assert ingest.batch("a", {}, [result(2), result(3), result(4)]) == 4  # a replay overlaps
    assert ingest.batch("a", {}, []) == 4
    bad = result(5)
    bad.reason = "nope"
    assert ingest.batch("a", {}, [bad, result(7)]) == 7  # a gap (spool dropped 6) is fine
    assert seen == [1, 2, 3, 4, 7]
    assert (fleet.received["a"], fleet.duplicates["a"], fleet.rejected["invalid_result"]) == (
        5, 2, 1)
    # Backwards within one batch: refused whole, nothing changes.
    with pytest.raises(Refused) as err:
        ingest.batch("a", {}, [result(9), result(8)])
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                  "out_of_order")
    with pytest.raises(Refused):
        ingest.batch("a", {}, [result(0)])
    assert ingest.high_water["a"] == 7 and seen[-1] == 7
    # What an agent says was acked raises the mark of a collector that forgot it.
    assert ingest.hello("b", 40) == 40
    assert ingest.batch("b", {}, [result(40), result(41)]) == 41
    assert fleet.duplicates["b"] == 1


def test_reports_carry_the_credentials_agent_and_fixed_labels() -> None:
    reports = []
    ingest = Ingest(FleetState(), [Collect(lambda b: reports.extend(b.reports()))])
    ingest.batch("a1", {"region": "eu-west"}, [result(1)])
    assert reports[0].agent == "a1" and reports[0].labels == {"region": "eu-west"}


def test_results_log_recovers_marks_and_drops_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    log = ResultsLog(path)
    ingest = Ingest(FleetState(), [log])
    ingest.batch('a "quoted"', {}, [result(1), result(2)])
    ingest.batch("b", {}, [result(7)])
    log.close()
    with path.open("a") as f:
        f.write('{"agent": "b", "seq": 8, "che')  # a kill in the middle of a write
    again = ResultsLog(path)
    assert again.high_water == {'a "quoted"': 2, "b": 7}
    Ingest(FleetState(), [again], dict(again.high_water)).batch("b", {}, [result(7), result(8)])
    again.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[-1].startswith('{"agent": "b", "seq": 8, "check": "c"')


def test_bucket_delays_above_the_rate() -> None:
    bucket = Bucket(10.0)
    delays = [bucket.delay() for _ in range(15)]
    assert delays[:10] == [0.0] * 10  # a second's worth at once
    assert delays[10] == pytest.approx(0.1, abs=0.01)
    assert delays[14] == pytest.approx(0.5, abs=0.01)  # waits add up, order is kept

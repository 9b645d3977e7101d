"""The agent's parts on their own: backoff, config file errors, and the scheduler (spread,
concurrency limit, reload, stop, per-check timeout) with a fake or a real probe."""

from __future__ import annotations

import asyncio
import collections
import itertools
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loginprobe.agent.backoff import Backoff
from loginprobe.agent.config import AgentConfig, load_config
from loginprobe.agent.network_paths import ProbePath
from loginprobe.agent.scheduler import ASSIGNED, LOCAL, CheckSpec, Scheduler, first_offset
from loginprobe.codec import Report
from loginprobe.config import ConfigError
from loginprobe.contract import Reason
from loginprobe.probes.attempt import ProbeOptions
from loginprobe.result import Result
from loginprobe.target import Target

ROOT = Path(__file__).resolve().parent.parent

# ---- backoff ----------------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    top = Backoff(base=0.5, cap=10.0, rand=lambda: 1.0)
    assert [top.delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    bottom = Backoff(base=0.5, cap=10.0, rand=lambda: 0.0)
    assert [bottom.delay() for _ in range(3)] == [0, 0, 0]
    top.reset()
    assert top.delay() == 0.5


def test_backoff_full_jitter_stays_within_cap_and_spreads_over_all_of_it() -> None:
    b = Backoff(base=0.5, cap=10.0)
    delays = [b.delay() for _ in range(20_000)]
    assert all(0 <= d <= 10.0 for d in delays)
    late = delays[100:]  # long past the cap: uniform over [0, cap], not bunched near it
    assert min(late) < 0.1 and max(late) > 9.9
    assert 4.5 < sum(late) / len(late) < 5.5
    assert Backoff(cap=10.0).attempt == 0  # nothing sleeps, nothing counts until asked


# ---- config -----------------------------------------------------------------------------

GOOD = """\
collector:
  address: 127.0.0.1:7443
  plaintext: true
labels: {region: eu-west, carrier: orange, network_type: cellular, site: lab-1}
checks:
  - name: tcp
    url: tcp://127.0.0.1:9
    interval: 30s
passwords:
  chat: {env: AGENT_TEST_PW}
spool: {path: /tmp/agent-test-spool.db, max_bytes: 64MiB, max_age: 1h}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_a_good_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_TEST_PW", "s3cret")
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.labels.as_dict() == {
        "region": "eu-west", "carrier": "orange", "network_type": "cellular", "site": "lab-1"
    }
    assert cfg.spool.max_bytes == 64 * 2**20 and cfg.spool.max_age == 3600
    assert cfg.checks[0].interval == 30 and cfg.checks[0].effective_timeout == 10
    assert cfg.passwords["chat"].read() == "s3cret"


def test_the_example_config_in_deploy_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGINPROBE_AGENT_TOKEN", "CHAT_PASSWORD", "BROKER_PASSWORD",
                 "MATRIX_PASSWORD"):
        monkeypatch.setenv(name, "x")
    cfg = load_config(ROOT / "deploy" / "agent.example.yaml")
    assert isinstance(cfg, AgentConfig) and cfg.collector.token() == "x"


@pytest.mark.parametrize(
    ("change", "line", "words"),
    [
        (("tcp://127.0.0.1:9", "tcp://127.0.0.1"), 7, "checks.0.url: no port"),
        (("127.0.0.1:7443", "192.0.2.10:7443"), 3, "only allowed for a loopback collector"),
        (("network_type: cellular", "network_type: satellite"), 4, "labels.network_type"),
        (("interval: 30s", "interval: soon"), 8, "expected a duration"),
        (("max_bytes: 64MiB", "max_bytes: lots"), 11, "expected a size"),
        (("{env: AGENT_TEST_PW}", "{env: AGENT_TEST_PW, file: /etc/hostname}"), 10,
         "exactly one of env"),
        # The token never lives in the file: there is no key for it.
        (("plaintext: true", "plaintext: true\n  token: abc"), 4,
         "collector.token: unknown key 'token': did you mean 'token_env'?"),
    ],
)
def test_a_bad_config_names_file_line_and_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, str], line: int,
    words: str,
) -> None:
    monkeypatch.setenv("AGENT_TEST_PW", "s3cret")
    message = refused(tmp_path, GOOD.replace(*change))
    assert f"{tmp_path / 'agent.yaml'}:{line}:" in message and words in message, message


def test_secrets_from_an_unset_variable_are_refused_by_name_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENT_TEST_PW", raising=False)
    message = refused(tmp_path, GOOD)
    assert ":10: passwords.chat.env: the environment variable AGENT_TEST_PW is " \
           "not set" in message
    monkeypatch.setenv("AGENT_TEST_PW", "s3cret")
    text = GOOD.replace("url: tcp://127.0.0.1:9", "url: xmpp://alice@xmpp.test")
    message = refused(tmp_path, text)
    assert "logs in as a user: set password_env or password_file" in message


def test_tls_without_a_credential_is_refused(tmp_path: Path) -> None:
    text = "collector: {address: 'collector.example:7443'}\nspool: {path: x.db}\n"
    assert "no credential for the collector" in refused(tmp_path, text)


# ---- scheduler --------------------------------------------------------------------------


def test_first_offsets_of_1000_checks_spread_evenly_over_the_interval() -> None:
    offsets = [first_offset(b"agent-1", f"check-{i}", 60.0) for i in range(1000)]
    assert all(0 <= o < 60 for o in offsets)
    bins = collections.Counter(int(o // 6) for o in offsets)  # ten 6 s bins, ~100 each
    assert sorted(bins) == list(range(10))
    assert all(60 <= n <= 140 for n in bins.values()), bins
    # No burst: never more than 10 first runs in any 100 ms (1.7 expected).
    starts = sorted(offsets)
    assert max(
        sum(1 for t in starts[i:i + 20] if t < s + 0.1) for i, s in enumerate(starts)
    ) <= 10
    # Another agent (another salt) puts the same check elsewhere in the interval.
    assert first_offset(b"agent-2", "check-0", 60.0) != offsets[0]
    # Stable for a given agent: a re-sent assignment keeps its phase.
    assert first_offset(b"agent-1", "check-0", 60.0) == offsets[0]


def fake_result(target: Target) -> Result:
    return Result(url=target.url, protocol=target.protocol, success=True, reason=Reason.OK,
                  message="logged in", started_at=datetime.now(UTC), duration_ns=1,
                  phases=[])


def spec(name: str, interval: float, timeout: float | None = None, port: int = 9) -> CheckSpec:
    return CheckSpec.build(name, f"tcp://127.0.0.1:{port}", interval, timeout)


class Recorder:
    """A fake probe and a sink that remember what happened, and when."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.started: list[tuple[str, float]] = []
        self.reports: list[Report] = []
        self.running = 0
        self.most = 0
        self.gate: asyncio.Event | None = None

    async def probe(self, target: Target, options: ProbeOptions) -> Result:
        self.started.append((target.url, asyncio.get_running_loop().time()))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.hold)
        finally:
            self.running -= 1
        return fake_result(target)

    async def sink(self, report: Report) -> None:
        self.reports.append(report)


async def test_1000_scheduled_checks_first_run_at_their_spread_offsets() -> None:
    rec = Recorder()
    salt = b"fixed"
    sched = Scheduler(rec.sink, [ProbePath("default", labels={"region": "eu"})],
                      concurrency=1000, probe=rec.probe, salt=salt)
    epoch = asyncio.get_running_loop().time()
    interval = 3.0
    # One port per check, so each start can be matched to its check by URL.
    specs = [spec(f"c{i}", interval, port=10_000 + i) for i in range(1000)]
    sched.replace(LOCAL, specs)
    await asyncio.sleep(interval + 0.3)
    await sched.stop()
    first: dict[str, float] = {}
    for url, at in rec.started:
        first.setdefault(url, at - epoch)
    assert len(first) == 1000  # every check ran within its first interval
    # Each first run at its planned, evenly spread offset (the test above checks how evenly):
    # never early; late only by what a busy machine adds, so this asserts the plan is
    # followed, not how fast the machine is.
    planned = {s.target.url: first_offset(salt, s.name, interval) for s in specs}
    late = sorted(first[url] - planned[url] for url in first)
    assert late[0] > -0.01, late[:5]
    assert late[int(len(late) * 0.9)] < 0.5, late[-5:]


async def test_concurrency_limit_holds_and_runs_that_cannot_start_are_skipped() -> None:
    rec = Recorder(hold=0.3)
    sched = Scheduler(rec.sink, [ProbePath("default")], concurrency=3, probe=rec.probe)
    sched.replace(LOCAL, [spec(f"c{i}", 0.5) for i in range(20)])
    await asyncio.sleep(2.0)
    await sched.stop()
    assert rec.most == 3
    assert sched.skipped_total > 0  # 20 x 0.3 s of work per 0.5 s does not fit in 3 slots


async def test_reload_keeps_unchanged_checks_and_never_loses_a_run_in_flight() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    sched = Scheduler(rec.sink, [ProbePath("default", labels={"region": "eu"})],
                      concurrency=10, probe=rec.probe)
    sched.replace(ASSIGNED, [spec("a", 0.2), spec("b", 0.2)])
    await asyncio.sleep(0.45)  # both have started once and are held in flight
    assert {url for url, _ in rec.started} == {"tcp://127.0.0.1:9"}
    assert sched.in_flight == 2
    loops = dict(sched._loops)
    sched.replace(ASSIGNED, [spec("a", 0.2), spec("c", 0.2)])  # b removed, c added
    assert sched._loops[(ASSIGNED, "a")] is loops[(ASSIGNED, "a")]  # untouched
    assert (ASSIGNED, "b") not in sched._loops
    rec.gate.set()
    await asyncio.sleep(0.1)
    checks = [r.check for r in rec.reports]
    assert "b" in checks  # b's run in flight finished and was handed on
    before = checks.count("b")
    await asyncio.sleep(0.5)
    await sched.stop()
    assert [r.check for r in rec.reports].count("b") == before  # and b never ran again
    assert {"a", "c"} <= {r.check for r in rec.reports}
    r = rec.reports[0]
    assert r.seq == 0 and len(r.trace_id) == 16
    assert r.labels == {"region": "eu", "carrier": "", "path": "default", "network_type": "unknown"}
    assert len({x.trace_id for x in rec.reports}) == len(rec.reports)


async def test_stop_lets_probes_in_flight_finish_and_starts_none_queued() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    sched = Scheduler(rec.sink, [ProbePath("default")], concurrency=2, probe=rec.probe)
    sched.replace(LOCAL, [spec(f"c{i}", 0.3) for i in range(6)])
    await asyncio.sleep(0.4)  # all six due: two hold the slots, four queue for one
    assert sched.in_flight == 2
    stopping = asyncio.create_task(sched.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waits for the two in flight
    rec.gate.set()
    await stopping
    assert len(rec.started) == len(rec.reports) == 2  # finished, handed on; no queued start
    assert sched.in_flight == 0


async def test_a_path_whose_attempts_time_out_never_makes_a_healthy_path_skip_a_round(
) -> None:
    """The paths start together, but each keeps its own schedule: a cellular attempt that
    runs into its timeout (longer than the interval) skips cellular's next round only."""
    interval = 0.3
    starts: dict[str | None, list[float]] = {"wlan0": [], "wwan0": []}

    async def probe(target: Target, options: ProbeOptions) -> Result:
        starts[options.interface].append(asyncio.get_running_loop().time())
        # The slow path's attempt lasts its whole timeout, and a little more to hand on.
        await asyncio.sleep(interval * 1.2 if options.interface == "wwan0" else 0.01)
        return fake_result(target)

    rec = Recorder()
    paths = [ProbePath("wifi", interface="wlan0"), ProbePath("cellular", interface="wwan0")]
    sched = Scheduler(rec.sink, paths, concurrency=10, probe=probe)
    sched.replace(LOCAL, [spec("c", interval)])
    await asyncio.sleep(interval * 10.5)
    await sched.stop()
    wifi, cell = starts["wlan0"], starts["wwan0"]
    assert abs(wifi[0] - cell[0]) < 0.05  # started together
    gaps = [b - a for a, b in itertools.pairwise(wifi)]
    assert len(wifi) >= 9, wifi
    # Every healthy round ran: no gap of two intervals (a busy machine may be late, but a
    # skipped round is a whole interval).
    assert max(gaps) < interval * 1.5, gaps
    assert len(cell) < len(wifi)  # the slow path did skip its own rounds
    assert sched.skipped_total >= 1


@pytest.fixture
async def stall_port() -> AsyncIterator[int]:
    """A TCP server that accepts and then says nothing: a TLS handshake never completes."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, family=socket.AF_INET)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_a_real_probe_is_bounded_by_its_checks_timeout(stall_port: int) -> None:
    reports: list[Report] = []
    arrived = asyncio.Event()

    async def sink(report: Report) -> None:
        reports.append(report)
        arrived.set()

    sched = Scheduler(sink, [ProbePath("default")], concurrency=4)
    s = CheckSpec.build("stall", f"tls://127.0.0.1:{stall_port}", 1.0, 0.4)
    sched.replace(LOCAL, [s])
    await asyncio.wait_for(arrived.wait(), 5)
    await sched.stop()
    result = reports[0].result
    assert result.reason is Reason.TLS_TIMEOUT
    assert 0.35 < result.duration_ns / 1e9 < 1.0


def test_an_assigned_timeout_never_exceeds_the_interval() -> None:
    assert spec("x", 2.0, 30.0).timeout == 2.0
    assert spec("x", 60.0).timeout == 10.0
    with pytest.raises(ValueError, match="interval"):
        spec("x", 0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The missing variable is the problem; "no credential" on a key the file does not
        # have would send the user looking in the wrong place.
        ("collector:\n  address: c.example:7443\n  token_env: NO_SUCH_TOKEN_VAR_X\n"
         "spool: {path: x.db}\n",
         [":3: collector.token_env: the environment variable NO_SUCH_TOKEN_VAR_X is not set"]),
        ("collector:\n  address: c.example:7443\n  tokn_env: X\nspool: {path: x.db}\n",
         [":3: collector.tokn_env: unknown key 'tokn_env': did you mean 'token_env'?"]),
        ("- a list\n", [":1: (top level): expected a mapping (key: value lines), found a list"]),
        ("", [": the file is empty"]),
        ("collector:\n  address: 7443\n  token_env: HOME\nspool: {path: x.db}\n",
         [":2: collector.address: expected text, found the number 7443"]),
    ],
)
def test_config_errors_name_the_key_the_file_has(tmp_path: Path, text: str,
                                                 expected: list[str]) -> None:
    message = refused(tmp_path, text)
    assert message.count("\n") == len(expected) - 1, message  # nothing else said
    for line, words in zip(message.splitlines(), expected, strict=True):
        assert words in line, message
    for leak in ("Value error", "Input should", "Extra inputs", "plaintext"):
        assert leak not in message


def test_environment_variables_fill_in_what_differs_per_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LP_COLLECTOR", "collector.eu.example:7443")
    monkeypatch.setenv("LP_REGION", "eu-west")
    monkeypatch.setenv("LP_EMPTY", "")
    monkeypatch.setenv("LOGINPROBE_AGENT_TOKEN", "x")
    monkeypatch.delenv("LP_CARRIER", raising=False)
    text = ("# ${NOT_EXPANDED_IN_A_COMMENT}\n"
            "collector: {address: '${LP_COLLECTOR}', token_env: LOGINPROBE_AGENT_TOKEN}\n"
            "labels: {region: '${LP_REGION}', carrier: '${LP_CARRIER:-unknown-carrier}',\n"
            "         network_type: '${LP_EMPTY:-wired}', note: 'costs $$5'}\n"
            "spool: {path: x.db}\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.collector.address == "collector.eu.example:7443"
    assert cfg.labels.as_dict() == {"region": "eu-west", "carrier": "unknown-carrier",
                                    "network_type": "wired", "note": "costs $5"}
    message = refused(tmp_path, text.replace("LP_REGION", "LP_NO_SUCH_VAR"))
    assert message.endswith(":3: ${LP_NO_SUCH_VAR}: the environment variable LP_NO_SUCH_VAR "
                            "is not set (or write ${LP_NO_SUCH_VAR:-default})")

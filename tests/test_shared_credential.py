"""One credential on two machines (a copied config): the second live stream is refused with
a sentence naming the agent and what to do, the refused agent keeps its results spooled and
retries, and every result of both arrives once or stays spooled: never deleted unacked."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for
from tests.test_agent import local_checks, stop_all, target

__all__ = ["target"]  # the listener fixture, shared with test_agent


def spool_id(agent: Agent) -> str:
    with contextlib.closing(sqlite3.connect(agent.spool_path)) as db:
        value = db.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()[0]
    return f"{value:016x}"


def test_two_agents_with_one_token_lose_nothing_and_the_second_is_refused_loudly(
    target: str, tmp_path: Path
) -> None:
    token, digest = new_token()
    settings = collector_config(tmp_path / "c", pki=None,
                                agents=[{"id": "twin", "token_sha256": digest}])
    collector = Collector(tmp_path / "c", settings).start_healthy()
    checks = local_checks(target, 2, "0.1s")  # both run the same checks
    first = Agent(tmp_path / "a", collector, token=token, checks=checks)
    second = Agent(tmp_path / "b", collector, token=token, checks=checks)
    try:
        first.start()
        wait_for("the first agent's stream", lambda: first.metric(
            "loginprobe_agent_uplink_connected") == 1.0, 20)
        second.start()
        wait_for("the second agent's refusal", lambda: "refused this stream" in second.output(),
                 20)
        time.sleep(3)  # both measure; only the first delivers
        assert first.metric("loginprobe_agent_uplink_connected") == 1.0
        assert second.metric("loginprobe_agent_uplink_connected") == 0.0
        assert second.metric("loginprobe_agent_spool_results") > 20  # kept, not deleted
        refusal = next(line for line in second.output().splitlines()
                       if "refused this stream" in line)
        assert " ERROR " in refusal
        assert "the credential of agent twin is already in use" in refusal
        assert "Give each machine its own entry under agents:" in refusal
        assert token not in second.output() + collector.output()
        assert second.running()  # it waits and retries, never exits

        # The first machine goes away: the second delivers what it kept.
        first.signal(signal.SIGTERM)
        assert first.wait(20) == 0
        wait_for("the second agent to deliver its spool", lambda: second.metric(
            "loginprobe_agent_uplink_connected") == 1.0 and second.metric(
            "loginprobe_agent_spool_results") < 10, 30)
        assert second.stop() == 0

        got: dict[str, list[int]] = defaultdict(list)
        for line in collector.results():
            got[line.get("key", line["agent"])].append(line["seq"])
        for agent in (first, second):
            produced, left, dropped = agent.spooled()
            assert dropped == 0 and left == 0
            seqs = got[f"twin/{spool_id(agent)}"]
            assert sorted(seqs) == list(range(1, produced + 1)), (
                f"{agent.folder.name}: produced {produced}, arrived {len(seqs)}, "
                f"{len(set(seqs))} distinct")
        log = collector.output()
        assert log.count("refused a second stream of agent twin") == 1  # said once
        assert collector.metrics()[
            'loginprobe_collector_results_rejected_total{reason="credential_in_use"}'] >= 1
    finally:
        stop_all(first, second, collector)

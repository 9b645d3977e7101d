"""The collector's local state file: each agent's high-water mark written once per batch and
read back at start, so exactly once holds across a kill -9 without the results log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.fleet import Collector, collector_config, new_token
from loginprobe.collector.state import StateError, StateFile
from tests.test_collector import Stream, batch


def test_the_state_file_keeps_the_highest_drops_a_torn_line_and_compacts(
    tmp_path: Path
) -> None:
    path = tmp_path / "collector.state"
    state = StateFile(path)
    for seq in range(1, 3000):
        state.record("a/1", seq)
    state.record('b "quoted"/2', 7)
    with pytest.raises(StateError, match="in use by another collector"):
        StateFile(path)
    state.close()
    with path.open("a") as f:
        f.write('"a/1" 99')  # half a line, as a kill mid-write leaves
    again = StateFile(path)
    assert again.marks == {"a/1": 2999, 'b "quoted"/2': 7}
    assert len(path.read_text().splitlines()) == 2  # rewritten at start
    again.close()
    assert json.loads(path.read_text().splitlines()[1].rpartition(" ")[0]) == 'b "quoted"/2'


async def test_a_batch_processed_before_a_kill_9_counts_once_without_the_results_log(
    tmp_path: Path
) -> None:
    """The default config (no results log): killed after processing a batch whose ack the
    agent never saw, the restarted collector still knows the mark of that agent's spool."""
    token, digest = new_token()
    c = Collector(tmp_path, collector_config(
        tmp_path, pki=None, agents=[{"id": "k1", "token_sha256": digest}], results_log=None))
    c.start_healthy()
    s = Stream(c, token)
    await s.open(spool_id="spool-a")
    assert await s.ack(batch(1, 2, 3)) == 3
    c.kill()
    await s.close()
    c.start_healthy()
    s = Stream(c, token)
    welcome, _ = await s.open(last_acked=0, spool_id="spool-a")  # as if the ack was lost
    assert welcome.last_processed_seq == 3
    assert await s.ack(batch(1, 2, 3, 4, 5)) == 5
    await s.close()
    m = c.metrics()
    assert m['loginprobe_collector_results_received_total{agent="k1"}'] == 2
    assert m['loginprobe_collector_results_duplicate_total{agent="k1"}'] == 3
    # Another spool under the same credential has its own sequence, from 1.
    s = Stream(c, token)
    welcome, _ = await s.open(spool_id="spool-b")
    assert welcome.last_processed_seq == 0
    assert await s.ack(batch(1)) == 1
    await s.close()
    assert c.metrics()['loginprobe_collector_results_received_total{agent="k1"}'] == 3
    assert c.stop() == 0

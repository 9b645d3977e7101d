"""The results log: every accepted result as one JSON line, for audits and tests; at start it
gives back each agent's high-water mark, so a restarted collector counts no replay twice."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import IO

from loginprobe.collector.ingest import Accepted

# What recovery reads from the start of each results-log line.
_LINE_START = re.compile(
    rb'\{"agent": ("(?:[^"\\]|\\.)*"), "seq": (\d+)(?:, "key": ("(?:[^"\\]|\\.)*"))?')


class ResultsLog:
    """A sink writing every accepted result as one JSON line, flushed before the batch is
    acknowledged. At start it recovers each agent's high-water mark from the file, so a
    collector killed between writing and acknowledging does not count the replay twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.high_water: dict[str, int] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+b") as f:
            f.seek(0)
            end = 0
            for line in f:
                if not line.endswith(b"\n"):
                    break  # half a line from a kill mid-write: dropped below
                end += len(line)
                m = _LINE_START.match(line)
                if m:
                    # The mark's key (agent and spool) where the line has one.
                    agent, seq = json.loads(m[3] or m[1]), int(m[2])
                    if seq > self.high_water.get(agent, 0):
                        self.high_water[agent] = seq
            f.truncate(end)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, batch: Accepted) -> None:
        agent = json.dumps(batch.agent)
        key = f', "key": {json.dumps(batch.key)}' if batch.key not in ("", batch.agent) else ""
        self._file.write("".join(
            f'{{"agent": {agent}, "seq": {r.seq}{key}, "check": {json.dumps(r.check)}, '
            f'"result": {json.dumps(r.result.to_dict())}'
            + (f', "session": {json.dumps(dataclasses.asdict(r.session))}' if r.session else "")
            + "}\n"
            for r in batch.reports()
        ))
        # A flush reaches the kernel, which is what survives kill -9; fsync would only add
        # power-failure safety at a cost per batch.
        self._file.flush()

    def close(self) -> None:
        self._file.close()

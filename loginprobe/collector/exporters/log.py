"""Attempts as JSON lines for Loki or any log system: one per failed attempt, one when a
check of an agent's network path starts failing or recovers, and one when a held session
drops or is logged in again, each with its trace id."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from loginprobe.codec import ResultView, is_attempt
from loginprobe.collector.ingest import Accepted, FleetState


def iso(unix_nano: int) -> str:
    """A result's start as ISO 8601 UTC with microseconds."""
    return datetime.fromtimestamp(unix_nano / 1e9, UTC).isoformat(timespec="microseconds")


def _failed_phase(msg: ResultView) -> str:
    for phase in msg.phases:
        if not phase.ok and not phase.skipped:
            return phase.name
    return msg.step


class EventLog:
    """A sink. Successes cost one check of an empty dict while nothing fails: only failures
    are decoded, and only their fields. Messages arrive scrubbed of secrets by the probe;
    nothing else in a result can carry one (a check names its password, never holds it)."""

    def __init__(self, fleet: FleetState, path: Path | None = None) -> None:
        self.fleet = fleet
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._out: IO[str] = path.open("a", encoding="utf-8") if path else sys.stderr
        self._owned = path is not None
        # (agent, path, check) failing now -> the line that said so, for the recovery
        self._failing: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (agent, path, check) of a held session dropped and not back yet -> its drop line
        self._dropped: dict[tuple[str, str, str], dict[str, Any]] = {}

    def write(self, batch: Accepted) -> None:
        agent, fixed = batch.agent, batch.fixed_labels
        claimed = self.fleet.labels.get(agent, {})
        failing = self._failing
        lines: list[dict[str, Any]] = []
        for msg in batch.results:
            if msg.session.kind:
                line = self._session(agent, {**claimed, **msg.labels, **fixed}, msg)
                if line is not None:
                    lines.append(line)
                if not is_attempt(msg):
                    continue
            if msg.success:
                if failing:  # nothing to recover while nothing fails
                    key = (agent, msg.labels.get("path", ""), msg.check)
                    first = failing.pop(key, None)
                    if first is not None:
                        lines.append(self._state("check_recovered", key, msg, {
                            "failing_since": first["started_at"],
                            "failed_reason": first["reason"]}))
                continue
            labels: Mapping[str, str] = {**claimed, **msg.labels, **fixed}
            key = (agent, msg.labels.get("path", ""), msg.check)
            line = {
                "event": "attempt_failed", "agent": agent, "check": msg.check,
                "target": msg.url, "protocol": msg.protocol, "labels": dict(labels),
                "reason": msg.reason, "step": msg.step, "phase": _failed_phase(msg),
                "message": msg.message, "hint": msg.hint, "trace_id": msg.trace_id.hex(),
                "started_at": iso(msg.started_at_unix_nano),
                "duration_seconds": msg.duration_ns / 1e9,
            }
            lines.append(line)
            if key not in failing:
                failing[key] = line
                lines.append(self._state("check_failing", key, msg, {"reason": msg.reason}))
        if lines:
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._out.write("".join(json.dumps({"time": now, **line}) + "\n" for line in lines))
            self._out.flush()

    def _session(self, agent: str, labels: Mapping[str, str],
                 msg: ResultView) -> dict[str, Any] | None:
        """session_dropped for a drop, session_recovered for the reconnect that logs in."""
        event = msg.session
        key = (agent, msg.labels.get("path", ""), msg.check)
        where = {"agent": agent, "path": key[1], "check": msg.check, "target": msg.url,
                 "protocol": msg.protocol}
        if event.kind == "drop":
            line = {
                "event": "session_dropped", **where, "labels": dict(labels),
                "reason": msg.reason, "step": msg.step, "phase": event.phase,
                "message": msg.message, "hint": msg.hint,
                "session_seconds": event.session_ns / 1e9, "segment": event.segment,
                "trace_id": msg.trace_id.hex(), "dropped_at": iso(msg.started_at_unix_nano),
            }
            self._dropped[key] = line
            return line
        if event.kind == "reconnect" and msg.success:
            drop = self._dropped.pop(key, None)
            return {
                "event": "session_recovered", **where,
                "downtime_seconds": event.downtime_ns / 1e9, "attempts": event.attempts,
                "segment": event.segment,
                "dropped_reason": drop["reason"] if drop else None,
                "resumed": event.resumed, "trace_id": msg.trace_id.hex(),
                "logged_in_at": iso(msg.started_at_unix_nano + msg.duration_ns),
            }
        return None

    @staticmethod
    def _state(event: str, key: tuple[str, str, str], msg: ResultView,
               extra: dict[str, Any]) -> dict[str, Any]:
        agent, path, check = key
        return {"event": event, "agent": agent, "path": path, "check": check,
                "target": msg.url, **extra, "trace_id": msg.trace_id.hex(),
                "started_at": iso(msg.started_at_unix_nano)}

    def close(self) -> None:
        if self._owned:
            self._out.close()

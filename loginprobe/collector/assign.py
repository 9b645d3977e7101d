"""Which checks an agent runs: those whose selector matches its labels, and what changed
between two such sets (the upserts and removals a CheckUpdate carries)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loginprobe.collector.config import Check


def assigned(checks: Iterable[Check], labels: Mapping[str, str]) -> dict[str, Check]:
    """The checks for an agent with these labels; an empty selector matches every agent."""
    return {
        c.name: c
        for c in checks
        if all(labels.get(key) == value for key, value in c.selector.items())
    }


def changes(old: Mapping[str, Check], new: Mapping[str, Check]) -> tuple[list[Check], list[str]]:
    """(checks to add or replace, names to remove) to go from old to new. The selector is
    not part of what an agent runs, so a change to it alone is no change for the agent."""
    upsert = [c for name, c in new.items() if name not in old or _sent(old[name]) != _sent(c)]
    remove = [name for name in old if name not in new]
    return upsert, remove


def _sent(check: Check) -> dict[str, object]:
    return check.model_dump(exclude={"selector"})

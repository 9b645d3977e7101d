"""Reconnect delays: exponential backoff with full jitter and a cap; it only computes delays,
the caller decides how (and whether) to wait."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """delay() = uniform(0, min(cap, base * multiplier**attempt)). Full jitter, so a fleet of
    agents that lost the collector at the same moment does not come back in lockstep."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 10.0,
        rand: Callable[[], float] = random.random,
        multiplier: float = 2.0,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        if multiplier < 1:
            raise ValueError("backoff needs multiplier >= 1")
        self.base = base
        self.cap = cap
        self.multiplier = multiplier
        self.attempt = 0
        self._rand = rand

    def delay(self) -> float:
        """The wait before the next attempt; each call counts as one more failure."""
        # min() before the power would overflow for a long outage; 60 steps is plenty.
        ceiling = min(self.cap, self.base * self.multiplier ** min(self.attempt, 60))
        self.attempt += 1
        return ceiling * self._rand()

    @property
    def at_cap(self) -> bool:
        """Whether the next delay's ceiling is the cap: the outage has gone on a while."""
        return self.base * 2.0 ** min(self.attempt, 60) >= self.cap

    def reset(self) -> None:
        """After a successful connection the next failure starts from base again."""
        self.attempt = 0

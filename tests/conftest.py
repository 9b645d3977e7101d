"""Fixtures shared by all tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.ground import Ground


@pytest.fixture(scope="session")
def ground() -> Iterator[Ground]:
    """Real unbound, prosody, mosquitto and nginx on loopback, for the whole test session."""
    with Ground() as g:
        yield g

"""Fixtures shared by all tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.servers import Servers


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """Real unbound, prosody, mosquitto and nginx on loopback, for the whole test session."""
    with Servers() as g:
        yield g

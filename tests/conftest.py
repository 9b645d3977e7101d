"""Fixtures shared by all tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.servers import Servers
from devstack.synapse import Synapse
from devstack.websocket import WsServers


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """Real unbound, prosody, mosquitto and nginx on loopback, for the whole test session."""
    with Servers() as g:
        yield g


@pytest.fixture(scope="session")
def synapse(servers: Servers) -> Iterator[Synapse]:
    """A real matrix-synapse behind nginx's TLS, shared by the session: it takes seconds to
    start."""
    with Synapse(servers) as hs:
        yield hs


@pytest.fixture(scope="session")
def ws_servers(servers: Servers) -> Iterator[WsServers]:
    """prosody and mosquitto over WebSocket, and nginx proxying them, beside `servers`."""
    with WsServers(servers) as ws:
        yield ws

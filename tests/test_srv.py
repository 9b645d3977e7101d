"""SRV targets tried in the order RFC 2782 and RFC 6120 section 3.2 give a client: one dead
target in front of a live one is not an outage."""

from __future__ import annotations

import random
from collections import Counter

from devstack.servers import Servers
from loginprobe.probes.phases.dns import srv_order
from tests.probing import check, options


def test_lowest_priority_first_whatever_the_weights() -> None:
    records = [(20, 100, "c", 3), (10, 0, "b", 2), (0, 1, "a", 1)]
    for seed in range(20):
        assert srv_order(records, random.Random(seed)) == [("a", 1), ("b", 2), ("c", 3)]


def test_weights_share_the_first_choice_within_a_priority() -> None:
    records = [(0, 90, "heavy", 1), (0, 10, "light", 2), (0, 0, "zero", 3)]
    rng = random.Random(7)
    firsts = Counter(srv_order(records, rng)[0][0] for _ in range(2000))
    # Each record is tried once, heavier ones first more often, weight 0 rarely first.
    assert sorted(srv_order(records, rng)) == [("heavy", 1), ("light", 2), ("zero", 3)]
    assert firsts["heavy"] > firsts["light"] > firsts["zero"]
    assert firsts["heavy"] > 1500


async def test_a_dead_first_target_is_not_an_outage(servers: Servers) -> None:
    # _xmpp-client._tcp.fallback.test: priority 0 refuses, priority 10 is prosody. prosody
    # serves xmpp.test only, so the stream is refused; what matters is that it is reached.
    result = await check("xmpp://alice@fallback.test", options(servers))
    assert result.dns is not None and result.dns.srv == f"xmpp.test:{servers.xmpp_port}"
    assert [(p.name, p.ok) for p in result.phases][:2] == [("dns", True), ("tcp", True)]
    lines = [t.text for t in result.transcript]
    assert any(
        line.startswith(f"SRV target xmpp.test:{servers._dead_port}: connection to 127.0.0.1")
        and line.endswith("refused; trying the next")
        for line in lines
    ), lines
    assert f"SRV target xmpp.test:{servers.xmpp_port} answered" in lines
    assert result.resolved_address == "127.0.0.1"
    assert "tcp_refused" not in result.reason


async def test_the_single_target_case_is_unchanged(servers: Servers) -> None:
    result = await check("xmpp://alice@xmpp.test", options(servers))
    assert result.reason == "ok"
    assert result.dns is not None and result.dns.srv == f"xmpp.test:{servers.xmpp_port}"
    assert not any(t.text.startswith("SRV target") for t in result.transcript)

"""gRPC keepalive between agents and the collector: every channel option the project sets is
a name the installed gRPC knows (it ignores unknown ones silently), and an idle agent keeps
one TCP connection instead of being sent GOAWAY too_many_pings."""

from __future__ import annotations

import re
import time
from pathlib import Path

from grpc._cython import cygrpc

from devstack.fleet import ROOT, Agent, Collector, collector_config, new_token, wait_for
from loginprobe.agent.config import Keepalive as AgentKeepalive
from loginprobe.agent.uplink import channel_options
from loginprobe.collector.config import Keepalive as CollectorKeepalive
from loginprobe.collector.server import grpc_options

# A channel option as the project writes one: ("grpc.NAME", value).
_OPTION = re.compile(r"""\(\s*["'](grpc\.[A-Za-z0-9_.]+)["']\s*,""")


def grpc_knows(name: str) -> bool:
    """Whether the installed gRPC core has this option name: its GRPC_ARG_* values are
    NUL-terminated strings in the extension module (the linker may merge one into the tail
    of a longer string, so only the end is anchored)."""
    return name.encode() + b"\x00" in _GRPC_BINARY


_GRPC_BINARY = Path(cygrpc.__file__).read_bytes()


def options_in_source() -> dict[str, str]:
    """Every ("grpc.…", value) in the project's code: name -> where."""
    found: dict[str, str] = {}
    for folder in ("loginprobe", "devstack", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == Path(__file__).name:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for name in _OPTION.findall(line):
                    found.setdefault(name, f"{path.relative_to(ROOT)}:{n}")
    return found


def test_every_grpc_channel_option_the_project_sets_is_one_grpc_knows() -> None:
    # The check itself tells a real name from a misspelt one.
    assert grpc_knows("grpc.http2.min_ping_interval_without_data_ms")
    assert not grpc_knows("grpc.http2.min_recv_ping_interval_without_data_ms")
    used = options_in_source()
    for name, _ in grpc_options(4 << 20, CollectorKeepalive()):
        used.setdefault(name, "collector.server.grpc_options")
    for name, _ in channel_options(AgentKeepalive()):
        used.setdefault(name, "agent.uplink.channel_options")
    assert "grpc.http2.min_ping_interval_without_data_ms" in used
    unknown = {name: where for name, where in used.items() if not grpc_knows(name)}
    assert not unknown, f"gRPC does not know these channel options: {unknown}"


def test_the_collector_allows_the_agents_default_ping_rate() -> None:
    """The agent's default pings must be within what the collector's default permits."""
    assert AgentKeepalive().time >= CollectorKeepalive().min_ping_interval


def established(port: int) -> set[int]:
    """Local ports of ESTABLISHED connections to 127.0.0.1:port, from /proc/net/tcp and
    tcp6 (gRPC's sockets are dual-stack: 127.0.0.1 shows there as ::ffff:127.0.0.1)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and remote.endswith(f"0100007F:{port:04X}"):
                out.add(int(local.rsplit(":", 1)[1], 16))
    return out


def test_an_idle_agent_keeps_one_tcp_connection(tmp_path: Path) -> None:
    """The two-minute idle of the field, shortened: the agent pings every 0.3 s, the
    collector allows one per 0.2 s. Forty pings on one connection and no GOAWAY: with the
    option misspelt, gRPC's 5-minute minimum ends the stream after the third."""
    token, token_hash = new_token()
    settings = collector_config(tmp_path / "c", pki=None,
                                agents=[{"id": "quiet", "token_sha256": token_hash}],
                                keepalive={"min_ping_interval": "0.2s"})
    collector = Collector(tmp_path / "c", settings).start_healthy()
    agent = Agent(tmp_path / "a", collector, token=token,
                  link={"keepalive": {"time": "0.3s", "timeout": "2s"}})
    port = int(collector.address.rsplit(":", 1)[1])
    try:
        agent.start()
        wait_for("the agent's stream", lambda: agent.metric(
            "loginprobe_agent_uplink_connected") == 1.0, 20)
        seen: list[set[int]] = []
        deadline = time.monotonic() + 12.0
        while time.monotonic() < deadline:
            seen.append(established(port))
            time.sleep(0.1)
        assert all(len(s) == 1 for s in seen), seen
        assert len(set().union(*seen)) == 1, "the agent reconnected"
        assert agent.metric("loginprobe_agent_uplink_connected") == 1.0
        agent.stop()
        collector.stop()
        assert "too_many_pings" not in agent.output() + collector.output()
        assert "Too many pings" not in agent.output()
        assert collector.output().count("agent quiet (version") == 1  # one connect
    finally:
        agent.kill()
        collector.kill()

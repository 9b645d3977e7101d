"""The example configs in deploy/ agree with each other: an agent set up as the agent
example shows can run every check the collector example assigns it."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.certs import PKI
from loginprobe.agent.config import load_config as load_agent
from loginprobe.collector.assign import assigned
from loginprobe.collector.config import load_config as load_collector

ROOT = Path(__file__).resolve().parent.parent


def test_every_assigned_check_finds_its_password_on_the_example_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LOGINPROBE_AGENT_TOKEN", "CHAT_PASSWORD", "BROKER_PASSWORD",
                 "MATRIX_PASSWORD"):
        monkeypatch.setenv(name, "x")
    agent = load_agent(ROOT / "deploy" / "agent.example.yaml")
    pki = PKI(tmp_path / "pki")
    text = (ROOT / "deploy" / "collector.example.yaml").read_text()
    text = text.replace("/etc/loginprobe/collector.crt", str(pki.server.cert))
    text = text.replace("/etc/loginprobe/collector.key", str(pki.server.key))
    (tmp_path / "collector.yaml").write_text(text)
    collector = load_collector(tmp_path / "collector.yaml")
    refs = {c.password_ref for c in collector.config.checks if c.password_ref}
    assert refs and refs <= set(agent.passwords), refs - set(agent.passwords)
    # The example agent, labelled as each registered agent, is assigned checks it can run.
    for registered in collector.agents:
        labels = {**agent.labels.as_dict(), **registered.labels}
        for check in assigned(collector.config.checks, labels).values():
            assert not check.password_ref or check.password_ref in agent.passwords


def test_a_relative_spool_path_is_taken_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LOGINPROBE_AGENT_TOKEN", "CHAT_PASSWORD", "BROKER_PASSWORD",
                 "MATRIX_PASSWORD"):
        monkeypatch.setenv(name, "x")
    monkeypatch.chdir("/")
    (tmp_path / "agent.yaml").write_text(
        "collector: {address: 'c.example:7443', token_env: LOGINPROBE_AGENT_TOKEN}\n"
        "spool: {path: state/spool.db}\n")
    assert load_agent(tmp_path / "agent.yaml").spool.path == tmp_path / "state" / "spool.db"
    example = load_agent(ROOT / "deploy" / "agent.example.yaml")
    assert example.spool.path == ROOT / "deploy" / "agent-spool.db"  # not /var/lib unasked

"""`loginprobe check` as a user runs it: exit codes, the JSON object, the waterfall, and
usage errors that probe nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SECRET = "Sup3r-Secret-pw"


def loginprobe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loginprobe.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_json_success_has_every_contract_field(listener: int) -> None:
    proc = loginprobe("check", f"tcp://127.0.0.1:{listener}", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in (
        "url",
        "protocol",
        "success",
        "reason",
        "step",
        "message",
        "hint",
        "started_at",
        "duration_seconds",
        "resolved_address",
        "phases",
        "tls",
    ):
        assert key in out
    assert (out["success"], out["reason"], out["step"]) == (True, "ok", "none")
    assert [p["name"] for p in out["phases"]] == ["tcp"]
    assert out["started_at"].endswith("Z") and out["resolved_address"] == "127.0.0.1"


def test_failure_exits_1_with_reason_and_hint() -> None:
    proc = loginprobe("check", f"tcp://127.0.0.1:{closed_port()}")
    assert proc.returncode == 1
    assert "FAILED: tcp_refused (step: network)" in proc.stdout
    assert "hint: Connection refused" in proc.stdout
    assert "tcp" in proc.stdout.splitlines()[1]


def test_verbose_json_includes_the_transcript(listener: int) -> None:
    proc = loginprobe("check", f"tcp://localhost:{listener}", "--json", "--verbose")
    out = json.loads(proc.stdout)
    assert any("TCP connected" in line["data"] for line in out["transcript"])
    assert [p["name"] for p in out["phases"]] == ["dns", "tcp"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["check", "gopher://x:70"], "unsupported scheme"),
        (["check", f"xmpp://alice:{SECRET}@example.com"], "password must never be part of the URL"),
        (["check", "mqtt://alice@127.0.0.1:1", "--password-env", "NO_SUCH_VAR_X"], "NO_SUCH_VAR_X"),
        (
            ["check", "mqtt://alice@127.0.0.1:1", "--password-file", "/nonexistent/pw"],
            "cannot read",
        ),
        (["check", "tcp://127.0.0.1:1", "--resolver", "dns.example:53"], "--resolver"),
        (["check", "tcp://127.0.0.1:1", "--timeout", "-1"], "--timeout"),
        (["check", "tls://127.0.0.1:1", "--ca-file", "/nonexistent.pem"], "--ca-file"),
    ],
)
def test_usage_errors_exit_2_and_probe_nothing(args: list[str], needle: str) -> None:
    proc = loginprobe(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert proc.stdout == ""
    assert SECRET not in proc.stderr


def test_password_file_is_read_and_never_printed(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    proc = loginprobe(
        "check", f"http://alice@127.0.0.1:{closed_port()}/", "--password-file", str(pw), "-v"
    )
    assert proc.returncode == 1
    assert SECRET not in proc.stdout + proc.stderr

"""`loginprobe check` as a user runs it: exit codes, the JSON object, the waterfall, and
usage errors that probe nothing."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.certs import PKI

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
        # The user's own input, named as such rather than diagnosed as the network's fault.
        (["check", "tls://127.0.0.1:1", "--ca-file", "/etc/hostname"],
         "--ca-file /etc/hostname holds no PEM certificate"),
        (["check", "xmpp://alice@xmpp.test", "--interface", "nosuch0"],
         "--interface 'nosuch0': no such network interface on this machine; it has "),
        (["check", "tcp://127.0.0.1:1", "--interface", "nosuch0"], "no such network interface"),
        (["check", "tcp://127.0.0.1:1", "--source", "notanip"],
         "--source 'notanip' is not an IP address"),
        (["check", "tcp://127.0.0.1:1", "--source", "192.0.2.77"],
         "--source 192.0.2.77 is not an address of this machine"),
        (["check", "xmpp://alice@xmpp test"],
         "host 'xmpp test' in 'xmpp://alice@xmpp test' holds ' '"),
        (["check", "mqtt://alice@127.0.0.1:1", "--password-env", "EMPTY_PW_X"],
         "the environment variable EMPTY_PW_X is empty"),
        (["check", "tcp://127.0.0.1:1", "--timeout", "0"],
         "must be more than 0 and at most 3600 seconds"),
    ],
)
def test_usage_errors_exit_2_and_probe_nothing(args: list[str], needle: str) -> None:
    proc = loginprobe(*args, env={"EMPTY_PW_X": ""})
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert proc.stdout == ""
    assert SECRET not in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("scheme", "done"), [("tcp", "connected"), ("tls", "TLS established")])
def test_a_handshake_success_says_what_was_done(scheme: str, done: str, tmp_path: Path) -> None:
    pki = PKI(tmp_path)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        if scheme == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(pki.server.cert, pki.server.key)
            accept = threading.Thread(target=_serve_tls, args=(server, ctx), daemon=True)
            accept.start()
        proc = loginprobe("check", f"{scheme}://localhost:{port}", "--ca-file", str(pki.ca_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == f"OK: {done}"


def _serve_tls(server: socket.socket, ctx: ssl.SSLContext) -> None:
    conn, _ = server.accept()
    with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
        tls.recv(1)


def test_a_silent_resolver_is_named_with_the_query(listener: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # reads, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        proc = loginprobe("check", "tcp://xmpp.test:5222", "--resolver", f"127.0.0.1:{port}",
                          "--timeout", "1", "-v")
    assert proc.returncode == 1
    last = proc.stdout.splitlines()
    failed = next(line for line in last if line.startswith("FAILED: dns_timeout"))
    assert "xmpp.test A" in proc.stdout and f"to 127.0.0.1:{port} over UDP" in failed
    assert f"* DNS query xmpp.test AAAA to 127.0.0.1:{port} over UDP" in proc.stdout


def test_password_file_is_read_and_never_printed(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    proc = loginprobe(
        "check", f"http://alice@127.0.0.1:{closed_port()}/", "--password-file", str(pw), "-v"
    )
    assert proc.returncode == 1
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("collector:\n  address: c.example:7443\n  token_env: NO_SUCH_TOKEN_VAR_X\n"
     "spool: {path: x.db}\n",
     ":3: collector.token_env: the environment variable NO_SUCH_TOKEN_VAR_X is not set"),
    ("collector:\n  address: c.example:7443\n  tokn_env: X\nspool: {path: x.db}\n",
     ":3: collector.tokn_env: unknown key 'tokn_env': did you mean 'token_env'?"),
])
def test_an_agent_config_error_is_one_line_of_the_key_the_file_has(
        tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    proc = loginprobe("agent", "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr == f"loginprobe agent: {config}{expected}\n"

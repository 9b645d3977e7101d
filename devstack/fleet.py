"""Helpers to run real collector and agent processes in tests: bearer tokens,
config files, free loopback ports, and a process handle that waits for health and stops."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.certs import PKI, CertPair

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def new_token() -> tuple[str, str]:
    """A bearer token and the SHA-256 hex the collector's registry stores instead of it."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


# ---- files and ports -------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    # Written to a temporary name and renamed, so a process reloading on change never reads
    # half a file.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


# ---- processes -------------------------------------------------------------------------


class Proc:
    """One `loginprobe COMMAND --config FILE` process, its stderr kept in a file beside the
    config so a failing test can show it."""

    def __init__(self, command: str, config: Path) -> None:
        self.command = command
        self.config = config
        self.log = config.with_suffix(".log")
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, *, cpu: int | None = None) -> Proc:
        argv = [sys.executable, "-m", "loginprobe.cli", self.command, "--config", str(self.config)]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as err:
            # A session of its own: Ctrl-C in a terminal reaches only the parent (a test, the
            # demo), which then stops its processes by PID in order.
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=err, stderr=err,
                                          start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the exit status of a graceful stop."""
        if not self.running():
            return self.popen.returncode if self.popen else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.running():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)


class Collector(Proc):
    """A collector process with its gRPC address and /metrics, configured from a dict."""

    def __init__(self, folder: Path, config: dict[str, Any], pki: PKI | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__("collector", folder / "collector.yaml")
        self.folder = folder
        self.pki = pki
        self.settings = config
        write_yaml(self.config, config)
        # With mTLS every connection needs a client certificate, the health check's too.
        mtls = pki is not None and "client_ca" in config.get("tls", {})
        self.probe_cert = pki.issue("fleet-health-probe") if pki and mtls else None

    @property
    def address(self) -> str:
        return str(self.settings["listen"])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings['metrics_listen']}/metrics"

    def rewrite(self, config: dict[str, Any]) -> None:
        """Replace the config file (the collector reloads it on change or SIGHUP)."""
        self.settings = config
        write_yaml(self.config, config)

    def channel(
        self, client: CertPair | None = None, options: list[tuple[str, Any]] | None = None
    ) -> grpc.aio.Channel:
        """An asyncio channel to this collector, over TLS when it has a PKI."""
        if self.pki is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        creds = self.pki.channel_credentials(client)
        return grpc.aio.secure_channel(self.address, creds, options=options)

    def healthy(self) -> bool:
        """The standard gRPC health service says SERVING."""
        if self.pki is None:
            channel = grpc.insecure_channel(self.address)
        else:
            creds = self.pki.channel_credentials(self.probe_cert)
            channel = grpc.secure_channel(self.address, creds)
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def start_healthy(self, timeout: float = 15.0, cpu: int | None = None) -> Collector:
        self.start(cpu=cpu)

        def ready() -> bool:
            if not self.running():
                raise RuntimeError(f"the collector exited early:\n{self.output()}")
            return self.healthy()

        try:
            wait_for("the collector's health service", ready, timeout)
        except BaseException:
            self.kill()  # a collector that never became healthy must not outlive the test
            raise
        return self

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as {'name{label="v",...}': value}."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def results(self) -> Iterator[dict[str, Any]]:
        """Every line of the results log (agent, seq, check, result)."""
        path = self.folder / str(self.settings["results_log"])
        if path.exists():
            # One read, then whole lines only: iterating the file while the collector appends
            # would hand out a line's second half as a line of its own.
            data = path.read_bytes()
            for line in data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines():
                yield json.loads(line)


def collector_config(
    folder: Path,
    *,
    pki: PKI | None,
    agents: list[dict[str, Any]],
    checks: list[dict[str, Any]] | None = None,
    mtls: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A collector config on free loopback ports: TLS from the PKI (mTLS with mtls=True),
    plaintext loopback without one; a results log in the folder."""
    config: dict[str, Any] = {
        "listen": f"{LOOPBACK}:{free_port()}",
        "metrics_listen": f"{LOOPBACK}:{free_port()}",
        "agents": agents,
        "checks": checks or [],
        "results_log": str(folder / "results.jsonl"),
        "state": str(folder / "collector.state"),
        "shutdown_grace": "2s",
    }
    if pki is None:
        config["allow_plaintext_loopback"] = True
    else:
        tls = {"cert": str(pki.server.cert), "key": str(pki.server.key)}
        if mtls:
            tls["client_ca"] = str(pki.ca_file)
        config["tls"] = tls
    config.update(extra)
    return config


class Agent(Proc):
    """One `loginprobe agent` process with its config, token file, spool and /metrics."""

    def __init__(
        self, folder: Path, collector: Collector, *, token: str | None = None,
        client: CertPair | None = None, checks: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None, spool: dict[str, Any] | None = None,
        passwords: dict[str, dict[str, str]] | None = None,
        paths: list[dict[str, Any]] | None = None,
        link: dict[str, Any] | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__("agent", folder / "agent.yaml")
        self.folder = folder
        self.spool_path = folder / "spool.db"
        self.listen = f"127.0.0.1:{free_port()}"
        section: dict[str, Any] = {"address": collector.address}
        if collector.pki is None:
            section["plaintext"] = True
        else:
            section["tls"] = {"ca_file": str(collector.pki.ca_file)}
            if client is not None:
                section["tls"].update(cert_file=str(client.cert), key_file=str(client.key))
        if token is not None:
            (folder / "token").write_text(token + "\n", encoding="utf-8")
            section["token_file"] = str(folder / "token")
        section.update(link or {})  # more of it: keepalive, address
        write_yaml(self.config, {
            "collector": section,
            "labels": labels or {"region": "eu-west", "network_type": "wired"},
            **({"paths": paths} if paths else {}),
            "checks": checks or [],
            "passwords": passwords or {},
            "spool": {"path": str(self.spool_path), **(spool or {})},
            "listen": self.listen,
        })

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://{self.listen}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric(self, name: str) -> float:
        return self.metrics().get(name, -1.0)

    def spooled(self) -> tuple[int, int, int]:
        """After the process ended: (results produced over all runs, left in the spool,
        dropped for size)."""
        # closing(): a connection left open would keep the agent's exclusive lock away.
        with contextlib.closing(sqlite3.connect(self.spool_path)) as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            left = db.execute("SELECT count(*) FROM results").fetchone()[0]
        return meta["next_seq"] - 1, left, meta.get("dropped_size", 0)

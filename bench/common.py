"""What the benchmarks share: one core for the prober and the other for the servers, CPU
clocks, medians, and the servers themselves (the test servers, a bare accept loop,
blackbox_exporter)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

# The machine has two cores: the process being measured gets one to itself, the servers
# (and load generators) the other, so neither steals the other's CPU or cache.
PROBE_CPU = 0
SERVER_CPU = 1
REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def pin(cpu: int, pid: int = 0) -> None:
    os.sched_setaffinity(pid, {cpu})


def pinned(cpu: int) -> Callable[[], None]:
    """A preexec_fn: the child (and every process it starts) runs on that core only."""
    return lambda: pin(cpu)


def cpu_seconds() -> float:
    """User + system CPU of this process. System time matters: on loopback the kernel's
    TCP work for both ends is largely charged to the process that sends."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses; fields resume after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores, {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load_note() -> str:
    """Other work on the machine skews CPU-per-probe (cache, context switches): say how
    busy it was, so a reader can discount a noisy run."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python() -> str:
    """The interpreter running us (the project's .venv when run as README says)."""
    return sys.executable


class Server:
    """A child process pinned to the servers' core that prints one line when ready."""

    def __init__(self, argv: list[str], cpu: int = SERVER_CPU) -> None:
        self.argv = argv
        self.cpu = cpu
        self.proc: subprocess.Popen[str] | None = None
        self.first_line = ""

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=pinned(self.cpu),
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline().strip()
        if not self.first_line:
            self.proc.wait(START_TIMEOUT)
            raise RuntimeError(f"{self.argv[:3]} exited ({self.proc.returncode}) before ready")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Servers(Server):
    """The test servers (prosody, mosquitto, nginx, unbound) on the servers' core; with
    module="devstack.websocket", their WebSocket servers beside them."""

    def __init__(self, module: str = "devstack.servers") -> None:
        super().__init__([python(), "-m", module])
        self.info: dict[str, Any] = {}

    def __enter__(self) -> Servers:
        super().__enter__()
        self.info = json.loads(self.first_line)
        return self


class Acceptor(Server):
    """bench.acceptor on the servers' core: accepts and closes (after a TLS handshake with
    tls=(cert, key))."""

    def __init__(self, addresses: int = 0, tls: tuple[str, str] | None = None) -> None:
        super().__init__([python(), "-m", "bench.acceptor", "--addresses", str(addresses),
                          *(["--tls", *tls] if tls else [])])
        self.port = 0

    def __enter__(self) -> Acceptor:
        super().__enter__()
        self.port = int(self.first_line)
        return self


class Blackbox:
    """prometheus-blackbox-exporter on the prober's core, with a tcp_connect and a
    tls_connect module (the servers' CA trusted, as our probes trust it)."""

    BINARY = "prometheus-blackbox-exporter"

    def __init__(self, ca_file: str, cpu: int = PROBE_CPU) -> None:
        self.ca_file = ca_file
        self.cpu = cpu
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = Path()

    @staticmethod
    def available() -> bool:
        return shutil.which(Blackbox.BINARY) is not None

    def __enter__(self) -> Blackbox:
        binary = shutil.which(self.BINARY)
        if binary is None:
            raise RuntimeError("apt-get install prometheus-blackbox-exporter")
        self._dir = Path(tempfile.mkdtemp(prefix="bench-blackbox-"))
        config = self._dir / "blackbox.yml"
        config.write_text(
            "modules:\n"
            "  tcp_connect:\n"
            "    prober: tcp\n"
            "    timeout: 5s\n"
            "  tls_connect:\n"
            "    prober: tcp\n"
            "    timeout: 5s\n"
            "    tcp:\n"
            "      tls: true\n"
            "      tls_config:\n"
            f"        ca_file: {self.ca_file}\n"
            "  tls_named:\n"  # to an address the certificate does not name
            "    prober: tcp\n"
            "    timeout: 5s\n"
            "    tcp:\n"
            "      tls: true\n"
            "      tls_config:\n"
            f"        ca_file: {self.ca_file}\n"
            "        server_name: xmpp.test\n"
        )
        self.port = free_port()
        log = (self._dir / "blackbox.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Go sizes GOMAXPROCS from the affinity mask, so one core means one P.
            preexec_fn=pinned(self.cpu),
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/healthy", timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"blackbox_exporter did not start; see {self._dir}/blackbox.log"
                    ) from None
                time.sleep(0.05)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def run_json(argv: list[str], cpu: int, timeout: float = 600) -> dict[str, Any]:
    """Runs a worker pinned to cpu; its last stdout line is a JSON object."""
    done = subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=pinned(cpu),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {argv[2:4]} failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result

"""A real redis-server on a random loopback port, for the collectors' shared state in tests and
benchmarks: start, kill -9, start again (with its data, or empty), and a few plain reads."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from devstack.fleet import LOOPBACK, free_port, wait_for


class Redis:
    """redis-server with its files in `folder`. persist=True writes every command to the
    append-only file before answering (appendfsync always), so a kill -9 loses nothing;
    persist=False keeps everything in memory, so a restart comes back empty."""

    def __init__(self, folder: Path, persist: bool = True, port: int | None = None,
                 fsync: str = "always") -> None:
        self.folder = folder
        self.persist = persist
        self.fsync = fsync  # appendfsync: always, everysec (production's usual) or no
        self.port = port or free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, empty: bool = False) -> Redis:
        """Start (again) on the same port; empty=True throws its files away first."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if empty:
            for f in self.folder.glob("*"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        argv = [binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.folder),
                "--save", "", "--daemonize", "no", "--protected-mode", "no",
                "--logfile", str(self.folder / "redis.log")]
        if self.persist:
            argv += ["--appendonly", "yes", "--appendfsync", self.fsync]
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        wait_for(f"redis-server on {self.port}", self._answers, 10)
        return self

    def _answers(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log()}")
        try:
            return self.command("PING") == "+PONG"
        except OSError:
            return False

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def command(self, *args: str) -> str:
        """One command over RESP; the reply's first line (enough for PING, GET, INFO keys)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection((LOOPBACK, self.port), timeout=2) as s:
            s.sendall(payload.encode())
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            first, _, rest = data.decode().partition("\r\n")
            if first.startswith("$") and first != "$-1":
                return rest.split("\r\n", 1)[0]
            return first

    def get(self, key: str) -> str | None:
        reply = self.command("GET", key)
        return None if reply == "$-1" else reply

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """kill -9."""
        if self.popen is not None and self.running():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
            time.sleep(0.05)  # the port is free once the kernel closed the listener

    def stop(self) -> None:
        if self.popen is not None and self.running():
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Redis:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

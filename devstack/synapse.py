"""A real Matrix homeserver for tests: matrix-synapse (PyPI) on SQLite, behind its own nginx
for TLS the way most deployments run it, on random loopback ports, with registered accounts.

    with Synapse(servers) as hs:   # servers: a started devstack.servers.Servers
        ...  # matrix://alice@matrix.test:{hs.port}, hs.password, hs.devices("alice") ...

What is there (certificates from the servers' CA; matrix.test is in the servers' DNS):
- `port` (server name matrix.test): nginx with TLS, /_matrix proxied to synapse and
  /.well-known/matrix/client naming https://matrix.test:{port} (this origin).
- `delegating_port`: only a /.well-known/matrix/client naming the homeserver above, as a
  domain's web server does for a homeserver elsewhere (matrix://alice@http.test:{it}).
- `bare_port`: /_matrix proxied, no .well-known (404): the client falls back to this origin.
- `broken_port`: a .well-known that is not JSON.
- `gone_port`: /_matrix proxied to a port where nothing listens (nginx answers 502).
- `stray_port`: a .well-known naming https://matrix.test:{a port where nothing listens}.
- Accounts (shared-secret admin registration): `user` and `password` log in; the same
  password for `deactivated_user`, whose account is deactivated, and for `locked_user`,
  whose account an admin locked; `admin` for the admin API.
- Rate limits: `login_burst` successful logins and `failed_burst` failed ones per account
  (and per address) before M_LIMIT_EXCEEDED, refilled at `refill_per_second`. The default
  is generous; a test that trips the limit starts its own instance with small numbers.

Synapse takes a second or two to start (Python imports, the SQLite schema), so tests share
one instance per session (tests/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from devstack.servers import (
    KEEP_ENV,
    STOP_TIMEOUT,
    GroundError,
    PortTaken,
    Servers,
    _free_ports,
    _tail,
    _which,
    nginx_preamble,
    start_retrying,
)

SERVER_NAME = "matrix.test"
USER = "alice"
DEACTIVATED_USER = "carol"
LOCKED_USER = "dave"
ADMIN = "admin"
# Synapse imports ~100 modules and builds its SQLite schema before it answers.
START_TIMEOUT = 60.0


class Synapse:
    """matrix-synapse behind nginx on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        servers: Servers,
        *,
        login_burst: int = 10_000,
        failed_burst: int = 10_000,
        refill_per_second: float = 1000.0,
    ) -> None:
        self.servers = servers
        self.server_name = SERVER_NAME
        self.user = USER
        self.password = servers.password
        self.deactivated_user = DEACTIVATED_USER
        self.locked_user = LOCKED_USER
        self.login_burst = login_burst
        self.failed_burst = failed_burst
        self.refill_per_second = refill_per_second
        self.tmpdir = Path()
        self.port = 0
        self.delegating_port = 0
        self.bare_port = 0
        self.broken_port = 0
        self.gone_port = 0
        self.stray_port = 0
        self._dead_port = 0
        self.synapse_port = 0  # plain HTTP on loopback, behind nginx
        self._shared_secret = secrets.token_hex(16)
        self._admin_password = secrets.token_hex(16)
        self._admin_token = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def base_url(self) -> str:
        return f"https://{SERVER_NAME}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Synapse:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Synapse:
        _which("nginx")
        if importlib.util.find_spec("synapse") is None:
            raise GroundError(
                "matrix-synapse is not installed: .venv/bin/pip install -e '.[dev]' "
                "(scripts/setup does)"
            )
        start_retrying(self._start, self.stop)
        return self

    def _start(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="loginprobe-synapse-"))
        (self.port, self.delegating_port, self.bare_port, self.broken_port, self.gone_port,
         self.stray_port, self._dead_port, self.synapse_port) = _free_ports(8)
        self._write_synapse_config()
        self._spawn("synapse", [sys.executable, "-m", "synapse.app.homeserver",
                                "-c", str(self.tmpdir / "homeserver.yaml")])
        self._write_nginx_config()
        self._spawn("nginx", [_which("nginx"), "-e", str(self.tmpdir / "nginx.log"),
                              "-c", str(self.tmpdir / "nginx.conf"), "-g", "daemon off;"])
        self._wait("synapse", lambda: self._api("GET", "/_matrix/client/versions"))
        self._wait("nginx", self._check_nginx)
        self._admin_token = self.register(ADMIN, self._admin_password, admin=True)
        self.register(self.user, self.password)
        self.register(self.deactivated_user, self.password)
        self._deactivate(self.deactivated_user)
        self.register(self.locked_user, self.password)
        self._api("PUT", f"/_synapse/admin/v2/users/{self.user_id(self.locked_user)}",
                  {"locked": True}, token=self._admin_token)

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self._procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self.tmpdir != Path() and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.tmpdir / f"{name}.out").open("ab") as out:
            # --pdeathsig: no server outlives a test run that dies without stop().
            self._procs[name] = subprocess.Popen(
                [_which("setpriv"), "--pdeathsig", "KILL", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.tmpdir, start_new_session=True,
            )

    def _wait(self, name: str, check: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        proc = self._procs[name]
        last = "no answer yet"
        while True:
            logs = "\n".join(_tail(self.tmpdir / f"{name}.{kind}") for kind in ("out", "log"))
            if "Address already in use" in logs:
                raise PortTaken(f"{name} could not bind its port:\n{logs}")
            if proc.poll() is not None:
                raise GroundError(
                    f"{name} exited with {proc.returncode}; output:\n"
                    + _tail(self.tmpdir / f"{name}.out") + "\nlog:\n"
                    + _tail(self.tmpdir / f"{name}.log")
                )
            try:
                check()
                return
            except (OSError, ssl.SSLError, urllib.error.URLError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise GroundError(f"{name} did not answer within {START_TIMEOUT:.0f} s ({last})")
            time.sleep(0.05)

    # -- accounts --------------------------------------------------------------------------

    def register(self, user: str, password: str, *, admin: bool = False) -> str:
        """A new account through the shared-secret admin registration; its access token."""
        nonce = self._api("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), user.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        answer = self._api("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": user, "password": password, "admin": admin,
            "mac": mac.hexdigest(),
        })
        token: str = answer["access_token"]
        if not admin:
            # Registration logs the account in; only the probe's devices should count.
            self._api("POST", "/_matrix/client/v3/logout", {}, token=token)
        return token

    def _deactivate(self, user: str) -> None:
        """Deactivate the account but keep its password, so that the right password is
        answered M_USER_DEACTIVATED (deactivation clears the password; synapse checks
        the password before the account's state)."""
        uid = self.user_id(user)
        self._api("POST", f"/_synapse/admin/v1/deactivate/{uid}", {"erase": False},
                  token=self._admin_token)
        self._api("POST", f"/_synapse/admin/v1/reset_password/{uid}",
                  {"new_password": self.password, "logout_devices": True},
                  token=self._admin_token)

    def user_id(self, user: str) -> str:
        return f"@{user}:{SERVER_NAME}"

    def devices(self, user: str) -> list[str]:
        """The device ids the account has now (each login makes one; logout removes it)."""
        answer = self._api("GET", f"/_synapse/admin/v2/users/{self.user_id(user)}/devices",
                           token=self._admin_token)
        return [d["device_id"] for d in answer["devices"]]

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None,
             token: str | None = None) -> dict[str, Any]:
        """One JSON call to synapse's own port (no TLS, no nginx)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.synapse_port}{path}", method=method, headers=headers,
            data=json.dumps(body).encode() if body is not None else None,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise GroundError(f"synapse: {method} {path}: {exc.code} {exc.read()[:200]!r}"
                              ) from None
        return answer

    # -- configs ---------------------------------------------------------------------------

    def _write_synapse_config(self) -> None:
        base = self.tmpdir
        # Synapse's signing key format: algorithm, version, unpadded base64 of the seed.
        seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
        (base / "signing.key").write_text(f"ed25519 a_lp {seed}\n")
        (base / "log.yaml").write_text(json.dumps({
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler",
                                  "filename": str(base / "synapse.log"),
                                  "formatter": "plain"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }))

        def limit(burst: int) -> dict[str, float]:
            return {"per_second": self.refill_per_second, "burst_count": burst}

        config = {
            "server_name": SERVER_NAME,
            "pid_file": str(base / "synapse.pid"),
            "public_baseurl": f"{self.base_url}/",
            "listeners": [{
                "port": self.synapse_port, "bind_addresses": ["127.0.0.1"], "type": "http",
                "tls": False, "x_forwarded": True,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": {"name": "sqlite3", "args": {"database": str(base / "homeserver.db")}},
            "log_config": str(base / "log.yaml"),
            "media_store_path": str(base / "media"),
            "signing_key_path": str(base / "signing.key"),
            "registration_shared_secret": self._shared_secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "enable_metrics": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            # The fewest bcrypt rounds synapse allows: a login checks the password in ~1 ms
            # instead of ~250 ms (12 rounds), which a busy test machine turns into seconds.
            "bcrypt_rounds": 4,
            "url_preview_enabled": False,
            "rc_login": {
                "address": limit(max(self.login_burst, self.failed_burst)),
                "account": limit(self.login_burst),
                "failed_attempts": limit(self.failed_burst),
            },
            # The admin API's registration and deactivation in _start.
            "rc_registration": limit(10_000),
            "rc_admin_redaction": limit(10_000),
        }
        # JSON is YAML: no YAML writer needed.
        (base / "homeserver.yaml").write_text(json.dumps(config, indent=1))

    def _write_nginx_config(self) -> None:
        base = self.tmpdir
        pair = self.servers.certificate

        def serve_wellknown_of(base_url: str) -> str:
            wellknown = json.dumps({"m.homeserver": {"base_url": base_url}})
            return (
                "location = /.well-known/matrix/client {\n"
                "            default_type application/json;\n"
                "            add_header Access-Control-Allow-Origin *;\n"
                f"            return 200 '{wellknown}';\n        }}"
            )

        serve_wellknown = serve_wellknown_of(self.base_url)
        stray = serve_wellknown_of(f"https://{SERVER_NAME}:{self._dead_port}")
        proxy = """location /_matrix {{
            proxy_pass http://127.0.0.1:{};
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Host $host;
            proxy_http_version 1.1;
        }}"""
        to_synapse, to_nowhere = proxy.format(self.synapse_port), proxy.format(self._dead_port)
        (base / "nginx.conf").write_text(f"""\
# Written by devstack/synapse.py: TLS in front of synapse, as most deployments have it.
{nginx_preamble(base, base / "nginx.log")}    default_type text/html;
    ssl_certificate {pair.cert};
    ssl_certificate_key {pair.key};
    server {{
        listen 127.0.0.1:{self.port} ssl;
        {serve_wellknown}
        {to_synapse}
    }}
    server {{
        listen 127.0.0.1:{self.delegating_port} ssl;
        {serve_wellknown}
    }}
    server {{
        listen 127.0.0.1:{self.bare_port} ssl;
        {to_synapse}
    }}
    server {{
        listen 127.0.0.1:{self.broken_port} ssl;
        location = /.well-known/matrix/client {{ return 200 "<html>not json</html>"; }}
        {to_synapse}
    }}
    server {{
        listen 127.0.0.1:{self.gone_port} ssl;
        {to_nowhere}
    }}
    server {{
        listen 127.0.0.1:{self.stray_port} ssl;
        {stray}
    }}
}}
""")

    def _check_nginx(self) -> None:
        ctx = self.servers.client_context()
        for port in (self.port, self.delegating_port, self.bare_port, self.broken_port,
                     self.gone_port, self.stray_port):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                    ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
                sock.sendall(b"GET /_matrix/client/versions HTTP/1.0\r\nHost: matrix.test\r\n\r\n")
                head = sock.recv(64)
            if not head.startswith(b"HTTP/1.1 "):
                raise OSError(f"nginx on {port} answered {head!r}")

"""The servers: real unbound, prosody, mosquitto and nginx on loopback, for tests and the demo.

Each server gets its own config and state in a fresh temp directory, runs in the
foreground as our child, is checked with its real protocol before start() returns, and
is stopped by its PID. Ports are picked at random so several servers (or a developer's
own servers) can run side by side.

    with Servers() as g:
        ...  # g.xmpp_port, g.resolver, g.ca_file, g.password ...

What is there (all on 127.0.0.1; certificates from the CA in `ca_file`, valid for
xmpp.test, mqtt.test, http.test, matrix.test, localhost and 127.0.0.1):
- DNS at `resolver` ("127.0.0.1:PORT"): A for xmpp/mqtt/http/matrix.test; v6.test has A and
  AAAA ::1, ipv6.test only AAAA; noaddr.test only TXT (no address); nope.test and the
  like NXDOMAIN; slow.deny.test no answer (timeout); x.fail.test SERVFAIL;
  _xmpp-client._tcp / _xmpps-client._tcp.xmpp.test SRV to the prosody ports
  (_xmpp-client._tcp.fallback.test: a dead port first, then prosody's); names
  outside test. REFUSED.
- prosody, domain xmpp.test: `xmpp_port` (STARTTLS, required), `xmpps_port` (direct
  TLS). `user`/`password` log in; `disabled_user` gets <account-disabled/>.
- mosquitto: `mqtt_port` plain; `mqtts_port` valid cert; `mqtts_expired_port`,
  `mqtts_wronghost_port` (cert for other.test only), `mqtts_selfsigned_port`.
- nginx, on `http_port` and `https_port`: /login (Basic auth), /api/login (JSON POST),
  /status503, /status500; `https_tls11_port` speaks TLS 1.1 only.
- `set_password` and friends change credentials while everything runs.

`python -m devstack.servers` starts one, prints its ports as JSON and runs until
Ctrl-C or SIGTERM (the demo uses that).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from devstack.certs import CertPair, TestPKI, make_pki

USER = "alice"
PASSWORD = "s3cret-Pa55word!"
# Registered on prosody, but every login is answered <account-disabled/> (see _BAN_PLUGIN).
DISABLED_USER = "bob"
XMPP_DOMAIN = "xmpp.test"

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
START_ATTEMPTS = 3
# Log lines that mean "port taken" (unbound, mosquitto, nginx, then prosody, which logs
# this and keeps running without the port).
_BIND_FAILURES = ("Address already in use", "Failed to open server port")
# Set to keep the temp directory (configs, logs) after stop, for debugging.
KEEP_ENV = "LOGINPROBE_KEEP_GROUND"

_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_BINARIES = {
    "unbound": "unbound",
    "prosody": "prosody",
    "prosodyctl": "prosody",
    "mosquitto": "mosquitto",
    "mosquitto_passwd": "mosquitto",
    "nginx": "nginx-light",
    "openssl": "openssl",
    "setpriv": "util-linux",
}

# prosody 0.12 has no "disable account" command; its SASL code answers
# <account-disabled/> when the auth profile returns state false, so wrap the profile.
_BAN_PLUGIN = """\
-- Answers <failure><account-disabled/> for the users in ground_disabled_users.
local disabled = module:get_option_set("ground_disabled_users", {});
module:hook("stream-features", function(event)
	local handler = event.origin.sasl_handler;
	if not handler or handler.ground_wrapped then return; end
	handler.ground_wrapped = true;
	local profile = handler.profile;
	for name, check in pairs(profile) do
		profile[name] = function(sasl, username, ...)
			if disabled:contains(username) then
				if name == "plain_test" then return false, false; end
				return nil, nil, nil, nil, false;
			end
			return check(sasl, username, ...);
		end
	end
end, -1); -- after mod_saslauth (priority 0) has made the handler
"""


class GroundError(RuntimeError):
    """The servers could not be started (missing binary, a server that does not come up)."""


class PortTaken(GroundError):
    """A server could not bind the port it was given."""


class _NotReady(Exception):
    """A readiness check got an answer that is not the expected one yet."""


def _free_ports(count: int) -> list[int]:
    """Ports free for both TCP and UDP on 127.0.0.1 (DNS needs both on one number)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    finally:
        # Holding every socket until all are picked keeps the numbers distinct.
        for s in held:
            s.close()
    return ports


def _which(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)
    if path is None:
        raise GroundError(
            f"{name} not found: install the Debian package {_BINARIES[name]} (scripts/setup does)"
        )
    return path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _mqtt_connect_packet(user: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with clean session, username and password."""

    def field(value: str) -> bytes:
        raw = value.encode()
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = field("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big")
    body += field("servers-check") + field(user) + field(password)
    length, remaining = len(body), b""
    while True:  # MQTT's variable-length integer, 7 bits a byte
        length, digit = divmod(length, 128)
        remaining += bytes([digit | (0x80 if length else 0)])
        if not length:
            return b"\x10" + remaining + body


def mqtt_connack(
    port: int, user: str, password: str, timeout: float = 2.0, host: str = "127.0.0.1"
) -> bytes:
    """Sends a CONNECT over plain TCP and returns the CONNACK bytes (b"" if closed)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_mqtt_connect_packet(user, password))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        return answer


def xmpp_stream_header(
    port: int, *, tls_context: ssl.SSLContext | None = None, timeout: float = 2.0
) -> bytes:
    """Opens an XMPP client stream and returns what the server sent up to its features."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if tls_context is not None:
            sock = tls_context.wrap_socket(raw, server_hostname=XMPP_DOMAIN)
        sock.sendall(
            f"<?xml version='1.0'?><stream:stream to='{XMPP_DOMAIN}' xmlns='jabber:client'"
            " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode()
        )
        answer = b""
        while b"</stream:features>" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def http_get(
    port: int,
    path: str = "/",
    *,
    tls_context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
) -> int:
    """A bare HTTP/1.0 GET; returns the status code."""
    lines = [f"GET {path} HTTP/1.0", "Host: http.test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if tls_context is not None:
            sock = tls_context.wrap_socket(raw, server_hostname="http.test")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise _NotReady(f"not an HTTP answer: {answer[:80]!r}")
    return int(status_line[1])


class Servers:
    """Real servers on 127.0.0.1 with random ports; see the module docstring."""

    def __init__(self) -> None:
        self.user = USER
        self.password = PASSWORD
        self.disabled_user = DISABLED_USER
        self.xmpp_domain = XMPP_DOMAIN
        self.tmpdir = Path()
        self.ca_file = Path()
        self.resolver = ""
        self.dns_port = 0
        self.xmpp_port = 0
        self.xmpps_port = 0
        self.mqtt_port = 0
        self.mqtts_port = 0
        self.mqtts_expired_port = 0
        self.mqtts_wronghost_port = 0
        self.mqtts_selfsigned_port = 0
        self.http_port = 0
        self.https_port = 0
        self.https_tls11_port = 0
        # Internal: nginx's /login upstream, the JSON backend, and a port nobody listens on
        # that unbound forwards fail.test to.
        self._upstream_port = 0
        self._json_port = 0
        self._dead_port = 0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._http_users: dict[str, str] = {}
        self._pki: TestPKI | None = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Servers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Servers:
        if self._started:
            return self
        for name in _BINARIES:
            _which(name)  # fail before anything is written or started

        def attempt() -> None:
            self._started = True
            self._start()

        start_retrying(attempt, self.stop)
        return self

    def _start(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="loginprobe-servers-"))
        (
            self.dns_port,
            self.xmpp_port,
            self.xmpps_port,
            self.mqtt_port,
            self.mqtts_port,
            self.mqtts_expired_port,
            self.mqtts_wronghost_port,
            self.mqtts_selfsigned_port,
            self.http_port,
            self.https_port,
            self.https_tls11_port,
            self._upstream_port,
            self._json_port,
            self._dead_port,
        ) = _free_ports(14)
        self.resolver = f"127.0.0.1:{self.dns_port}"
        self._pki = make_pki(self.tmpdir / "pki")
        self.ca_file = self._pki.ca_file

        # Start everything first, then wait: the servers boot in parallel.
        self._start_unbound()
        self._start_prosody()
        self._start_mosquitto()
        self._start_nginx()
        self._wait("unbound", self._check_dns)
        self._wait("prosody", self._check_xmpp)
        self._wait("mosquitto", self._check_mqtt)
        self._wait("json-login", lambda: self._expect(http_get(self._json_port, "/ready"), 200))
        self._wait("nginx", self._check_http)

    def server_down(self, name: str) -> None:
        """Stop one server ("prosody" or "mosquitto") the way a deploy does (SIGTERM)."""
        proc = self._procs.pop(name)
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def server_up(self, name: str) -> None:
        """Start a server stopped by server_down again, on the same ports, and wait for it."""
        start, check = {
            "prosody": (self._start_prosody, self._check_xmpp),
            "mosquitto": (self._start_mosquitto, self._check_mqtt),
        }[name]
        start()
        self._wait(name, check)

    def stop(self) -> None:
        """Stops every server (SIGTERM, then SIGKILL) and removes the temp directory."""
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
        if self._started and self.tmpdir != Path() and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self._started = False

    def ports(self) -> dict[str, int]:
        """The public ports by name (what `python -m devstack.servers` prints)."""
        names = (
            "dns_port",
            "xmpp_port",
            "xmpps_port",
            "mqtt_port",
            "mqtts_port",
            "mqtts_expired_port",
            "mqtts_wronghost_port",
            "mqtts_selfsigned_port",
            "http_port",
            "https_port",
            "https_tls11_port",
        )
        return {name: int(getattr(self, name)) for name in names}

    # -- changing credentials (to break or mend a login while the servers run) -----

    def set_password(self, new: str) -> None:
        """Changes the main user's password on every server; `self.password` follows."""
        self.set_xmpp_password(self.user, new)
        self.set_mqtt_password(self.user, new)
        self.set_http_password(self.user, new)
        self.password = new

    def set_xmpp_password(self, user: str, password: str) -> None:
        # `register` overwrites an existing account; prosody reads accounts from disk
        # on every login, so no reload is needed.
        self._run(
            [
                "prosodyctl",
                "--config",
                str(self._prosody_cfg),
                "register",
                user,
                self.xmpp_domain,
                password,
            ]
        )

    def set_mqtt_password(self, user: str, password: str) -> None:
        self._run(["mosquitto_passwd", "-b", str(self._mqtt_passwd), user, password])
        self._procs["mosquitto"].send_signal(signal.SIGHUP)
        # The reload happens in mosquitto's main loop some time after the signal.
        self._wait(
            "mosquitto",
            lambda: self._expect(mqtt_connack(self.mqtt_port, user, password)[3], 0),
        )

    def set_http_password(self, user: str, password: str) -> None:
        # nginx re-reads the htpasswd file and the backend its users file on every request.
        self._http_users[user] = password
        self._write_http_users()

    # -- servers ---------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        path = self.tmpdir / name
        path.mkdir(exist_ok=True)
        return path

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        cmd = [_which(argv[0]), *argv[1:]]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise GroundError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.tmpdir / f"{name}.log"
        with log.open("ab") as out:
            # setpriv --pdeathsig: the kernel kills the server if this process dies without
            # stop() (SIGKILL, crash), so no server outlives its test run. The signal
            # follows the thread that forked, so start a Servers from a long-lived thread
            # (the main one). It is also dropped when a server changes its uid, hence
            # run_as_root / user root below.
            self._procs[name] = subprocess.Popen(
                [_which("setpriv"), "--pdeathsig", "KILL", "--", _which(argv[0]), *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                start_new_session=True,  # Ctrl-C reaches us, not them
            )

    def _wait(self, name: str, check: Callable[[], None]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        proc = self._procs.get(name)
        log = self.tmpdir / f"{name}.log"
        last = "no answer yet"
        while True:
            if proc is not None:
                tail = _tail(log)
                if any(failure in tail for failure in _BIND_FAILURES):
                    raise PortTaken(f"{name} could not bind its port; log:\n{tail}")
                if proc.poll() is not None:
                    raise GroundError(f"{name} exited with {proc.returncode}; log:\n{tail}")
            try:
                check()
                return
            except (OSError, ssl.SSLError, dns.exception.DNSException, _NotReady) as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise GroundError(
                    f"{name} did not answer within {START_TIMEOUT:.0f} s ({last}); log:\n"
                    + _tail(log)
                )
            time.sleep(0.02)

    @staticmethod
    def _expect(got: object, want: object) -> None:
        if got != want:
            raise _NotReady(f"got {got!r}, want {want!r}")

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts the servers' CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def certificate(self) -> CertPair:
        """The valid server certificate and its key, for a server started beside these
        (devstack/synapse.py)."""
        assert self._pki is not None
        return self._pki.valid

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context with the servers' valid certificate, for a fault server that
        stands in front of a real one (devstack/fakes.py)."""
        assert self._pki is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._pki.valid.cert, self._pki.valid.key)
        return ctx

    # unbound ------------------------------------------------------------------------

    def _start_unbound(self) -> None:
        conf = self._dir("unbound") / "unbound.conf"
        conf.write_text(self._unbound_conf())
        self._spawn("unbound", ["unbound", "-d", "-c", str(conf)])

    def _unbound_conf(self) -> str:
        ttl = "60 IN"
        records = [
            f"test. {ttl} SOA ns.test. hostmaster.test. 1 3600 600 86400 60",
            f"xmpp.test. {ttl} A 127.0.0.1",
            f"mqtt.test. {ttl} A 127.0.0.1",
            f"http.test. {ttl} A 127.0.0.1",
            f"matrix.test. {ttl} A 127.0.0.1",
            f"v6.test. {ttl} A 127.0.0.1",
            f"v6.test. {ttl} AAAA ::1",
            f"ipv6.test. {ttl} AAAA ::1",
            f'noaddr.test. {ttl} TXT "exists, but has no address"',
            f"_xmpp-client._tcp.xmpp.test. {ttl} SRV 0 5 {self.xmpp_port} xmpp.test.",
            f"_xmpps-client._tcp.xmpp.test. {ttl} SRV 0 5 {self.xmpps_port} xmpp.test.",
            # A dead first choice in front of a live one: a client must move on (RFC 2782).
            f"_xmpp-client._tcp.fallback.test. {ttl} SRV 0 5 {self._dead_port} xmpp.test.",
            f"_xmpp-client._tcp.fallback.test. {ttl} SRV 10 5 {self.xmpp_port} xmpp.test.",
        ]
        # Single quotes around a record that has a quoted TXT string inside.
        local_data = "\n".join(
            f"    local-data: '{r}'" if '"' in r else f'    local-data: "{r}"' for r in records
        )
        return f"""\
server:
    interface: 127.0.0.1@{self.dns_port}
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    # Another process must not share our port.
    so-reuseport: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{self.tmpdir / "unbound"}"
    pidfile: "{self.tmpdir / "unbound" / "unbound.pid"}"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    # fail.test is forwarded to a dead port on loopback: allow that, and give up fast
    # (without this the first SERVFAIL takes 15 s).
    do-not-query-localhost: no
    infra-cache-max-rtt: 100
    # Nothing leaves loopback: anything outside test. is refused.
    local-zone: "." refuse
    local-zone: "test." static
    # deny drops the query: a DNS timeout over UDP.
    local-zone: "deny.test." deny
    # transparent: no local answer, so fail.test goes to its forward-zone below.
    local-zone: "fail.test." transparent
{local_data}

forward-zone:
    name: "fail.test."
    forward-addr: 127.0.0.1@{self._dead_port}
"""

    def _check_dns(self) -> None:
        query = dns.message.make_query("_xmpp-client._tcp.xmpp.test", dns.rdatatype.SRV)
        answer = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=0.5)
        if not answer.answer:
            raise _NotReady(f"no SRV answer: {answer}")
        dns.query.tcp(query, "127.0.0.1", port=self.dns_port, timeout=0.5)

    # prosody --------------------------------------------------------------------------

    @property
    def _prosody_cfg(self) -> Path:
        return self.tmpdir / "prosody" / "prosody.cfg.lua"

    def _start_prosody(self) -> None:
        assert self._pki is not None
        base = self._dir("prosody")
        plugins = base / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "mod_ground_ban.lua").write_text(_BAN_PLUGIN)
        (base / "data").mkdir(exist_ok=True)
        # prosody indexes this folder for certificates by name; keep it empty so only the
        # explicit ssl settings below count (the broken certificates must never be picked).
        (base / "certs").mkdir(exist_ok=True)
        cert, key = self._pki.valid.cert, self._pki.valid.key
        ssl_conf = f'{{ certificate = "{cert}"; key = "{key}"; }}'
        self._prosody_cfg.write_text(f"""\
-- Written by devstack/servers.py.
-- As root on a test machine; prosodyctl then also stays root, so no chown is needed.
run_as_root = true
pidfile = "{base / "prosody.pid"}"
data_path = "{base / "data"}"
plugin_paths = {{ "{plugins}" }}
certificates = "{base / "certs"}"
log = {{ {{ levels = {{ min = "info" }}, to = "console" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.xmpp_port} }}
c2s_direct_tls_ports = {{ {self.xmpps_port} }}
s2s_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "ground_ban"; "smacks" }}
modules_disabled = {{ "s2s"; "offline" }}
ground_disabled_users = {{ "{self.disabled_user}" }}
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
-- Without this a STARTTLS login stalls ~40 ms (Nagle + delayed ACK on loopback).
network_settings = {{ nagle = false }}
ssl = {ssl_conf}
c2s_direct_tls_ssl = {ssl_conf}

VirtualHost "{XMPP_DOMAIN}"
    ssl = {ssl_conf}
""")
        self.set_xmpp_password(self.user, self.password)
        self.set_xmpp_password(self.disabled_user, self.password)
        self._spawn("prosody", ["prosody", "--config", str(self._prosody_cfg), "-F"])

    def _check_xmpp(self) -> None:
        header = xmpp_stream_header(self.xmpp_port)
        if b"<starttls" not in header:
            raise _NotReady(f"no STARTTLS in {header[:200]!r}")
        header = xmpp_stream_header(self.xmpps_port, tls_context=self.client_context())
        if b"<mechanisms" not in header:
            raise _NotReady(f"no SASL mechanisms over direct TLS in {header[:200]!r}")

    # mosquitto ------------------------------------------------------------------------

    @property
    def _mqtt_passwd(self) -> Path:
        return self.tmpdir / "mosquitto" / "passwd"

    def _start_mosquitto(self) -> None:
        assert self._pki is not None
        base = self._dir("mosquitto")
        self._mqtt_passwd.touch(mode=0o600)
        self._run(["mosquitto_passwd", "-b", str(self._mqtt_passwd), self.user, self.password])
        tls = [
            (self.mqtts_port, self._pki.valid),
            (self.mqtts_expired_port, self._pki.expired),
            (self.mqtts_wronghost_port, self._pki.wrong_host),
            (self.mqtts_selfsigned_port, self._pki.self_signed),
        ]
        listeners = "".join(
            f"\nlistener {port} 127.0.0.1\ncertfile {pair.cert}\nkeyfile {pair.key}\n"
            for port, pair in tls
        )
        conf = base / "mosquitto.conf"
        conf.write_text(f"""\
# Written by devstack/servers.py.
# Stay root: dropping to the mosquitto user would also drop setpriv's pdeathsig.
user root
persistence false
allow_anonymous false
per_listener_settings false
password_file {self._mqtt_passwd}
# Without this CONNACK over TLS arrives ~45 ms late (Nagle).
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener {self.mqtt_port} 127.0.0.1
{listeners}""")
        self._spawn("mosquitto", ["mosquitto", "-c", str(conf)])

    def _check_mqtt(self) -> None:
        self._expect(mqtt_connack(self.mqtt_port, self.user, self.password), b"\x20\x02\x00\x00")
        # Every TLS listener must finish a handshake (certificate problems are the point,
        # so do not verify here).
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for port in (
            self.mqtts_port,
            self.mqtts_expired_port,
            self.mqtts_wronghost_port,
            self.mqtts_selfsigned_port,
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                insecure.wrap_socket(raw).close()

    # nginx and the JSON backend ------------------------------------------------------

    def _write_http_users(self) -> None:
        base = self._dir("nginx")
        lines = []
        for user, password in self._http_users.items():
            digest = self._run(["openssl", "passwd", "-apr1", "-stdin"], stdin=password).strip()
            lines.append(f"{user}:{digest}\n")
        # Write then rename: nginx and the backend read these files on every request.
        files = {"htpasswd": "".join(lines), "users.json": json.dumps(self._http_users)}
        for name, text in files.items():
            tmp = base / f"{name}.tmp"
            tmp.write_text(text)
            tmp.replace(base / name)

    def _start_nginx(self) -> None:
        assert self._pki is not None
        base = self._dir("nginx")
        self._http_users = {self.user: self.password}
        self._write_http_users()
        self._spawn(
            "json-login",
            [
                sys.executable,
                str(Path(__file__).with_name("json_login.py")),
                str(self._json_port),
                str(base / "users.json"),
            ],
        )
        cert, key = self._pki.valid.cert, self._pki.valid.key
        locations = f"""
        location = / {{ return 200 "loginprobe servers\\n"; }}
        # return would run before auth_basic's access check: proxy to a server that says ok.
        location /login {{
            auth_basic "loginprobe";
            auth_basic_user_file {base / "htpasswd"};
            proxy_pass http://127.0.0.1:{self._upstream_port};
        }}
        location = /api/login {{ proxy_pass http://127.0.0.1:{self._json_port}; }}
        location = /status503 {{ return 503; }}
        location = /status500 {{ return 500; }}
"""
        conf = base / "nginx.conf"
        conf.write_text(f"""\
# Written by devstack/servers.py.
# One process: a SIGTERM to the PID we started stops everything, and pdeathsig covers it.
{nginx_preamble(base, self.tmpdir / "nginx.log")}    default_type text/plain;
    ssl_certificate {cert};
    ssl_certificate_key {key};

    server {{
        listen 127.0.0.1:{self._upstream_port};
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{self.http_port};
{locations}
    }}
    server {{
        listen 127.0.0.1:{self.https_port} ssl;
{locations}
    }}
    # Only TLS 1.1, which Python's client (TLS 1.2 minimum) refuses: "no common version".
    # SECLEVEL=0 because OpenSSL 3 disables TLS 1.1 at its default security level.
    server {{
        listen 127.0.0.1:{self.https_tls11_port} ssl;
        ssl_protocols TLSv1.1;
        ssl_ciphers DEFAULT:@SECLEVEL=0;
{locations}
    }}
}}
""")
        self._spawn(
            "nginx",
            ["nginx", "-e", str(self.tmpdir / "nginx.log"), "-c", str(conf), "-g", "daemon off;"],
        )

    def _check_http(self) -> None:
        self._expect(http_get(self.http_port, "/"), 200)
        self._expect(http_get(self.https_port, "/", tls_context=self.client_context()), 200)
        with socket.create_connection(("127.0.0.1", self.https_tls11_port), timeout=2):
            pass


def main() -> None:
    """Runs a servers until Ctrl-C or SIGTERM, printing its ports as one JSON line."""
    # SIGTERM takes the same path as Ctrl-C, so stop() runs and the servers go too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Servers() as servers:
        info: dict[str, object] = dict(servers.ports())
        info.update(
            resolver=servers.resolver,
            ca_file=str(servers.ca_file),
            user=servers.user,
            password=servers.password,
            disabled_user=servers.disabled_user,
            tmpdir=str(servers.tmpdir),
        )
        print(json.dumps(info), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()


if __name__ == "__main__":
    main()


def start_retrying(start: Callable[[], None], stop: Callable[[], None]) -> None:
    """start(), stopping and starting again on PortTaken up to START_ATTEMPTS times: another
    process took a port between our pick and the server's bind, so new ones are picked. Any
    other failure is real: stop() and report it at once."""
    for attempt in range(START_ATTEMPTS):
        try:
            start()
            return
        except PortTaken:
            stop()
            if attempt == START_ATTEMPTS - 1:
                raise
        except BaseException:
            stop()
            raise


def nginx_preamble(folder: Path, log: Path) -> str:
    """The head of a devstack nginx.conf up to inside `http {`: one process, its pid and
    temp paths in folder, errors and access to log."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
master_process off;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {log} info;
events {{ worker_connections 256; }}
http {{
    access_log {log};
{temp_paths}
"""

"""A "server" network namespace with real unbound and mosquitto, reached from this namespace by
two veth links, "wifi" and "cellular", the second made a flaky mobile link on demand."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query

from devstack.certs import PKI
from devstack.servers import PASSWORD, USER, mqtt_connack

NET = ipaddress.ip_network("198.51.100.0/24")
SLOTS = 24  # /29s at .0-.191; their service addresses are .192-.215
MQTTS_PORT = 8883
MQTT_PORT = 1883  # plain, for the readiness check only
CERT_ALIASES = 170  # names in the server certificate besides mqtt.test: about 4 kB
START_TIMEOUT = 10.0
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class NetnsError(RuntimeError):
    """A command that builds the namespace failed."""


def _which(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN)
    if path is None:
        raise NetnsError(f"{name} not found (iproute2, nftables, unbound, mosquitto)")
    return path


def run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run([_which(argv[0]), *argv[1:]], input=stdin, capture_output=True,
                          text=True, timeout=20)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Link:
    name: str  # wifi, cellular
    ifname: str  # the end in this namespace: what an agent's path binds to
    peer: str  # the end in the server namespace
    client: str  # address of ifname
    server: str  # address of peer; mqtt.test for queries that came by this link
    subnet: str  # the /30


class TwoLinks:
    """The namespace, its links and (after start_servers) its servers.

        with TwoLinks() as net:
            net.start_servers(folder)
            net.degrade(net.cellular, rate="96kbit", drop_percent=5)
            ...  # an agent with paths bound to net.wifi.ifname and net.cellular.ifname

    Addresses come from 198.51.100.0/24 (TEST-NET-2): each run claims a slot, a /29 split
    into one /30 per link, plus a service address on the namespace's loopback where unbound
    answers. The service address is routed over both links (wifi first), so only a socket
    bound to the cellular interface reaches it by that link; unbound answers mqtt.test with
    the server's address on the link the query came by, so a path's DNS that left by the
    wrong link gets an address its connection cannot reach. Nothing is routed anywhere
    else. Needs root. Everything goes on exit, even after a failure: deleting the namespace
    takes its veth ends (so their peers), qdiscs, nftables table and servers along; the
    table in this namespace is deleted by name.
    """

    def __init__(self) -> None:
        self.slot = -1
        self.ns = ""
        self.service = ""  # unbound's address, on the namespace's loopback
        self._wifi: Link | None = None
        self._cellular: Link | None = None
        self.pki: PKI | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs = Path()

    @property
    def wifi(self) -> Link:
        assert self._wifi is not None, "use TwoLinks in a with statement"
        return self._wifi

    @property
    def cellular(self) -> Link:
        assert self._cellular is not None, "use TwoLinks in a with statement"
        return self._cellular

    @property
    def ca_file(self) -> Path:
        """The CA that signed mosquitto's certificate (for mqtt.test)."""
        assert self.pki is not None, "start_servers() first"
        return self.pki.ca_file

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> TwoLinks:
        try:
            self._claim()
            self._links()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _claim(self) -> None:
        """The namespace's name is the slot's lock: `ip netns add` fails if it exists, so
        runs side by side (other engineers', a killed run's leftovers) never share one."""
        for slot in range(SLOTS):
            try:
                run("ip", "netns", "add", f"lpsrv{slot}")
            except NetnsError:
                continue
            self.slot, self.ns = slot, f"lpsrv{slot}"
            return
        raise NetnsError("no free slot: `ip netns list` shows lpsrv* left by killed runs")

    def _links(self) -> None:
        base = self.slot * 8
        self.service = str(NET[192 + self.slot])
        self._wifi = self._link("wifi", "lpw", base)
        self._cellular = self._link("cellular", "lpc", base + 4)
        self.inside("ip", "link", "set", "lo", "up")
        self.inside("ip", "addr", "add", f"{self.service}/32", "dev", "lo")
        # Both links reach the service address; a socket not bound to a device takes the
        # first. A bound socket only considers routes by its own device.
        for metric, link in ((100, self.wifi), (200, self.cellular)):
            run("ip", "route", "add", f"{self.service}/32", "via", link.server, "dev",
                link.ifname, "metric", str(metric))

    def _link(self, name: str, prefix: str, base: int) -> Link:
        link = Link(name, f"{prefix}{self.slot}", name, str(NET[base + 1]), str(NET[base + 2]),
                    f"{NET[base]}/30")
        run("ip", "link", "add", link.ifname, "type", "veth", "peer", "name", link.peer,
            "netns", self.ns)
        run("ip", "addr", "add", f"{link.client}/30", "dev", link.ifname)
        run("ip", "link", "set", link.ifname, "up")
        self.inside("ip", "addr", "add", f"{link.server}/30", "dev", link.peer)
        self.inside("ip", "link", "set", link.peer, "up")
        return link

    def close(self) -> None:
        """Stop the servers, then remove everything this run made; never raises."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self.slot >= 0:
            with contextlib.suppress(NetnsError):
                run("nft", "delete", "table", "inet", self._table)
            for link in (self._wifi, self._cellular):  # gone with the namespace, normally
                if link is not None:
                    with contextlib.suppress(NetnsError):
                        run("ip", "link", "del", link.ifname)
            with contextlib.suppress(NetnsError):
                run("ip", "netns", "del", self.ns)
            self.slot = -1

    def inside(self, *argv: str, stdin: str | None = None) -> str:
        return run("ip", "netns", "exec", self.ns, *argv, stdin=stdin)

    # -- a flaky mobile link --------------------------------------------------------

    @property
    def _table(self) -> str:
        return f"loginprobe_flaky{self.slot}"

    def degrade(self, link: Link, rate: str, drop_percent: int) -> None:
        """Shape both directions of link to rate with tbf (a bucket of one full packet, so
        a burst is not let through at line rate) and drop drop_percent of the packets
        arriving at either end. Drops are made on input: dropped on output, a packet
        would be a local error for the sender instead of a loss it must recover from."""
        tbf = ("root", "tbf", "rate", rate, "burst", "1540", "latency", "2s")
        run("tc", "qdisc", "add", "dev", link.ifname, *tbf)
        self.inside("tc", "qdisc", "add", "dev", link.peer, *tbf)
        self._random_drop(link, drop_percent)

    def lossy(self, link: Link, loss_percent: int) -> str:
        """Lose loss_percent of the packets arriving at either end of link, nothing else:
        with tc netem where the kernel has it, else (this machine's kernel has no netem)
        with the nftables random drop degrade() uses. Returns which was used."""
        try:
            for device, inside in ((link.ifname, False), (link.peer, True)):
                argv = ("tc", "qdisc", "add", "dev", device, "root", "netem", "loss",
                        f"{loss_percent}%")
                self.inside(*argv) if inside else run(*argv)
            return "netem"
        except NetnsError:
            self.mend(link)
        self._random_drop(link, loss_percent)
        return "nftables"

    def _random_drop(self, link: Link, percent: int) -> None:
        """nftables drops percent of the packets arriving at either end of link."""
        for device, where in ((link.peer, "inside"), (link.ifname, "here")):
            script = (
                f"add table inet {self._table}\n"
                f"add chain inet {self._table} input"
                " { type filter hook input priority -10; policy accept; }\n"
                f'add rule inet {self._table} input iifname "{device}"'
                f" numgen random mod 100 < {percent} drop\n"
            )
            if where == "inside":
                self.inside("nft", "-f", "-", stdin=script)
            else:
                run("nft", "-f", "-", stdin=script)

    def mend(self, link: Link) -> None:
        """The link clean again: no qdisc of ours, no drops."""
        with contextlib.suppress(NetnsError):
            run("tc", "qdisc", "del", "dev", link.ifname, "root")
        with contextlib.suppress(NetnsError):
            self.inside("tc", "qdisc", "del", "dev", link.peer, "root")
        with contextlib.suppress(NetnsError):
            run("nft", "delete", "table", "inet", self._table)
        with contextlib.suppress(NetnsError):
            self.inside("nft", "delete", "table", "inet", self._table)

    # -- servers --------------------------------------------------------------------

    def start_servers(self, folder: Path) -> None:
        """unbound on the service address and mosquitto (TLS for mqtt.test, user alice) on
        every address of the namespace; returns once both answer over the wifi link."""
        folder.mkdir(parents=True, exist_ok=True)
        self._logs = folder
        self.pki = PKI(folder / "pki", "loginprobe netns test CA")
        # As many bytes as a public server's chain (leaf and intermediate, 3-5 kB), where
        # the Servers's certificate is 0.5 kB: TLS is the phase that moves the most bytes,
        # and on a slow link its certificate flight is what takes time.
        aliases = tuple(f"alias-{i:03}.mqtt.test" for i in range(CERT_ALIASES))
        cert = self.pki.issue("mqtt.test", dns=("mqtt.test", *aliases), server=True)
        (folder / "unbound.conf").write_text(self._unbound_conf(folder))
        self._spawn("unbound", "unbound", "-d", "-c", str(folder / "unbound.conf"))
        passwd = folder / "mosquitto.passwd"
        passwd.touch(mode=0o600)
        run("mosquitto_passwd", "-b", str(passwd), USER, PASSWORD)
        # Settings and their reasons as in the Servers (devstack/servers.py).
        (folder / "mosquitto.conf").write_text(
            f"user root\npersistence false\nallow_anonymous false\n"
            f"per_listener_settings false\npassword_file {passwd}\nset_tcp_nodelay true\n"
            f"log_dest stderr\nlog_type error\nlog_type warning\n"
            f"listener {MQTT_PORT} {self.wifi.server}\n"
            f"listener {MQTTS_PORT}\ncertfile {cert.cert}\nkeyfile {cert.key}\n"
        )
        self._spawn("mosquitto", "mosquitto", "-c", str(folder / "mosquitto.conf"))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._ready()
                return
            except OSError as exc:
                for name, proc in self._procs.items():
                    if proc.poll() is not None:
                        raise NetnsError(f"{name} exited: {self.log(name)}") from exc
                if time.monotonic() > deadline:
                    raise NetnsError(f"servers not ready: {exc}; unbound: {self.log('unbound')}"
                                     f"\nmosquitto: {self.log('mosquitto')}") from exc
                time.sleep(0.05)

    def _ready(self) -> None:
        if mqtt_connack(MQTT_PORT, USER, PASSWORD, host=self.wifi.server) != b"\x20\x02\x00\x00":
            raise OSError("mosquitto did not accept the login yet")
        with socket.create_connection((self.wifi.server, MQTTS_PORT), timeout=1):
            pass
        try:
            answer = dns.query.udp(dns.message.make_query("mqtt.test", "A"), self.service,
                                   timeout=0.5)
        except dns.exception.Timeout:
            raise OSError("no DNS answer yet") from None
        if self.wifi.server not in answer.to_text():
            raise OSError(f"unbound's answer lacks the wifi view's address: {answer}")

    def _unbound_conf(self, folder: Path) -> str:
        views = "".join(
            f"view:\n    name: \"{link.name}\"\n"
            f"    local-data: \"mqtt.test. 60 IN A {link.server}\"\n"
            for link in (self.wifi, self.cellular)
        )
        acl = "".join(
            f"    access-control: {link.subnet} allow\n"
            f"    access-control-view: {link.subnet} {link.name}\n"
            for link in (self.wifi, self.cellular)
        )
        # As the Servers's unbound (devstack/servers.py), on the service address; each
        # link's clients get their own view of mqtt.test.
        return f"""\
server:
    interface: {self.service}@53
    do-ip6: no
    so-reuseport: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{folder}"
    pidfile: "{folder / "unbound.pid"}"
    use-syslog: no
    logfile: ""
    num-threads: 1
    module-config: "iterator"
{acl}    local-zone: "." refuse
    local-zone: "test." static
{views}"""

    def _spawn(self, name: str, *argv: str) -> None:
        with (self._logs / f"{name}.log").open("ab") as out:
            # pdeathsig, as in the Servers: a server never outlives a killed test run.
            self._procs[name] = subprocess.Popen(
                [_which("setpriv"), "--pdeathsig", "KILL", "--", _which("ip"), "netns", "exec",
                 self.ns, _which(argv[0]), *argv[1:]],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        path = self._logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

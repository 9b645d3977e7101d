"""The WebSocket servers: prosody with mod_websocket, mosquitto with websockets listeners and
nginx proxying WebSocket in front of both (the path most deployments have), beside a running
Servers, whose DNS (xmpp.test, mqtt.test) and CA they share.

    with Servers() as g, WsServers(g) as ws:
        ...  # ws.xmpp_ws_port, ws.proxy_https_port ...

What is there (127.0.0.1; the user and password are the Servers' own):
- prosody, domain xmpp.test, /xmpp-websocket on `xmpp_ws_port` (plain) and `xmpp_wss_port`
  (TLS); consider_websocket_secure, as behind a TLS-terminating proxy.
- mosquitto: websockets on `mqtt_ws_port` (plain) and `mqtt_wss_port` (TLS); it will not
  start with websockets listeners alone, so a plain listener is there too.
- nginx on `proxy_http_port` and `proxy_https_port`: /xmpp-websocket and /mqtt proxied
  with the Upgrade and Connection headers passed; /strip/xmpp-websocket and /strip/mqtt
  proxied without them (the classic proxy misconfiguration); /old/xmpp-websocket and
  /old/mqtt answer 301 to the new path (a moved endpoint); /.well-known/host-meta names
  the ws:// and wss:// XMPP endpoints (XEP-0156).
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from devstack import servers as base
from devstack.servers import Servers, _free_ports, http_get, mqtt_connack, nginx_preamble


class WsServers(Servers):
    """WebSocket servers beside a running Servers; see the module docstring."""

    def __init__(self, ground: Servers) -> None:
        super().__init__()
        self.ground = ground
        self.xmpp_ws_port = 0
        self.xmpp_wss_port = 0
        self.mqtt_ws_port = 0
        self.mqtt_wss_port = 0
        self.proxy_http_port = 0
        self.proxy_https_port = 0
        self._c2s_port = 0  # prosody's plain c2s, unused but configured
        self._mqtt_plain_port = 0  # mosquitto's required plain listener

    def __enter__(self) -> WsServers:
        self.start()
        return self

    def _start(self) -> None:
        g = self.ground
        self.tmpdir = Path(tempfile.mkdtemp(prefix="loginprobe-ws-servers-"))
        (
            self.xmpp_ws_port,
            self.xmpp_wss_port,
            self.mqtt_ws_port,
            self.mqtt_wss_port,
            self.proxy_http_port,
            self.proxy_https_port,
            self._c2s_port,
            self._mqtt_plain_port,
        ) = _free_ports(8)
        self.user, self.password = g.user, g.password
        self.ca_file, self.resolver, self.dns_port = g.ca_file, g.resolver, g.dns_port
        self._pki = g._pki
        self._start_ws_prosody()
        self._start_ws_mosquitto()
        self._start_proxy()
        self._wait("prosody", self._check_ws_prosody)
        self._wait("mosquitto", self._check_ws_mosquitto)
        self._wait("nginx", self._check_proxy)

    def server_up(self, name: str) -> None:
        """Start a server stopped by server_down ("prosody" or "mosquitto") again."""
        start, check = {
            "prosody": (self._start_ws_prosody, self._check_ws_prosody),
            "mosquitto": (self._start_ws_mosquitto, self._check_ws_mosquitto),
        }[name]
        start()
        self._wait(name, check)

    def ports(self) -> dict[str, int]:
        names = ("xmpp_ws_port", "xmpp_wss_port", "mqtt_ws_port", "mqtt_wss_port",
                 "proxy_http_port", "proxy_https_port")
        return {name: int(getattr(self, name)) for name in names}

    # prosody ----------------------------------------------------------------------------

    def _start_ws_prosody(self) -> None:
        assert self._pki is not None
        folder = self._dir("prosody")
        (folder / "data").mkdir(exist_ok=True)
        (folder / "certs").mkdir(exist_ok=True)  # empty: only the ssl settings below count
        cert, key = self._pki.valid.cert, self._pki.valid.key
        ssl_conf = f'{{ certificate = "{cert}"; key = "{key}"; }}'
        self._prosody_cfg.write_text(f"""\
-- Written by devstack/websocket.py.
run_as_root = true
pidfile = "{folder / "prosody.pid"}"
data_path = "{folder / "data"}"
certificates = "{folder / "certs"}"
log = {{ {{ levels = {{ min = "info" }}, to = "console" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self._c2s_port} }}
s2s_ports = {{ }}
http_ports = {{ {self.xmpp_ws_port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ {self.xmpp_wss_port} }}
https_interfaces = {{ "127.0.0.1" }}
https_ssl = {ssl_conf}
http_default_host = "{base.XMPP_DOMAIN}"
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "http"; "websocket" }}
modules_disabled = {{ "s2s"; "offline" }}
-- As behind a proxy that terminates TLS: SASL is offered on plain ws:// too.
consider_websocket_secure = true
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
network_settings = {{ nagle = false }}
ssl = {ssl_conf}

VirtualHost "{base.XMPP_DOMAIN}"
    ssl = {ssl_conf}
""")
        self.set_xmpp_password(self.user, self.password)
        self._spawn("prosody", ["prosody", "--config", str(self._prosody_cfg), "-F"])

    def _check_ws_prosody(self) -> None:
        # A GET without an Upgrade gets prosody's "WebSocket endpoint" page.
        self._expect(http_get(self.xmpp_ws_port, "/xmpp-websocket"), 200)
        # prosody's https knows only its VirtualHost's name (SNI), not http.test.
        with socket.create_connection(("127.0.0.1", self.xmpp_wss_port), timeout=2) as raw:
            self.client_context().wrap_socket(raw, server_hostname=base.XMPP_DOMAIN).close()

    # mosquitto --------------------------------------------------------------------------

    def _start_ws_mosquitto(self) -> None:
        assert self._pki is not None
        folder = self._dir("mosquitto")
        self._mqtt_passwd.touch(mode=0o600)
        self._run(["mosquitto_passwd", "-b", str(self._mqtt_passwd), self.user, self.password])
        pair = self._pki.valid
        conf = folder / "mosquitto.conf"
        # A websockets listener ignores its bind address (it listens on every interface):
        # its port is a random free one.
        conf.write_text(f"""\
# Written by devstack/websocket.py.
user root
persistence false
allow_anonymous false
per_listener_settings false
password_file {self._mqtt_passwd}
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages true

# mosquitto does not start with websockets listeners alone.
listener {self._mqtt_plain_port} 127.0.0.1

listener {self.mqtt_ws_port}
protocol websockets

listener {self.mqtt_wss_port}
protocol websockets
certfile {pair.cert}
keyfile {pair.key}
""")
        self._spawn("mosquitto", ["mosquitto", "-c", str(conf)])

    def _check_ws_mosquitto(self) -> None:
        self._expect(
            mqtt_connack(self._mqtt_plain_port, self.user, self.password), b"\x20\x02\x00\x00"
        )
        for port in (self.mqtt_ws_port, self.mqtt_wss_port):
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass

    # nginx ------------------------------------------------------------------------------

    def _host_meta(self) -> str:
        links = "".join(
            f'<Link rel="urn:xmpp:alt-connections:websocket" '
            f'href="{scheme}://{base.XMPP_DOMAIN}:{port}/xmpp-websocket"/>'
            for scheme, port in (("ws", self.proxy_http_port), ("wss", self.proxy_https_port))
        )
        return f'<?xml version="1.0"?><XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">{links}</XRD>'

    def _start_proxy(self) -> None:
        assert self._pki is not None
        folder = self._dir("nginx")
        upgrade = (
            "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
            'proxy_set_header Connection "upgrade"; proxy_set_header Host $host;'
        )
        prosody = f"http://127.0.0.1:{self.xmpp_ws_port}/xmpp-websocket"
        mosquitto = f"http://127.0.0.1:{self.mqtt_ws_port}/mqtt"
        locations = f"""
        location = /xmpp-websocket {{ proxy_pass {prosody}; {upgrade} }}
        location = /mqtt {{ proxy_pass {mosquitto}; {upgrade} }}
        # The misconfiguration: no Upgrade/Connection passed on (they are hop-by-hop).
        location = /strip/xmpp-websocket {{ proxy_pass {prosody}; }}
        location = /strip/mqtt {{ proxy_pass {mosquitto}; }}
        location = /old/xmpp-websocket {{ return 301 /xmpp-websocket; }}
        location = /old/mqtt {{ return 301 /mqtt; }}
        location = /.well-known/host-meta {{
            default_type application/xrd+xml;
            return 200 '{self._host_meta()}';
        }}
"""
        conf = folder / "nginx.conf"
        conf.write_text(f"""\
# Written by devstack/websocket.py.
{nginx_preamble(folder, self.tmpdir / "nginx.log")}    default_type text/plain;
    ssl_certificate {self._pki.valid.cert};
    ssl_certificate_key {self._pki.valid.key};
    server {{
        listen 127.0.0.1:{self.proxy_http_port};
{locations}
    }}
    server {{
        listen 127.0.0.1:{self.proxy_https_port} ssl;
{locations}
    }}
}}
""")
        self._spawn(
            "nginx",
            ["nginx", "-e", str(self.tmpdir / "nginx.log"), "-c", str(conf), "-g", "daemon off;"],
        )

    def _check_proxy(self) -> None:
        self._expect(http_get(self.proxy_http_port, "/.well-known/host-meta"), 200)
        self._expect(
            http_get(self.proxy_https_port, "/.well-known/host-meta",
                     tls_context=self.client_context()),
            200,
        )


def main() -> None:
    """Runs Servers and WsServers until Ctrl-C or SIGTERM, printing both's ports (and the
    Servers' credentials) as one JSON line, as `python -m devstack.servers` does."""
    import contextlib
    import json
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Servers() as g, WsServers(g) as ws:
        info: dict[str, object] = {**g.ports(), **ws.ports()}
        info.update(resolver=g.resolver, ca_file=str(g.ca_file), user=g.user,
                    password=g.password, tmpdir=str(g.tmpdir))
        print(json.dumps(info), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()


if __name__ == "__main__":
    main()

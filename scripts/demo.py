"""Starts the ground of real servers and runs `loginprobe check` against each, printing what
an operator would see: good logins for every protocol, then the classic failures."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.peers.ground import Ground


def main() -> int:
    loginprobe = str(Path(sys.executable).with_name("loginprobe"))
    with Ground() as g:
        common = ["--resolver", g.resolver, "--ca-file", str(g.ca_file)]
        env = {**os.environ, "LOGINPROBE_PASSWORD": g.password, "WRONG_PW": "not-the-password"}
        cases = [
            ("XMPP STARTTLS via SRV", ["xmpp://alice@xmpp.test"]),
            ("XMPP direct TLS", ["xmpps://alice@xmpp.test"]),
            ("MQTT 5 over TLS", [f"mqtts://alice@mqtt.test:{g.mqtts_port}?version=5"]),
            ("HTTPS JSON login", [f"https://alice@http.test:{g.https_port}/api/login?auth=json"]),
            ("wrong password", ["xmpp://alice@xmpp.test", "--password-env", "WRONG_PW"]),
            ("expired certificate", [f"mqtts://alice@mqtt.test:{g.mqtts_expired_port}"]),
            ("name does not exist", ["xmpp://alice@nosuch.test"]),
            ("port speaks another protocol", [f"xmpp://alice@xmpp.test:{g.http_port}"]),
        ]
        for title, args in cases:
            argv = [loginprobe, "check", *args, *common]
            print(f"\n== {title}\n$ loginprobe check {shlex.join(args)} ...", flush=True)
            subprocess.run(argv, env=env, check=False, timeout=30)
        print(f"\nThe servers' configs and logs are in {g.tmpdir} until this exits.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

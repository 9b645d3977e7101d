"""The whole local stack on one machine: real XMPP/MQTT/HTTPS/DNS/Matrix servers, a
`loginprobe check` walkthrough against them, then a collector (TLS, bearer tokens), three
agents on two network paths whose checks the collector assigns, and a real Prometheus
scraping it with grafana/rules loaded; runs until Ctrl-C and stops everything by PID.
`--checks-only` stops after the walkthrough."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devstack.certs import PKI
from devstack.fleet import (
    LOOPBACK,
    ROOT,
    Agent,
    Collector,
    collector_config,
    free_port,
    new_token,
    wait_for,
)
from devstack.prometheus import prometheus, query
from devstack.servers import Servers
from devstack.synapse import Synapse

RULES = ROOT / "grafana" / "rules" / "loginprobe.rules.yml"
# Agents only read it from their environment; the demo never prints it.
PASSWORD_ENV = "LOGINPROBE_PASSWORD"
# Two agents share the wifi path so LoginFailureRateHigh (>= 2 agents agreeing) can fire
# there; the cellular one gives `loginprobe compare` a second network type.
AGENTS = {
    "eu-wifi-1": {"region": "eu-west", "carrier": "carrier-a", "network_type": "wifi"},
    "eu-wifi-2": {"region": "eu-west", "carrier": "carrier-a", "network_type": "wifi"},
    "eu-cell-1": {"region": "eu-west", "carrier": "carrier-b", "network_type": "cellular"},
}
INTERVAL = "10s"  # 30 attempts per agent in 5m: enough for the alert's 10, light on 2 cores


def walkthrough(g: Servers, hs: Synapse, loginprobe: str) -> None:
    """`loginprobe check` against each server: good logins, then the classic failures."""
    # The passwords in files, so that each command printed is the whole command, ready to
    # copy and run again while the servers are up, with no secret on the screen.
    right, wrong = g.tmpdir / "alice.password", g.tmpdir / "wrong.password"
    for path, text in ((right, g.password), (wrong, "not-the-password")):
        path.write_text(text + "\n", encoding="utf-8")
        path.chmod(0o600)
    common = ["--resolver", g.resolver, "--ca-file", str(g.ca_file)]
    cases = [
        ("XMPP STARTTLS via SRV", ["xmpp://alice@xmpp.test"]),
        ("XMPP direct TLS", ["xmpps://alice@xmpp.test"]),
        ("MQTT 5 over TLS", [f"mqtts://alice@mqtt.test:{g.mqtts_port}?version=5"]),
        ("HTTPS JSON login", [f"https://alice@http.test:{g.https_port}/api/login?auth=json"]),
        ("Matrix, homeserver found by .well-known",
         [f"matrix://alice@http.test:{hs.delegating_port}"]),
        ("Matrix account deactivated", [f"matrix://{hs.deactivated_user}@matrix.test:{hs.port}"]),
        ("wrong password", ["xmpp://alice@xmpp.test", "--password-file", str(wrong)]),
        ("expired certificate", [f"mqtts://alice@mqtt.test:{g.mqtts_expired_port}"]),
        ("name does not exist", ["xmpp://alice@nosuch.test"]),
        ("port speaks another protocol", [f"xmpp://alice@xmpp.test:{g.http_port}"]),
    ]
    for title, args in cases:
        if "--password-file" not in args:
            args = [*args, "--password-file", str(right)]
        argv = [loginprobe, "check", *args, *common]
        print(f"\n== {title}\n$ {shlex.join(argv)}", flush=True)
        subprocess.run(argv, check=False, timeout=30)


def connected(agent: Agent) -> bool:
    """The agent's /healthz says it holds its stream to the collector."""
    try:
        with urllib.request.urlopen(f"http://{agent.listen}/healthz", timeout=2) as resp:
            return bool(resp.read().startswith(b"ok: connected"))
    except OSError:
        return False


def toggle_password_on_enter(g: Servers, prom: str) -> None:
    """Until Ctrl-C: on a terminal, Enter changes alice's password on every server (the
    agents keep the old one, so their logins fail) and Enter again restores it."""
    if not sys.stdin.isatty():
        while True:
            signal.pause()
    original, broken = g.password, False
    print("Press Enter to break alice's password on every server, Enter again to restore it.",
          flush=True)
    while True:
        try:
            input()
        except EOFError:  # Ctrl-D: no more toggling, keep running
            while True:
                signal.pause()
        broken = not broken
        g.set_password("changed-" + secrets.token_hex(6) if broken else original)
        now = time.strftime("%H:%M:%S")
        if broken:
            print(f"{now} broken: LoginDown fires for each check (every agent fails) in "
                  "under a minute, LoginFailureRateHigh for eu-west/carrier-a/wifi (two agents "
                  f"agree) in about 2 minutes, at {prom}/alerts; the status page shows the "
                  "failures and their transcripts now", flush=True)
        else:
            print(f"{now} restored: LoginDown resolves within seconds, LoginFailureRateHigh "
                  "about 4 minutes later, when the failures leave its 5m window", flush=True)


def stack(g: Servers, loginprobe: str, metrics_listen: str) -> None:
    """Collector (its /metrics and status page on metrics_listen), agents and Prometheus
    until Ctrl-C (or SIGTERM)."""
    folder = g.tmpdir / "stack"  # removed with the servers' folder on exit
    os.environ[PASSWORD_ENV] = g.password  # inherited by the agents, nowhere written
    pki = PKI(folder / "pki", ca_name="loginprobe Demo CA")
    tokens = {name: new_token() for name in AGENTS}
    servers = {"password_ref": "servers", "ca_file": str(g.ca_file), "resolver": g.resolver,
              "interval": INTERVAL, "timeout": "5s", "selector": {"region": "eu-west"}}
    settings = collector_config(
        folder / "collector", pki=pki,
        agents=[{"id": name, "token_sha256": tokens[name][1], "labels": labels}
                for name, labels in AGENTS.items()],
        checks=[
            {"name": "xmpp-alice", "url": "xmpp://alice@xmpp.test", **servers},
            {"name": "mqtts-alice", "url": f"mqtts://alice@mqtt.test:{g.mqtts_port}", **servers},
            {"name": "https-alice",
             "url": f"https://alice@http.test:{g.https_port}/api/login?auth=json", **servers},
        ],
        metrics_listen=metrics_listen,
    )
    collector = Collector(folder / "collector", settings, pki)
    agents = [Agent(folder / name, collector, token=tokens[name][0], labels=labels,
                    passwords={"servers": {"env": PASSWORD_ENV}})
              for name, labels in AGENTS.items()]
    try:
        print("\n== The stack: collector, agents, Prometheus", flush=True)
        collector.start_healthy()
        for agent in agents:
            agent.start()
        for agent in agents:
            wait_for(f"{agent.folder.name} to connect", functools.partial(connected, agent), 30)
        with prometheus(folder / "prometheus", [str(settings["metrics_listen"])], "5s",
                        rule_files=(RULES,),
                        jobs={"loginprobe-agent": [a.listen for a in agents]}) as prom:
            pw_file = folder / "password"  # for the example commands: a path, not the secret
            pw_file.write_text(g.password + "\n", encoding="utf-8")
            pw_file.chmod(0o600)
            lp = shlex.quote(loginprobe)
            lines = [
                f"status      http://{settings['metrics_listen']}/status   (loopback only)",
                f"collector   {collector.address}  gRPC, TLS (CA {pki.ca_file}), bearer tokens",
                f"            {collector.metrics_url}",
                *(f"agent       http://{a.listen}/healthz   {a.folder.name}: "
                  + " ".join(f"{k}={v}" for k, v in AGENTS[a.folder.name].items())
                  for a in agents),
                f"prometheus  {prom}   (scrapes every 5s; rules {RULES.relative_to(ROOT)})",
                f"alerts      {prom}/alerts",
                f"graph       {prom}/graph?g0.expr="
                "sum%20by%20(check%2Cnetwork_type)%20(rate(loginprobe_attempts_total%5B1m%5D))",
                f"logs        {folder}/*/*.log (removed on exit)",
                "",
                "try:",
                f"  {lp} check mqtts://alice@mqtt.test:{g.mqtts_port} --password-file {pw_file}"
                f" --resolver {g.resolver} --ca-file {g.ca_file}",
                f"  {lp} compare --prometheus {prom} --range 5m --by network_type"
                "   # after a minute or two",
                "",
                f"Checks run every {INTERVAL} on every agent. Ctrl-C stops everything.",
            ]
            print("\n".join(lines), flush=True)
            # Proof that the whole path works: every agent's results, as Prometheus sees them.
            results = "sum by (check, agent) (loginprobe_attempts_total)"
            deadline = time.monotonic() + 60
            while len(query(prom, results)) < len(AGENTS) * 3:
                if time.monotonic() > deadline:
                    raise TimeoutError("no results in Prometheus after 60 s: see the logs")
                time.sleep(1)
            ok = query(prom, "sum(loginprobe_success)")[0][1]
            print(f"\nPrometheus has results of 3 checks from {len(AGENTS)} agents; "
                  f"{ok:.0f} of {len(AGENTS) * 3} latest logins succeeded.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                toggle_password_on_enter(g, prom)
            print("\nstopping: agents, collector, Prometheus, servers", flush=True)
    finally:
        stopped = []
        for proc in (*agents, collector):
            if proc.popen is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):  # stop() killed it then
                stopped.append(f"{proc.config.parent.name} (pid {proc.pid}) exit {proc.stop()}")
        if stopped:
            print("stopped: " + ", ".join(stopped), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks-only", action="store_true",
                        help="only the `loginprobe check` walkthrough, then stop")
    args = parser.parse_args()
    # SIGTERM takes Ctrl-C's path, so every finally below runs and stops what it started.
    # SIGINT explicitly too: started with `&` from a script, it is inherited as ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    loginprobe = str(Path(sys.executable).with_name("loginprobe"))
    try:
        # The status page's address first: it is where an operator looks.
        metrics_listen = f"{LOOPBACK}:{free_port()}"
        if not args.checks_only:
            print(f"status page http://{metrics_listen}/status   (up once the servers and the "
                  "walkthrough below are done)", flush=True)
        with Servers() as g, Synapse(g) as hs:
            walkthrough(g, hs, loginprobe)
            if args.checks_only:
                print(f"\nThe servers' configs and logs are in {g.tmpdir} until this exits.")
                return 0
            stack(g, loginprobe, metrics_listen)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

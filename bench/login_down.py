"""How fast LoginDown fires and resolves on a real break, over several breaks: two agents
check a real mosquitto login every 15 s through a real collector, a real Prometheus scrapes
it every second with grafana/rules/loginprobe.rules.yml; each cycle changes the account's
password on the broker, waits for LoginDown to fire, restores it, waits for it to resolve.

    python3 -m bench.login_down [--cycles 5] [--interval 15s]

Prints each cycle's break -> firing and restore -> resolved, then their median and range.
Where the break falls in the check cycle decides most of the spread.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine
from devstack.fleet import ROOT, Agent, Collector, collector_config, new_token, wait_for
from devstack.prometheus import alerts, prometheus, query
from devstack.servers import Servers

RULES = ROOT / "grafana" / "rules" / "loginprobe.rules.yml"
CHECK = "mqtt-down"
USER = "probe-down"
LABELS = {"region": "eu-west", "carrier": "carrier-a", "network_type": "wifi"}


def firing(url: str) -> dict[str, Any] | None:
    for a in alerts(url):
        if a["labels"].get("alertname") == "LoginDown" and a["labels"].get("check") == CHECK \
                and a["state"] == "firing":
            return a
    return None


def cycles(servers: Servers, folder: Path, n: int, interval: str) -> list[tuple[float, float]]:
    password = "Down-" + secrets.token_hex(8)
    servers.set_mqtt_password(USER, password)
    (folder / "pw").write_text(password + "\n", encoding="utf-8")
    tokens = {f"down-{i}": new_token() for i in (1, 2)}
    settings = collector_config(
        folder / "c", pki=None,
        agents=[{"id": a, "token_sha256": d, "labels": LABELS} for a, (_, d) in tokens.items()],
        checks=[{"name": CHECK, "url": f"mqtt://{USER}@127.0.0.1:{servers.mqtt_port}",
                 "interval": interval, "timeout": "5s", "password_ref": "pw"}])
    collector = Collector(folder / "c", settings).start_healthy()
    agents = [Agent(folder / a, collector, token=t, labels=LABELS,
                    passwords={"pw": {"file": str(folder / "pw")}})
              for a, (t, _) in tokens.items()]
    out = []
    try:
        for agent in agents:
            agent.start()
        with prometheus(folder / "prom", [str(settings["metrics_listen"])], "1s",
                        rule_files=(RULES,)) as url:
            ok = f'loginprobe_attempts_total{{check="{CHECK}",result="success"}}'
            wait_for("both agents' successes", lambda: len(query(url, ok)) == 2, 60)
            for i in range(n):
                time.sleep(30 + random.uniform(0, 15))  # a break anywhere in the cycle
                broken = time.monotonic()
                servers.set_mqtt_password(USER, "changed-" + secrets.token_hex(8))
                wait_for("LoginDown firing", lambda: firing(url) is not None, 180)
                fired = time.monotonic() - broken
                servers.set_mqtt_password(USER, password)
                restored = time.monotonic()
                wait_for("LoginDown resolved", lambda: firing(url) is None, 180)
                resolved = time.monotonic() - restored
                print(f"cycle {i + 1}: break -> firing {fired:5.1f} s, "
                      f"restore -> resolved {resolved:5.1f} s", flush=True)
                out.append((fired, resolved))
    finally:
        servers.set_mqtt_password(USER, password)
        for proc in (*agents, collector):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--interval", default="15s", help="the check interval (default 15s)")
    args = parser.parse_args()
    print(machine())
    with Servers() as servers, tempfile.TemporaryDirectory() as tmp:
        got = cycles(servers, Path(tmp), args.cycles, args.interval)
    fired = [f for f, _ in got]
    resolved = [r for _, r in got]
    print(f"LoginDown at {args.interval} checks, 1 s scrapes, {len(got)} breaks: firing median "
          f"{statistics.median(fired):.1f} s (range {min(fired):.1f}-{max(fired):.1f}), "
          f"resolved median {statistics.median(resolved):.1f} s "
          f"(range {min(resolved):.1f}-{max(resolved):.1f})")


if __name__ == "__main__":
    main()

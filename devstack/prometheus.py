"""A real Prometheus (the Debian package) scraping given /metrics addresses, for tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from devstack.fleet import free_port

START_TIMEOUT = 20.0


class PrometheusError(RuntimeError):
    """Prometheus is missing or did not come up."""


@contextlib.contextmanager
def prometheus(
    folder: Path,
    targets: list[str],
    interval: str = "1s",
    *,
    rule_files: tuple[Path, ...] = (),
    jobs: dict[str, list[str]] | None = None,
    storage: Path | None = None,
) -> Iterator[str]:
    """Yields the base URL of a Prometheus on 127.0.0.1 scraping targets (HOST:PORT) every
    interval as job "loginprobe", plus any further jobs {name: targets}, with rule_files
    loaded; stopped, with its data in folder (or in storage, a TSDB made beforehand), on exit."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("prometheus not found: install the Debian package prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    scrapes = {"loginprobe": targets, **(jobs or {})}
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        # Rule groups keep their own `interval:`; the global one only applies to groups
        # without it.
        "rule_files": [str(p.resolve()) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]}
                           for job, t in scrapes.items() if t],
    }))
    for _ in range(3):  # another process may take the port between picking and binding
        url = f"http://127.0.0.1:{free_port()}"
        log = folder / "prometheus.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}",
                 f"--storage.tsdb.path={storage or folder / 'tsdb'}",
                 f"--web.listen-address={url.removeprefix('http://')}"],
                stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the parent, which stops it by PID
            )
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None and time.monotonic() < deadline:
            break
        proc.kill()
        proc.wait()
        if "address already in use" not in log.read_text():
            raise PrometheusError(f"prometheus did not start:\n{log.read_text()[-3000:]}")
    else:
        raise PrometheusError("prometheus found no free port in three tries")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query now: (labels, value) per series."""
    body = urllib.parse.urlencode({"query": expr}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=body, timeout=10) as resp:
        answer: dict[str, Any] = json.load(resp)
    return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]


def alerts(url: str) -> list[dict[str, Any]]:
    """Every pending or firing alert (/api/v1/alerts): labels, annotations, state, activeAt."""
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=10) as resp:
        answer: dict[str, Any] = json.load(resp)
    found: list[dict[str, Any]] = answer["data"]["alerts"]
    return found


def parse_render(render: Callable[[bool], bytes]) -> list[Metric]:
    """A hand-written exposition (ResultMetrics.render) parsed as a scraper reads it."""
    return list(text_string_to_metric_families(render(False).decode()))

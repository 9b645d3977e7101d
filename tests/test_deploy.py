"""The deployment paths, each run here: the manifests rendered with kustomize and validated
against Kubernetes' schemas, then started with `podman kube play` from the image that
deploy/container/build makes (a collector and two region agents against a real MQTT broker
on the host network, results seen in the collector's /metrics), and the systemd units
checked by systemd-analyze."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import loginprobe
from devstack.certs import PKI
from devstack.fleet import free_port, new_token
from devstack.servers import Servers

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
IMAGE = f"localhost/loginprobe:{loginprobe.__version__}"
K8S_VERSION = "1.37.0"
PODMAN_KINDS = {"Deployment", "ConfigMap", "PersistentVolumeClaim"}


def kustomize(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", "--load-restrictor=LoadRestrictionsNone",
                          str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("folder", ["collector", "overlays/eu-west-wifi",
                                    "overlays/eu-west-cellular"])
def test_manifests_render_and_validate(folder: str, tmp_path: Path) -> None:
    docs = kustomize(KUBE / folder)
    validate(docs, tmp_path)
    kinds = {d["kind"] for d in docs}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
            assert not sc["allowPrivilegeEscalation"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    if folder == "collector":
        assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    else:
        assert "PersistentVolumeClaim" in kinds  # the spool outlives the pod


def test_replicas_share_the_redis_the_manifests_ship(tmp_path: Path) -> None:
    collector, redis = kustomize(KUBE / "collector"), kustomize(KUBE / "redis")
    validate(redis, tmp_path)
    deployment = next(d for d in collector if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    config = yaml.safe_load(next(d for d in collector if d["kind"] == "ConfigMap")
                            ["data"]["collector.yaml"])
    service = next(d for d in redis if d["kind"] == "Service")["metadata"]["name"]
    assert config["state"] == f"redis://{service}:6379/0"
    pod = next(d for d in redis if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]


def validate(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """kubernetes-validate against the API schemas, offline."""
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    done = subprocess.run(["kubernetes-validate", "-k", K8S_VERSION, "--strict", str(rendered)],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": str(Path(shutil.which("python3") or "").parent) + ":"
                               + str(ROOT / ".venv" / "bin") + ":/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def image() -> str:
    done = subprocess.run([str(ROOT / "deploy" / "container" / "build"), "--local-base"],
                          capture_output=True, text=True, timeout=900,
                          env={"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
                               "TAG": IMAGE})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(IMAGE)
    return IMAGE


def _write_site(folder: Path, servers: Servers, pki: PKI, grpc_port: int,
                metrics_port: int, agent_ports: dict[str, int]) -> dict[str, str]:
    """A test site: the shipped collector and region overlays, plus what an operator adds
    (Secrets, a CA ConfigMap, the collector's agents and checks), on the host network."""
    tokens = {region: new_token() for region in agent_ports}
    agents = [{"id": f"agent-{region}", "token_sha256": digest,
               "labels": {"region": "eu-west"}} for region, (_, digest) in tokens.items()]
    (folder / "collector.yaml").write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{grpc_port}",
        "tls": {"cert": "/etc/loginprobe/tls/tls.crt", "key": "/etc/loginprobe/tls/tls.key"},
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "agents_file": "/etc/loginprobe/agents/agents.yaml",
        "checks": [{"name": "broker-login", "interval": "2s", "timeout": "2s",
                    "url": f"mqtt://{servers.user}@127.0.0.1:{servers.mqtt_port}",
                    "password_ref": "chat"}],
    }))
    (folder / "agents.yaml").write_text(yaml.safe_dump({"agents": agents}))
    (folder / "ca.crt").write_text(pki.ca_file.read_text())
    (folder / "tls.crt").write_text(pki.server.cert.read_text())
    (folder / "tls.key").write_text(pki.server.key.read_text())
    env_patches = []
    for region, port in agent_ports.items():
        (folder / f"{region}.env").write_text(
            f"token={tokens[region][0]}\nchat-password={servers.password}\n")
        env_patches.append({
            "target": {"kind": "Deployment", "name": f"loginprobe-agent-eu-west-{region}"},
            "patch": json.dumps([
                {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": v}
                for v in ({"name": "LOGINPROBE_COLLECTOR", "value": f"127.0.0.1:{grpc_port}"},
                          {"name": "LOGINPROBE_COLLECTOR_NAME", "value": "localhost"},
                          {"name": "LOGINPROBE_LISTEN", "value": f"127.0.0.1:{port}"})]),
        })
    # On the host network a container's ports are the host's: podman refuses port mappings
    # there, and runs probes only with systemd timers, which this machine has not.
    host_network = {"target": {"kind": "Deployment"}, "patch": json.dumps([
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "remove", "path": "/spec/template/spec/containers/0/ports"},
        {"op": "remove", "path": "/spec/template/spec/containers/0/livenessProbe"}])}
    # One replica with a local state file: on the host network a second would want the
    # same ports (and a Redis, which the replica tests run for real).
    no_readiness = {"target": {"kind": "Deployment", "name": "loginprobe-collector"},
                    "patch": json.dumps([{"op": "remove", "path":
                                          "/spec/template/spec/containers/0/readinessProbe"},
                                         {"op": "replace", "path": "/spec/replicas",
                                          "value": 1}])}
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUBE / "collector", folder),
                      *(os.path.relpath(KUBE / "overlays" / f"eu-west-{r}", folder)
                        for r in agent_ports)],
        "images": [{"name": "localhost/loginprobe", "newName": IMAGE.rsplit(":", 1)[0],
                    "newTag": IMAGE.rsplit(":", 1)[1]}],
        "configMapGenerator": [
            {"name": "loginprobe-collector", "behavior": "replace", "files": ["collector.yaml"]},
            {"name": "loginprobe-collector-ca", "files": ["ca.crt"]},
        ],
        "secretGenerator": [
            {"name": "loginprobe-agents", "files": ["agents.yaml"]},
            {"name": "loginprobe-collector-tls", "files": ["tls.crt", "tls.key"]},
            *({"name": f"loginprobe-agent-eu-west-{r}", "envs": [f"{r}.env"]}
              for r in agent_ports),
        ],
        "generatorOptions": {"disableNameSuffixHash": True},
        "patches": [host_network, no_readiness, *env_patches],
    }))
    return {region: token for region, (token, _) in tokens.items()}


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    played = tmp_path / "play.yaml"
    if played.exists():
        _podman("kube", "down", str(played), check=False)
        # podman 4.3 keeps the volumes it made for ConfigMaps, Secrets and claims.
        for doc in yaml.safe_load_all(played.read_text()):
            if doc:
                _podman("volume", "rm", "-f", doc["metadata"]["name"], check=False)
        for name in ("loginprobe-agents", "loginprobe-collector-tls"):
            _podman("volume", "rm", "-f", name, check=False)
    for secret in (tmp_path / "secrets").glob("*.json"):
        _podman("secret", "rm", secret.stem, check=False)


def test_kube_play_runs_a_collector_and_two_region_agents(
    site: Path, image: str, servers: Servers,
) -> None:
    pki = PKI(site / "pki")
    grpc_port, metrics_port = free_port(), free_port()
    agent_ports = {"wifi": free_port(), "cellular": free_port()}
    tokens = _write_site(site, servers, pki, grpc_port, metrics_port, agent_ports)
    rendered = kustomize(site)
    # podman 4.3 (Debian 12) reads the Secrets of a played file from its own secret store
    # and mishandles the Secret kind in the file; created here first, in the two forms its
    # readers take: for env, a JSON map of key to base64 value; for a volume, a Secret whose
    # data it writes to files as given, so the values go in decoded.
    (site / "secrets").mkdir()
    as_volume = {v["secret"]["secretName"] for d in rendered if d["kind"] == "Deployment"
                 for v in d["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
    for secret in (d for d in rendered if d["kind"] == "Secret"):
        name = secret["metadata"]["name"]
        path = site / "secrets" / f"{name}.json"
        if name in as_volume:
            data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
            path.write_text(json.dumps({"apiVersion": "v1", "kind": "Secret",
                                        "metadata": {"name": name}, "data": data}))
        else:
            path.write_text(json.dumps(secret["data"]))
        _podman("secret", "create", name, str(path))
    docs = [d for d in rendered if d["kind"] in PODMAN_KINDS]
    played = site / "play.yaml"
    played.write_text(yaml.safe_dump_all(docs))
    _podman("kube", "play", str(played))

    def successes() -> dict[str, dict[str, str]]:
        """agent -> the labels of its successful broker logins, as the collector exports."""
        try:
            text = _metrics(metrics_port)
        except OSError:
            return {}
        return {s.labels["agent"]: s.labels for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "loginprobe_attempts_total"
                and s.labels["check"] == "broker-login" and s.labels["result"] == "success"
                and s.value > 0}

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(successes()) < len(agent_ports):
        time.sleep(1)
    logs = "".join(_podman("logs", c, check=False).stderr
                   for c in _podman("ps", "-a", "--format", "{{.Names}}").stdout.split())
    found = successes()
    carriers = {"wifi": "carrier-a", "cellular": "carrier-b"}
    for region in agent_ports:
        labels = found.get(f"agent-{region}")
        assert labels, f"no success of agent-{region} in /metrics: {found}\n{logs[-3000:]}"
        # The labels come from the overlay's environment, through the one shared config.
        assert (labels["region"], labels["carrier"], labels["network_type"]) == (
            "eu-west", carriers[region], region)
    for token in tokens.values():  # no credential in any log
        assert token not in logs and servers.password not in logs

    _podman("kube", "down", str(played))
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    left = _podman("ps", "-a", "--format", "{{.Names}}").stdout + _podman(
        "pod", "ps", "--format", "{{.Name}}").stdout
    assert not any(name in left for name in names), left


@pytest.mark.parametrize("unit", ["loginprobe-agent.service", "loginprobe-collector.service"])
def test_systemd_units_verify_and_stay_hardened(unit: str, tmp_path: Path) -> None:
    # The units name /usr/local/bin/loginprobe, where `pip install loginprobe` puts it;
    # verify wants the binary to exist, so the copy checked names this checkout's.
    text = (ROOT / "deploy" / "systemd" / unit).read_text()
    binary = shutil.which("loginprobe") or str(ROOT / ".venv" / "bin" / "loginprobe")
    (tmp_path / unit).write_text(text.replace("/usr/local/bin/loginprobe", binary))
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                               str(tmp_path / unit)], capture_output=True, text=True,
                              timeout=60)
    score = float(security.stdout.split("Overall exposure level for")[1].split(":")[1].split()[0])
    assert score <= 2.0, security.stdout[-2000:]
    assert "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text
    capabilities = "CAP_NET_RAW" if unit.startswith("loginprobe-agent") else ""
    assert f"CapabilityBoundingSet={capabilities}\n" in text


def test_the_image_says_what_is_missing_or_read_only(image: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", "run", "--rm", "--read-only", "--network=host",
                               *args], capture_output=True, text=True, timeout=120)

    missing = run(image)  # the default command, no config mounted
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().endswith("loginprobe agent: /etc/loginprobe/config/agent.yaml: "
                                           "cannot read the config file (No such file or "
                                           "directory)")
    (tmp_path / "config").mkdir()
    (tmp_path / "spool").mkdir()
    (tmp_path / "config" / "agent.yaml").write_text(
        f"collector: {{address: '127.0.0.1:{free_port()}', plaintext: true}}\n"
        "spool: {path: /var/lib/loginprobe/agent-spool.db}\nlisten: null\n")
    read_only = run("-v", f"{tmp_path / 'config'}:/etc/loginprobe/config:ro",
                    "-v", f"{tmp_path / 'spool'}:/var/lib/loginprobe:ro", image)
    assert read_only.returncode == 1, read_only.stderr
    assert "loginprobe agent: cannot open the spool /var/lib/loginprobe/agent-spool.db" in \
        read_only.stderr and "a volume mounted read-write" in read_only.stderr
    assert "Traceback" not in missing.stderr + read_only.stderr

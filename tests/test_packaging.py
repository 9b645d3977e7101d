"""The wheel as a user installs it: one import package and nothing else, the version from
one place, and `loginprobe check` working from a fresh virtualenv outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import loginprobe
from devstack.servers import Servers

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_installed_elsewhere_logs_in(tmp_path: Path, servers: Servers) -> None:
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(ROOT)], check=True, timeout=300)
    (wheel,) = dist.glob("loginprobe-*.whl")
    assert wheel.name == f"loginprobe-{loginprobe.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert tops == {"loginprobe", f"loginprobe-{loginprobe.__version__}.dist-info"}, tops

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   timeout=600, cwd=tmp_path)
    cli = str(venv / "bin" / "loginprobe")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    version = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path, env=env)
    assert version.stdout == f"loginprobe {loginprobe.__version__}\n"
    done = subprocess.run(
        [cli, "check", f"mqtts://{servers.user}@mqtt.test:{servers.mqtts_port}", "--json",
         "--resolver", servers.resolver, "--ca-file", str(servers.ca_file)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**env, "LOGINPROBE_PASSWORD": servers.password})
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"reason": "ok"' in done.stdout
    # It ran the installed copy, not the checkout.
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import loginprobe; print(loginprobe.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert where.stdout.startswith(str(venv))


def test_the_version_lives_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]

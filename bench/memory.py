"""Peak memory: of one `loginprobe check` process per kind of target, and of 1,000
attempts started at once in one process.

    .venv/bin/python -m bench.memory
    .venv/bin/python -m bench.memory --concurrent 1000 --runs 3

Peak RSS is the kernel's ru_maxrss of the child, read with wait4 when it exits (what
/usr/bin/time -v prints as "Maximum resident set size"). The servers run on the other core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
from typing import Any

from bench.common import (
    PROBE_CPU,
    Acceptor,
    Servers,
    load_note,
    machine,
    median,
    pinned,
    python,
    raise_nofile,
)
from bench.probe_throughput import run_loop, uvloop_installed

MIB = 1024  # ru_maxrss is in KiB on Linux


def peak_rss_kib(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs argv pinned to the probing core; (its peak RSS in KiB, its stdout)."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        preexec_fn=pinned(PROBE_CPU),
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    # wait4 rather than Popen.wait: it returns this child's own rusage.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{argv[:4]} exited {proc.returncode}:\n{out}")
    return usage.ru_maxrss, out


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """count attempts at once in this process: RSS before (imports done) and at the peak."""
    raise_nofile(spec["count"] + 512)
    from loginprobe.probes.attempt import ProbeOptions
    from loginprobe.probes.run import run_check
    from loginprobe.target import parse_target

    target = parse_target(spec["url"])
    options = ProbeOptions(password=spec["password"], ca_file=spec["ca_file"], timeout=60.0)

    async def main() -> dict[str, Any]:
        # One attempt first, so lazily built things (SSL context, caches) are in the baseline.
        await run_check(target, options)
        spec["baseline"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results = await asyncio.gather(*(run_check(target, options) for _ in range(spec["count"])))
        return {"failures": [f"{r.reason}: {r.message}" for r in results if not r.success]}

    failures = run_loop(main, spec["loop"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"baseline": spec["baseline"], "peak": peak, "failures": failures["failures"][:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    print(f"# memory: {machine()}; median of {args.runs} runs; {load_note()}")
    with Servers() as servers, Acceptor() as acceptor:
        g = servers.info
        urls = {
            "tcp": f"tcp://127.0.0.1:{acceptor.port}",
            "tls": f"tls://127.0.0.1:{g['mqtts_port']}",
            "mqtts": f"mqtts://{g['user']}@127.0.0.1:{g['mqtts_port']}",
            "xmpp": f"xmpp://{g['user']}@xmpp.test:{g['xmpp_port']}?host=127.0.0.1",
        }
        env = dict(os.environ, BENCH_PASSWORD=g["password"])
        loginprobe = [python(), "-m", "loginprobe.cli"]
        for name, url in urls.items():
            argv = [*loginprobe, "check", url, "--ca-file", g["ca_file"], "--json"]
            if name in ("mqtts", "xmpp"):
                argv += ["--password-env", "BENCH_PASSWORD"]
            peaks = []
            for _ in range(args.runs):
                rss, out = peak_rss_kib(argv, env)
                if not json.loads(out)["success"]:
                    sys.exit(f"{url}: the check failed, figure discarded:\n{out}")
                peaks.append(rss)
            print(
                f"one `loginprobe check {name}://...` process: peak RSS "
                f"{median(peaks) / MIB:6.1f} MiB  (runs: "
                f"{', '.join(f'{p / MIB:.1f}' for p in peaks)})",
                flush=True,
            )
        # tls and mqtts against mosquitto: nginx here allows only 256 connections.
        loops = ["asyncio", "uvloop"] if uvloop_installed() else ["asyncio"]
        for name, loop in [(n, lp) for n in ("tcp", "tls", "mqtts") for lp in loops]:
            spec = {
                "loop": loop,
                "url": urls[name],
                "count": args.concurrent,
                "password": g["password"],
                "ca_file": g["ca_file"],
            }
            baselines, peaks = [], []
            for _ in range(args.runs):
                rss, out = peak_rss_kib(
                    [python(), "-m", "bench.memory", "--worker", json.dumps(spec)]
                )
                result = json.loads(out.strip().splitlines()[-1])
                if result["failures"]:
                    sys.exit(f"{name}: attempts failed, figure discarded: {result['failures']}")
                baselines.append(result["baseline"])
                peaks.append(rss)
            grown = median([p - b for p, b in zip(peaks, baselines, strict=True)])
            print(
                f"{args.concurrent} {name}:// attempts at once, {loop}: peak RSS "
                f"{median(peaks) / MIB:6.1f} MiB, {median(baselines) / MIB:.1f} MiB before "
                f"them: {grown / args.concurrent:.1f} KiB per attempt in flight  (runs: "
                f"{', '.join(f'{p / MIB:.1f}' for p in peaks)})",
                flush=True,
            )
    print(f"# done; {load_note()}")


if __name__ == "__main__":
    main()

"""`loginprobe agent --config FILE`: wires the spool, scheduler, uplink and health endpoint
together, and takes them down in order on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from functools import partial

from prometheus_client import CollectorRegistry

from loginprobe.agent.config import AgentConfig, load_config
from loginprobe.agent.health import AgentMetrics, serve
from loginprobe.agent.network_paths import ProbePath
from loginprobe.agent.scheduler import LOCAL, CheckSpec, Scheduler
from loginprobe.agent.spool import Spool, SpoolError
from loginprobe.agent.uplink import FatalError, Uplink, encode

log = logging.getLogger(__name__)
DRAIN_SECONDS = 5.0


def run(config_path: str) -> int:
    """Exit status: 0 after a graceful stop, 1 on a fatal error (one sentence on stderr);
    an invalid config raises ConfigError before anything starts."""
    cfg = load_config(config_path)
    logging.getLogger("loginprobe.agent").setLevel(logging.INFO)
    return asyncio.run(_agent(cfg))


def _fatal(message: str) -> int:
    print(f"loginprobe agent: {message}", file=sys.stderr, flush=True)
    return 1


async def _agent(cfg: AgentConfig) -> int:
    if cfg.collector.plaintext:
        log.warning(
            "PLAINTEXT: results and the agent's token go to %s unencrypted; this is only "
            "acceptable on loopback, for tests", ", ".join(cfg.collector.addresses),
        )
    spool = Spool(cfg.spool.path, cfg.spool.max_bytes, cfg.spool.max_age)
    try:
        await spool.open()
    except SpoolError as exc:
        return _fatal(str(exc))
    paths = ProbePath.from_config(cfg)
    for p in paths:
        log.info("path %s: interface %s, source address %s, resolver %s, network_type %s",
                 p.name, p.interface or "any", p.source_address or "any",
                 "{}:{}".format(*p.resolver) if p.resolver else "the check's or the system's",
                 p.network_type or "detected")
    scheduler = Scheduler(
        sink=lambda report: spool.append(partial(encode, report)),
        paths=paths, concurrency=cfg.concurrency,
    )
    uplink = Uplink(cfg, spool, scheduler)
    if cfg.listen:
        registry = CollectorRegistry()
        registry.register(AgentMetrics(spool, scheduler, uplink))
        try:
            serve(cfg.listen, registry, uplink)
        except OSError as exc:
            await spool.close()
            return _fatal(f"cannot serve /metrics on {cfg.listen}: {exc.strerror}")
    scheduler.replace(LOCAL, [CheckSpec.from_config(c) for c in cfg.checks])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    link = asyncio.create_task(uplink.run())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([link, stopped], return_when=asyncio.FIRST_COMPLETED)

    status = 0
    if link.done():
        error = link.exception()
        why = str(error) if isinstance(error, FatalError) else f"the uplink failed: {error!r}"
        status = _fatal(why)
    log.info("stopping: no new probes; %d in flight finish first", scheduler.in_flight)
    await scheduler.stop()
    if status == 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await uplink.drain()
    for task in (link, stopped):
        task.cancel()
    await asyncio.gather(link, stopped, return_exceptions=True)
    # The /metrics thread is a daemon and ends with the process; shutdown() would only add
    # up to half a second of its polling to every stop.
    await spool.close()
    log.info(
        "stopped: %d results produced in this run; %d wait in the spool (next seq %d)",
        spool.produced_total, spool.depth, spool.next_seq,
    )
    return status

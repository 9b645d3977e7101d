"""The `loginprobe` command: dispatch to check (and, as they land, agent, collector, compare)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from loginprobe import __version__
from loginprobe.address import check_interface, check_source_address, parse_resolver
from loginprobe.config import ConfigError, check_ca_file
from loginprobe.target import Target, TargetError, parse_target

if TYPE_CHECKING:
    from loginprobe.probes.attempt import ProbeOptions

DEFAULT_PASSWORD_ENV = "LOGINPROBE_PASSWORD"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument or config: printed on stderr, exit status 2, nothing probed."""


def _resolver(text: str | None) -> tuple[str, int] | None:
    try:
        return parse_resolver(text) if text else None
    except ValueError as exc:
        raise UsageError(f"--resolver {exc}") from None


def read_password(target: Target, env_name: str | None, file_path: str | None) -> str | None:
    """The password from a file or an environment variable; never from the URL or argv."""
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(
                f"--password-file {file_path}: cannot read it ({exc.strerror})"
            ) from None
    name = env_name or DEFAULT_PASSWORD_ENV
    password = os.environ.get(name)
    if password == "" and target.needs_password:
        raise UsageError(f"the environment variable {name} is empty: set it to the password")
    if password is None and target.user and target.needs_password:
        raise UsageError(
            f"no password for {target.user!r}: set the environment variable {name} "
            "(or choose another with --password-env NAME), or pass --password-file PATH"
        )
    return password


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be more than 0 and at most 3600 seconds, e.g. 10 or 0.5")
    return value


def _add_check_options(p: argparse.ArgumentParser) -> None:
    """The options check and session share."""
    p.add_argument("url", help="target URL, e.g. xmpp://alice@example.com")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument(
        "--password-env",
        metavar="NAME",
        help=f"read the password from $NAME (default {DEFAULT_PASSWORD_ENV})",
    )
    pw.add_argument("--password-file", metavar="PATH", help="read the password from this file")
    p.add_argument(
        "--ca-file", metavar="PEM", help="trust this CA bundle instead of the system's"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not fail on certificate problems (still recorded)",
    )
    p.add_argument("--resolver", metavar="IP[:PORT]", help="send DNS queries to this server")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="deadline for the whole attempt (default 10)",
    )
    p.add_argument("--interface", metavar="IFACE", help="bind the connection to this interface")
    p.add_argument(
        "--source", metavar="ADDR", help="bind the connection to this source address"
    )
    p.add_argument(
        "--ping", action="store_true", help="add an ICMP ping phase (needs CAP_NET_RAW)"
    )
    p.add_argument(
        "--no-follow-up", dest="follow_up", action="store_false",
        help="after a failure that suggests the wrong protocol, TLS mode or port, do not make "
        "the short follow-up connections that find out what the port speaks",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="add the protocol transcript (credentials redacted)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loginprobe",
        description="Timed, phase-by-phase login probes for instant-messaging services.",
    )
    parser.add_argument("--version", action="version", version=f"loginprobe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check",
        help="one login attempt, timed phase by phase, with a diagnosis",
        description="One login attempt against URL: dns, tcp, tls and login, each timed; "
        "exit 0 when the login worked, 1 when it failed, 2 on a usage error.",
    )
    _add_check_options(check)
    session = sub.add_parser(
        "session",
        help="log in and hold the session with keepalives; reconnect after drops",
        description="Log in to URL and hold the session with the protocol's keepalive; on a "
        "drop, reconnect with exponential backoff and full jitter. Exit 0 when the session "
        "ended as planned with no drop, 1 on a drop or a failed first login, 2 on a usage error.",
    )
    _add_check_options(session)
    session.add_argument(
        "--hold",
        metavar="DURATION",
        help="how long to hold, e.g. 90s, 10m, 1h (default: until interrupted)",
    )
    session.add_argument(
        "--keepalive", metavar="SECONDS", default="30", help="keepalive interval (default 30)"
    )
    session.add_argument(
        "--no-resume", action="store_true",
        help="XMPP: do not use stream management (XEP-0198) to resume after a drop",
    )
    for name, job in (
        ("agent", "run the agent: schedule checks, stream results to the collector"),
        ("collector", "run the collector: receive results over gRPC, export metrics and traces"),
    ):
        daemon = sub.add_parser(name, help=job, description=job)
        daemon.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    from loginprobe.compare.cli import add_parser as add_compare  # its options live beside its code

    add_compare(sub)
    return parser


def run_check_command(args: argparse.Namespace) -> int:
    from loginprobe.probes.run import run_check
    from loginprobe.render import waterfall

    target, options = _target_and_options(args)
    result = asyncio.run(run_check(target, options))
    if args.json:
        print(json.dumps(result.to_dict(transcript=args.verbose)))
    else:
        print(waterfall(result, transcript=args.verbose))
    return EXIT_OK if result.success else EXIT_FAILED


def _duration(flag: str, text: str) -> float:
    """A duration like 30, 30s, 10m, 1h: a positive number of seconds, or a usage error."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    number, scale = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1.0)
    try:
        value = float(number) * scale
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not a duration (e.g. 30s, 10m, 1h)") from None
    if not 0 < value < float("inf"):
        raise UsageError(f"{flag} {text!r}: must be more than zero")
    return value


def run_session_command(args: argparse.Namespace) -> int:
    from loginprobe.agent.sessions import MAX_KEEPALIVE, run_session
    from loginprobe.protocols import BY_NAME, HOLDS_ONLY

    target, options = _target_and_options(args)
    hold = _duration("--hold", args.hold) if args.hold is not None else None
    keepalive = _duration("--keepalive", args.keepalive)
    if keepalive > MAX_KEEPALIVE:
        raise UsageError(
            f"--keepalive {args.keepalive!r}: above {MAX_KEEPALIVE:g}s, the longest keepalive "
            "servers accept (MQTT's 16-bit keepalive field; XMPP servers time idle streams out "
            "sooner)"
        )
    if not BY_NAME[target.protocol].holds:
        raise UsageError(f"{args.url}: sessions are held only for {HOLDS_ONLY}")
    if args.no_resume:
        options = dataclasses.replace(options, stream_management=False)
    return run_session(target, options, hold, keepalive, as_json=args.json)


def _target_and_options(args: argparse.Namespace) -> tuple[Target, ProbeOptions]:
    from loginprobe.probes.attempt import ProbeOptions

    try:
        target = parse_target(args.url)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    for flag, value, check in (("--ca-file", args.ca_file, check_ca_file),
                               ("--interface", args.interface, check_interface),
                               ("--source", args.source, check_source_address)):
        try:
            if value:
                check(value)
        except ValueError as exc:
            raise UsageError(f"{flag} {exc}") from None
    options = ProbeOptions(
        password=read_password(target, args.password_env, args.password_file),
        ca_file=args.ca_file,
        insecure=args.insecure,
        resolver=_resolver(args.resolver),
        timeout=args.timeout,
        interface=args.interface,
        source_address=args.source,
        ping=args.ping,
        follow_up=args.follow_up,
    )
    return target, options


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return run_check_command(args)
        if args.command == "session":
            return run_session_command(args)
        if args.command == "agent":
            from loginprobe.agent.main import run as run_agent

            return run_agent(args.config)
        if args.command == "collector":
            from loginprobe.collector.main import run as run_collector

            return run_collector(args.config)
        if args.command == "compare":
            from loginprobe.compare.cli import run as run_compare

            return run_compare(args)
    except (UsageError, ConfigError) as exc:
        print(f"loginprobe {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())

"""Network faults on loopback, made with nftables rules that exist only inside a `with` block.

Every fault gets its own base chain in the table `inet loginprobe_test`, on the input
hook for packets arriving on `lo`: dropping there (rather than on output) looks to the
client like a lost packet instead of a local EPERM. Only SYNs are matched, so connections
that already exist (the servers' own, another test's) are not disturbed. `inet` covers
127.0.0.1 and ::1 alike. Needs root (the tests run as root).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator

TABLE = "loginprobe_test"
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_SYN = "tcp flags & (syn | ack) == syn"
_serial = itertools.count()


class FaultError(RuntimeError):
    """nft is missing or refused a rule."""


def _nft(script: str) -> None:
    nft = shutil.which("nft", path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)
    if nft is None:
        raise FaultError("nft not found: install the Debian package nftables (scripts/setup does)")
    done = subprocess.run(
        [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=10
    )
    if done.returncode != 0:
        raise FaultError(f"nft refused:\n{script}\n{done.stderr.strip()}")


@contextlib.contextmanager
def _input_rule(rule: str) -> Iterator[None]:
    chain = f"fault_{os.getpid()}_{next(_serial)}"
    # One nft transaction: either the whole chain with its rule exists, or nothing does.
    _nft(
        f"add table inet {TABLE}\n"
        f"add chain inet {TABLE} {chain}"
        " { type filter hook input priority -10; policy accept; }\n"
        f'add rule inet {TABLE} {chain} iifname "lo" {rule}\n'
    )
    try:
        yield
    finally:
        _nft(f"flush chain inet {TABLE} {chain}\ndelete chain inet {TABLE} {chain}\n")
        _remove_table_if_empty()


def _remove_table_if_empty() -> None:
    nft = shutil.which("nft", path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)
    assert nft is not None
    listing = subprocess.run(
        [nft, "list", "table", "inet", TABLE], capture_output=True, text=True, timeout=10
    )
    # Another fault (nested, or another test process) may still use the table.
    if listing.returncode == 0 and "chain " not in listing.stdout:
        subprocess.run([nft, "delete", "table", "inet", TABLE], capture_output=True, timeout=10)


@contextlib.contextmanager
def drop_syn(port: int) -> Iterator[None]:
    """New TCP connections to `port` on loopback get no answer: a connect timeout."""
    with _input_rule(f"tcp dport {port} {_SYN} drop"):
        yield


@contextlib.contextmanager
def reject_icmp_unreachable(port: int) -> Iterator[None]:
    """New TCP connections to `port` get ICMP host-unreachable: errno 113 (EHOSTUNREACH)."""
    with _input_rule(f"tcp dport {port} {_SYN} reject with icmpx type host-unreachable"):
        yield


@contextlib.contextmanager
def reset_after_handshake(port: int) -> Iterator[None]:
    """Connections to `port` are set up, then the first bytes the client sends are answered
    with a TCP reset (a firewall or load balancer that cuts the connection)."""
    with _input_rule(f"tcp dport {port} tcp flags & psh == psh reject with tcp reset"):
        yield


@contextlib.contextmanager
def drop_all(port: int) -> Iterator[None]:
    """Every packet to `port` on loopback is dropped, established connections too: a dead
    network under a held session."""
    with _input_rule(f"tcp dport {port} drop"):
        yield


@contextlib.contextmanager
def reset_all(port: int) -> Iterator[None]:
    """Every packet to `port` on loopback is answered with a TCP reset, established
    connections too: a middlebox killing a held session."""
    with _input_rule(f"tcp dport {port} reject with tcp reset"):
        yield


def remove_all() -> None:
    """Deletes the whole table: for cleaning up after a killed test run."""
    with contextlib.suppress(FaultError):
        _nft(f"delete table inet {TABLE}\n")

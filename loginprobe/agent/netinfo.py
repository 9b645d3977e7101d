"""Which network (wifi, cellular, wired) a path's interface is on, and what its link tells."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
from pathlib import Path

from loginprobe.contract import NETWORK_TYPES, NetworkType

# Re-exported: the agent learns it here; the Result that carries it lives in the kernel.
from loginprobe.result import NetworkContext as NetworkContext

ARPHRD_ETHER = 1

# Drivers that only ever drive mobile modems (or a phone sharing its uplink). Generic USB
# networking drivers are deliberately absent: cdc_ether and cdc_ncm also drive USB
# Ethernet adapters and docks, so for them we rely on DEVTYPE=wwan, which usbnet sets for
# the modems it knows (FLAG_WWAN) and leaves unset for the Ethernet adapters.
MODEM_DRIVERS = frozenset(
    {
        "qmi_wwan",  # Qualcomm QMI modems (most LTE/5G M.2 and USB sticks)
        "qmi_wwan_q",  # Quectel's out-of-tree fork
        "GobiNet",  # Sierra/Quectel out-of-tree QMI driver
        "cdc_mbim",  # MBIM modems
        "huawei_cdc_ncm",  # Huawei's NCM variant, modems only (unlike plain cdc_ncm)
        "option",  # Option/ZTE/Huawei serial modems (a netdev appears with hso)
        "hso",
        "sierra_net",
        "mhi_net",  # PCIe 5G modems over MHI
        "mhi_wwan_mbim",
        "mtk_t7xx",  # MediaTek T700 5G
        "iosm",  # Intel 7360 LTE
        "ipa",  # Qualcomm IPA on phones/SoCs (rmnet sits on it)
        # A phone tethered over USB shares its mobile data in the common case. iPhones use
        # ipheth; Android uses rndis_host (older) — an Android phone tethering its WiFi
        # looks the same, so configure network_type on such a path if that matters.
        "ipheth",
        "rndis_host",
    }
)
# Names the modem drivers give their netdevs (wwan framework, Qualcomm rmnet, MediaTek ccmni).
MODEM_NAME_PREFIXES = ("wwan", "rmnet", "ccmni")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _devtype(iface_dir: Path) -> str | None:
    for line in (_read(iface_dir / "uevent") or "").splitlines():
        key, _, value = line.partition("=")
        if key == "DEVTYPE":
            return value.strip()
    return None


def _driver(iface_dir: Path) -> str | None:
    """The last part of the device/driver symlink; virtual links (veth, lo) have none."""
    try:
        return os.path.basename(os.readlink(iface_dir / "device" / "driver"))
    except OSError:
        return None


def detect_network_type(interface: str, sysfs: Path = Path("/sys")) -> NetworkType:
    """The interface's network type as far as sysfs tells; `unknown` when it cannot tell."""
    iface_dir = sysfs / "class" / "net" / interface
    if not interface or "/" in interface or not iface_dir.is_dir():
        return "unknown"
    devtype = _devtype(iface_dir)
    if (iface_dir / "wireless").exists() or (iface_dir / "phy80211").exists() or devtype == "wlan":
        return "wifi"
    driver = _driver(iface_dir)
    if devtype == "wwan" or driver in MODEM_DRIVERS or interface.startswith(MODEM_NAME_PREFIXES):
        return "cellular"
    # A driver behind the link tells a real port from veth, bridges, tunnels and loopback,
    # which have no device at all; the type rules out non-Ethernet hardware (e.g. CAN, IB).
    if driver is not None and _read(iface_dir / "type") == str(ARPHRD_ETHER):
        return "wired"
    return "unknown"


def network_type(
    interface: str | None, configured: str | None = None, sysfs: Path = Path("/sys")
) -> NetworkType:
    """The configured label when there is one (it always wins), else what sysfs says."""
    if configured is not None:
        if configured not in NETWORK_TYPES:
            raise ValueError(
                f"network_type {configured!r}: must be one of {', '.join(NETWORK_TYPES)}"
            )
        return configured
    return detect_network_type(interface, sysfs) if interface else "unknown"


def parse_iw_link(text: str) -> tuple[str | None, float | None]:
    """SSID and signal (dBm) from `iw dev IF link`; None for what is absent or unreadable."""
    ssid: str | None = None
    signal: float | None = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        if key == "SSID":
            ssid = value.strip() or None
        elif key == "signal":
            with contextlib.suppress(IndexError, ValueError):
                signal = float(value.split()[0])
    return ssid, signal


def proc_wireless_signal(interface: str, proc: Path = Path("/proc")) -> float | None:
    """The signal level (dBm) from /proc/net/wireless, the kernel's wireless-extensions view."""
    for line in (_read(proc / "net" / "wireless") or "").splitlines():
        name, sep, rest = line.partition(":")
        if not sep or name.strip() != interface:
            continue
        fields = rest.split()  # status, link quality, level, noise, ...
        try:
            level = float(fields[2].rstrip("."))
        except (IndexError, ValueError):
            return None
        # cfg80211 drivers report dBm (negative); a positive level is an old driver's
        # relative scale, which is not comparable across cards, so it is not reported.
        return level if level < 0 else None
    return None


def wifi_link(
    interface: str, proc: Path = Path("/proc"), iw: str | None = None
) -> tuple[str | None, float | None]:
    """SSID and signal of a WiFi interface, from iw where installed, else /proc; never raises."""
    ssid: str | None = None
    signal: float | None = None
    iw = iw or shutil.which("iw", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if iw:
        try:
            out = subprocess.run(
                [iw, "dev", interface, "link"], capture_output=True, text=True, timeout=2
            )
            if out.returncode == 0:
                ssid, signal = parse_iw_link(out.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    if signal is None:
        signal = proc_wireless_signal(interface, proc)
    return ssid, signal


def source_address(
    target: str, interface: str | None = None, bind_address: str | None = None
) -> str | None:
    """The local address the kernel would use to reach target (an IP) on this path.

    connect() on a UDP socket only picks a route and a source address; nothing is sent.
    None when there is no route or the interface cannot be bound to. Behind NAT this is
    the private address: the public one is only seen by the far end (the collector).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(target).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            if interface:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0"
                )
            if bind_address:
                sock.bind((bind_address, 0))
            sock.connect((target, 9))  # any port: no packet leaves
            return str(sock.getsockname()[0])
    except OSError:
        return None


def network_context(
    interface: str | None,
    *,
    configured_type: str | None = None,
    target: str | None = None,
    bind_address: str | None = None,
    carrier: str = "",
    asn: int | None = None,
    path: str = "",
    sysfs: Path = Path("/sys"),
    proc: Path = Path("/proc"),
) -> NetworkContext:
    """All that is known of one path: its type (configured or detected), WiFi link, source."""
    kind = network_type(interface, configured_type, sysfs)
    ssid, signal = wifi_link(interface, proc) if interface and kind == "wifi" else (None, None)
    return NetworkContext(
        network_type=kind,
        ssid=ssid,
        signal_dbm=signal,
        source_address=source_address(target, interface, bind_address) if target else None,
        carrier=carrier,
        asn=asn,
        path=path,
        interface=interface,
    )

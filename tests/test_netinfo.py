"""Network-type detection against fake sysfs trees laid out as the kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loginprobe.agent.netinfo import (
    NetworkContext,
    detect_network_type,
    network_context,
    network_type,
    parse_iw_link,
    proc_wireless_signal,
    source_address,
    wifi_link,
)

IW_CONNECTED = """\
Connected to 00:11:22:33:44:55 (on wlan0)
\tSSID: Cafe Guest
\tfreq: 5180
\tRX: 1863517 bytes (12042 packets)
\tTX: 221350 bytes (1534 packets)
\tsignal: -61 dBm
\trx bitrate: 390.0 MBit/s VHT-MCS 9 80MHz short GI VHT-NSS 1
\ttx bitrate: 433.3 MBit/s VHT-MCS 9 80MHz short GI VHT-NSS 1
"""

PROC_WIRELESS = """\
Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE
 face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22
 wlan0: 0000   49.  -61.  -256        0      0      0      0      7        0
  wlp2s0: 0000   70.  200.  0        0      0      0      0      0        0
"""


def _link(link: Path, target: Path) -> None:
    """A relative symlink, as sysfs has them, so the tree can be moved."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def add_iface(
    sysfs: Path,
    name: str,
    *,
    device: str | None = None,
    driver: str | None = None,
    bus: str = "pci",
    arphrd: int = 1,
    devtype: str | None = None,
    wireless: bool = False,
    phy80211: bool = False,
) -> None:
    """One netdev: under its device when it has one, under devices/virtual/net otherwise."""
    if device is not None:
        dev_dir = sysfs / "devices" / device
        net_dir = dev_dir / "net" / name
        net_dir.mkdir(parents=True)
        _link(net_dir / "device", dev_dir)
        if driver is not None:
            drv_dir = sysfs / "bus" / bus / "drivers" / driver
            drv_dir.mkdir(parents=True, exist_ok=True)
            _link(dev_dir / "driver", drv_dir)
    else:
        net_dir = sysfs / "devices" / "virtual" / "net" / name
        net_dir.mkdir(parents=True)
    uevent = f"INTERFACE={name}\nIFINDEX=7\n" + (f"DEVTYPE={devtype}\n" if devtype else "")
    (net_dir / "uevent").write_text(uevent)
    (net_dir / "type").write_text(f"{arphrd}\n")
    if wireless:
        (net_dir / "wireless").mkdir()
    if phy80211:
        phy = sysfs / "class" / "ieee80211" / "phy0"
        phy.mkdir(parents=True, exist_ok=True)
        _link(net_dir / "phy80211", phy)
    _link(sysfs / "class" / "net" / name, net_dir)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    pci = "pci0000:00/0000:00:1c.0"
    usb = "pci0000:00/0000:00:14.0/usb2/2-1"
    add_iface(
        root,
        "wlan0",
        device=f"{pci}/0000:02:00.0",
        driver="iwlwifi",
        devtype="wlan",
        wireless=True,
        phy80211=True,
    )
    # Kernels without wireless extensions have no wireless/ folder and may omit DEVTYPE.
    add_iface(root, "wlp3s0", device=f"{pci}/0000:03:00.0", driver="ath11k_pci", phy80211=True)
    add_iface(
        root,
        "wwan0",
        device=f"{usb}/2-1:1.4",
        driver="qmi_wwan",
        bus="usb",
        arphrd=65534,
        devtype="wwan",
    )
    add_iface(root, "enp0s31f6", device="pci0000:00/0000:00:1f.6", driver="e1000e")
    add_iface(root, "veth1a2b", arphrd=1)
    add_iface(root, "lo", arphrd=772)
    # cdc_ncm drives both USB Ethernet docks and some modems: only DEVTYPE tells them apart.
    add_iface(root, "enx00e04c680001", device=f"{usb}/2-1:1.0", driver="cdc_ncm", bus="usb")
    add_iface(root, "usb1", device=f"{usb}/2-1:1.1", driver="cdc_ncm", bus="usb", devtype="wwan")
    add_iface(root, "eth1", device=f"{usb}/2-1:1.2", driver="ipheth", bus="usb")
    add_iface(root, "usb0", device=f"{usb}/2-1:1.3", driver="rndis_host", bus="usb")
    add_iface(root, "enx0c5b8f279a64", device=f"{usb}/2-1:1.5", driver="cdc_mbim", bus="usb")
    add_iface(root, "rmnet_data0", arphrd=519)
    return root


@pytest.mark.parametrize(
    ("iface", "expected"),
    [
        ("wlan0", "wifi"),
        ("wlp3s0", "wifi"),
        ("wwan0", "cellular"),
        ("enp0s31f6", "wired"),
        ("veth1a2b", "unknown"),
        ("lo", "unknown"),
        ("enx00e04c680001", "wired"),
        ("usb1", "cellular"),
        ("eth1", "cellular"),
        ("usb0", "cellular"),
        ("enx0c5b8f279a64", "cellular"),
        ("rmnet_data0", "cellular"),
        ("eth9", "unknown"),
        ("../../devices", "unknown"),
        ("", "unknown"),
    ],
)
def test_detect(sysfs: Path, iface: str, expected: str) -> None:
    assert detect_network_type(iface, sysfs) == expected


def test_configured_label_wins(sysfs: Path) -> None:
    assert network_type("enp0s31f6", None, sysfs) == "wired"
    assert network_type("enp0s31f6", "cellular", sysfs) == "cellular"
    assert network_type("wlan0", "unknown", sysfs) == "unknown"
    assert network_type(None, "wifi", sysfs) == "wifi"
    assert network_type(None, None, sysfs) == "unknown"
    with pytest.raises(ValueError, match="must be one of wifi, cellular, wired, unknown"):
        network_type("wlan0", "mobile", sysfs)


def test_parse_iw_link() -> None:
    assert parse_iw_link(IW_CONNECTED) == ("Cafe Guest", -61.0)
    assert parse_iw_link("Not connected.\n") == (None, None)
    assert parse_iw_link("\tSSID: \n\tsignal: strong\n\x00garbage") == (None, None)


def test_proc_wireless(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "wireless").write_text(PROC_WIRELESS)
    assert proc_wireless_signal("wlan0", tmp_path) == -61.0
    assert proc_wireless_signal("wlp2s0", tmp_path) is None  # relative units, not dBm
    assert proc_wireless_signal("wlan9", tmp_path) is None
    assert proc_wireless_signal("wlan0", tmp_path / "missing") is None


def _fake_iw(tmp_path: Path, output: str, status: int = 0) -> str:
    (tmp_path / "iw.out").write_text(output)
    script = tmp_path / "iw"
    script.write_text(f"#!/bin/sh\ncat '{tmp_path / 'iw.out'}'\nexit {status}\n")
    script.chmod(0o755)
    return str(script)


def test_wifi_link_prefers_iw_and_falls_back_to_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "wireless").write_text(PROC_WIRELESS.replace("-61.", "-70."))
    assert wifi_link("wlan0", proc, _fake_iw(tmp_path, IW_CONNECTED)) == ("Cafe Guest", -61.0)
    # iw fails (no such device, no permission): the kernel's level is still reported.
    assert wifi_link("wlan0", proc, _fake_iw(tmp_path, "command failed", 237)) == (None, -70.0)
    assert wifi_link("wlan0", proc, str(tmp_path / "no-iw")) == (None, -70.0)


def test_source_address_sends_nothing_and_follows_the_path() -> None:
    assert source_address("127.0.0.1") == "127.0.0.1"
    assert source_address("127.0.0.1", interface="lo") == "127.0.0.1"
    assert source_address("127.0.0.1", bind_address="127.0.0.2") == "127.0.0.2"
    assert source_address("127.0.0.1", interface="no-such-if0") is None


def test_source_address_ipv6() -> None:
    # The machines have IPv6 on loopback (tests/test_network.py connects over ::1 too).
    assert source_address("::1") == "::1"


def test_network_context(sysfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    iw = _fake_iw(tmp_path, IW_CONNECTED)
    monkeypatch.setattr("shutil.which", lambda *a, **k: iw)
    ctx = network_context("wlan0", carrier="Example Telecom", asn=64500, sysfs=sysfs)
    assert ctx == NetworkContext(
        network_type="wifi",
        ssid="Cafe Guest",
        signal_dbm=-61.0,
        carrier="Example Telecom",
        asn=64500,
        interface="wlan0",
    )
    # The fake tree's interfaces do not exist here; lo does, so the address comes through.
    wired = network_context("lo", configured_type="wired", target="127.0.0.1", sysfs=sysfs)
    assert wired == NetworkContext(
        network_type="wired", source_address="127.0.0.1", interface="lo"
    )
    modem = network_context("wwan0", carrier="Example Mobile", sysfs=sysfs)
    assert modem == NetworkContext(
        network_type="cellular", carrier="Example Mobile", interface="wwan0"
    )
    # A configured type wins over detection; no WiFi link is looked up for a non-WiFi type.
    assert network_context("wlan0", configured_type="wired", sysfs=sysfs).ssid is None

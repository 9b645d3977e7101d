"""Target URL parsing follows CONTRACT.md section 1, and refuses what cannot be probed."""

from __future__ import annotations

import pytest

from loginprobe.target import TargetError, parse_target


def test_xmpp_without_port_uses_srv_and_keeps_the_domain() -> None:
    t = parse_target("xmpp://alice@chat.example.com")
    assert (t.protocol, t.tls_mode, t.host, t.port) == (
        "xmpp",
        "starttls",
        "chat.example.com",
        5222,
    )
    assert t.srv == "_xmpp-client._tcp.chat.example.com"
    assert t.domain == "chat.example.com" and t.user == "alice"


def test_xmpp_host_param_connects_elsewhere_but_keeps_the_jid_domain() -> None:
    t = parse_target("xmpp://alice@example.com:5222?host=10.0.0.5")
    assert (t.host, t.port, t.domain, t.srv) == ("10.0.0.5", 5222, "example.com", None)
    assert t.tls_server_name == "example.com"


def test_xmpps_defaults() -> None:
    t = parse_target("xmpps://bob@example.com")
    assert (t.tls_mode, t.port, t.srv) == ("direct", 5223, "_xmpps-client._tcp.example.com")


def test_mqtt_defaults_and_version() -> None:
    assert parse_target("mqtt://u@broker").params["version"] == "3.1.1"
    t = parse_target("mqtts://probe@mqtt.example.com:8884?version=5&client_id=x1")
    assert (t.port, t.tls_mode, t.params["version"], t.params["client_id"]) == (
        8884,
        "direct",
        "5",
        "x1",
    )
    assert parse_target("mqtts://u@h").port == 8883


def test_user_is_percent_decoded() -> None:
    assert parse_target("mqtt://alice%40example.com@broker").user == "alice@example.com"


def test_https_auth_modes() -> None:
    t = parse_target("https://alice@login.example.com/api/login?auth=json")
    assert (t.protocol, t.port, t.path, t.params["auth"]) == ("http", 443, "/api/login", "json")
    assert parse_target("http://alice@h/").params["auth"] == "basic"


def test_ipv6_literal_host() -> None:
    t = parse_target("tcp://[::1]:5222")
    assert (t.host, t.port) == ("::1", 5222)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://h:21", "unsupported scheme"),
        ("xmpp://alice:secret@example.com", "password must never be part of the URL"),
        ("xmpp://example.com", "no user"),
        ("tcp://host", "no port"),
        ("tls://host:99999", "port .99999. in .tls://host:99999. is not a port number"),
        ("mqtt://u@h:-1", "port .-1. in .mqtt://u@h:-1. is not a port number: use 1 to 65535"),
        ("xmpp://alice@xmpp test", "host .xmpp test. in .* holds . ., which no host name has"),
        ("mqtt://u@h?version=4", "unsupported MQTT version"),
        ("https://u@h/?auth=digest", "unsupported auth"),
        ("mqtt://u@h?qos=1", "unknown query parameter 'qos'"),
        ("tcp://:80", "no host"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, needle: str) -> None:
    with pytest.raises(TargetError, match=needle) as info:
        parse_target(url)
    assert "secret" not in str(info.value)

"""Settings: every key's validator with bad values and their exact messages, and the cross-field rules."""

from __future__ import annotations

import base64
import json
import time

import pytest

from firstboot.errors import FirstbootError
from firstboot.settings import build
from gwcore.deploy import BY_KEY, KEYS, SETTINGS, InvalidSetting, NetworkMode, masked, validate_value

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2ZWF0bHljcmVhdGVka2V5Zm9ydGVzdGluZ3B1cnBvc2Vz admin@laptop"
SHA512 = "$6$saltsalt$" + "a" * 86
YESCRYPT = "$y$j9T$abcdefghijklmnop$" + "B" * 43


def make_token(url: str = "https://plane.example.com:8443", expires: int | None = None) -> str:
    payload = {"u": url, "h": "sha256:" + "ab" * 32, "s": "s3cret", "e": expires or int(time.time()) + 3600}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return "GWJ1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_table_declares_every_ova_property_once() -> None:
    assert sorted(KEYS) == sorted(
        [
            "gateway.plane_url",
            "gateway.join_token",
            "network.hostname",
            "network.mode",
            "network.address",
            "network.gateway",
            "network.dns",
            "network.ntp",
            "proxy.url",
            "admin.ssh_key",
            "admin.password_hash",
        ]
    )
    assert len({s.attr for s in SETTINGS}) == len(SETTINGS)
    assert {s.key for s in SETTINGS if s.secret} == {"gateway.join_token", "admin.password_hash", "proxy.url"}


GOOD = [
    ("gateway.plane_url", "https://plane.example.com:8443/", "https://plane.example.com:8443"),
    ("gateway.join_token", make_token(), None),
    ("network.hostname", "GW-01.corp.example", "gw-01.corp.example"),
    ("network.mode", "STATIC", "static"),
    ("network.address", "192.0.2.10/24", "192.0.2.10/24"),
    ("network.address", "2001:db8::10/64", "2001:db8::10/64"),
    ("network.gateway", "192.0.2.1", "192.0.2.1"),
    ("network.dns", "192.0.2.53, 2001:db8::53", "192.0.2.53,2001:db8::53"),
    ("network.ntp", "ntp.example.com,192.0.2.123", "ntp.example.com,192.0.2.123"),
    ("proxy.url", "http://user:pw@proxy.example.com:3128", "http://user:pw@proxy.example.com:3128"),
    ("admin.ssh_key", SSH_KEY, SSH_KEY),
    ("admin.password_hash", SHA512, SHA512),
    ("admin.password_hash", YESCRYPT, YESCRYPT),
]


@pytest.mark.parametrize(("key", "raw", "expected"), GOOD)
def test_good_values(key: str, raw: str, expected: str | None) -> None:
    assert validate_value(key, raw) == (raw if expected is None else expected)


BAD = [
    (
        "gateway.plane_url",
        "http://plane:8443",
        "gateway.plane_url: expected an https:// URL like https://plane.example.com:8443, got "
        "'http://plane:8443'",
    ),
    (
        "gateway.plane_url",
        "https://plane:99999",
        "gateway.plane_url: expected an https:// URL like https://plane.example.com:8443, got "
        "'https://plane:99999'",
    ),
    (
        "gateway.plane_url",
        "https://plane/v1",
        "gateway.plane_url: expected an https:// URL like https://plane.example.com:8443, got "
        "'https://plane/v1'",
    ),
    ("gateway.join_token", "abc", "gateway.join_token: must start with 'GWJ1.'"),
    (
        "gateway.join_token",
        "GWJ1.!!!",
        "gateway.join_token: not valid base64url JSON (was it cut short when copied?)",
    ),
    (
        "network.hostname",
        "gw_01",
        "network.hostname: expected a host name of letters, digits and '-' (at most 63 per label) like "
        "gw-01, got 'gw_01'",
    ),
    (
        "network.hostname",
        "-gw",
        "network.hostname: expected a host name of letters, digits and '-' (at most 63 per label) like "
        "gw-01, got '-gw'",
    ),
    (
        "network.hostname",
        "a" * 64,
        "network.hostname: expected a host name of letters, digits and '-' (at most 63 per label) "
        "like gw-01, got '" + "a" * 64 + "'",
    ),
    ("network.mode", "manual", "network.mode: expected dhcp or static, got 'manual'"),
    (
        "network.address",
        "10.0.0.1",
        "network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, got '10.0.0.1'",
    ),
    (
        "network.address",
        "10.0.0.300/24",
        "network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, got '10.0.0.300/24'",
    ),
    (
        "network.address",
        "10.0.0.0/24",
        "network.address: '10.0.0.0/24' is the network or broadcast address of 10.0.0.0/24; use a host "
        "address",
    ),
    (
        "network.gateway",
        "10.0.0",
        "network.gateway: expected an IPv4/IPv6 address like 192.0.2.1, got '10.0.0'",
    ),
    (
        "network.dns",
        "192.0.2.53,dns.example",
        "network.dns: expected comma-separated IP addresses like 192.0.2.53,192.0.2.54, got 'dns.example'",
    ),
    (
        "network.ntp",
        "ntp_1",
        "network.ntp: expected comma-separated NTP server names or addresses like ntp.example.com, got "
        "'ntp_1'",
    ),
    (
        "proxy.url",
        "proxy:3128",
        "proxy.url: expected an http:// proxy URL with a port like http://proxy.example.com:3128, got "
        "'proxy:3128'",
    ),
    (
        "proxy.url",
        "http://bob:hunter2@proxy",
        "proxy.url: expected an http:// proxy URL with a port like http://proxy.example.com:3128, got "
        "'http://bob:********@proxy'",
    ),
    (
        "admin.ssh_key",
        "ssh-dss AAAA",
        "admin.ssh_key: expected one OpenSSH public key like 'ssh-ed25519 AAAAC3Nza... admin@host', got "
        "'ssh-dss AAAA'",
    ),
    (
        "admin.ssh_key",
        "ssh-rsa " + SSH_KEY.split()[1],
        "admin.ssh_key: the key data does not match its type 'ssh-rsa' (a truncated or mangled paste?)",
    ),
    (
        "admin.password_hash",
        "hunter2",
        "admin.password_hash: expected a crypt(3) hash like $6$... or $y$... (make one with `mkpasswd "
        "-m yescrypt`), never a plain password",
    ),
]


@pytest.mark.parametrize(("key", "raw", "message"), BAD)
def test_bad_values_have_exact_messages(key: str, raw: str, message: str) -> None:
    with pytest.raises(InvalidSetting) as exc:
        validate_value(key, raw)
    assert str(exc.value) == message


def test_every_key_has_a_bad_value_case() -> None:
    assert {key for key, _, _ in BAD} == set(KEYS)


def test_password_never_echoed() -> None:
    with pytest.raises(InvalidSetting) as exc:
        validate_value("admin.password_hash", "CorrectHorse1")
    assert "CorrectHorse1" not in str(exc.value)


def test_plane_url_taken_from_token() -> None:
    s = build(
        {"gateway.join_token": make_token("https://10.0.2.2:8443")}, {"gateway.join_token": "credentials"}
    )
    assert s.plane_url == "https://10.0.2.2:8443"
    assert s.mode is NetworkMode.DHCP
    assert s.sources == {"gateway.join_token": "credentials", "gateway.plane_url": "join-token"}


CROSS = [
    (
        {"network.mode": "static"},
        "network.address: required when network.mode is static (and 1 more problem(s))",
    ),
    (
        {"network.mode": "static", "network.address": "192.0.2.10/24", "network.gateway": "198.51.100.1"},
        "network.gateway: 198.51.100.1 is not inside the subnet 192.0.2.0/24 of network.address",
    ),
    (
        {"network.mode": "static", "network.address": "192.0.2.10/24", "network.gateway": "192.0.2.10"},
        "network.gateway: 192.0.2.10 is the appliance's own address",
    ),
    (
        {"network.address": "192.0.2.10/24"},
        "network.address: only used when network.mode is static (it is dhcp)",
    ),
    (
        {"gateway.plane_url": "https://other.example.com"},
        "gateway.plane_url: https://other.example.com does not match the join token's "
        "https://plane.example.com:8443 (leave it empty to use the token's)",
    ),
]


@pytest.mark.parametrize(("extra", "message"), CROSS)
def test_cross_field_rules(extra: dict[str, str], message: str) -> None:
    with pytest.raises(FirstbootError) as exc:
        build({"gateway.join_token": make_token(), **extra})
    assert str(exc.value) == message


def test_missing_token_and_unknown_key() -> None:
    with pytest.raises(FirstbootError, match=r"^gateway.join_token: required"):
        build({})
    with pytest.raises(FirstbootError, match=r"^network.dhcp: unknown setting"):
        build({"network.dhcp": "yes", "gateway.join_token": make_token()})


def test_empty_values_are_unset_and_static_is_built() -> None:
    s = build(
        {
            "gateway.join_token": make_token(),
            "gateway.plane_url": "",
            "network.mode": "static",
            "network.address": "192.0.2.10/24",
            "network.gateway": "192.0.2.1",
            "network.dns": "192.0.2.53,192.0.2.54",
            "proxy.url": " ",
        }
    )
    assert (s.address, s.gateway, s.dns, s.proxy_url) == (
        "192.0.2.10/24",
        "192.0.2.1",
        ("192.0.2.53", "192.0.2.54"),
        None,
    )
    assert build(s.raw()) == s


def test_masks() -> None:
    assert masked("admin.password_hash", SHA512) == "********"
    assert masked("gateway.join_token", make_token()) == "GWJ1.********"
    assert masked("gateway.join_token", "hunter2-typed-in-the-wrong-field") == "********"
    assert masked("proxy.url", "http://bob:hunter2@p:3128") == "http://bob:********@p:3128"
    assert masked("network.hostname", "gw") == "gw"
    assert BY_KEY["proxy.url"].secret

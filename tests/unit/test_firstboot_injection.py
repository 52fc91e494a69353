"""No setting's value can add a line or a section to a file first boot writes.

Values cross from seeds and the wizard into systemd-networkd and timesyncd files, /etc/hosts,
/etc/hostname, authorized_keys, /etc/shadow and gateway.yaml. The settings layer refuses control
characters and IPv6 scope ids with a one-line error naming the key, and every writer refuses them
again (defence in depth) when handed a Settings that skipped validation.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from firstboot import apply as applier
from firstboot.apply import network
from firstboot.apply.access import apply_ssh, set_shadow_hash
from firstboot.errors import FirstbootError
from firstboot.settings import Settings, build
from firstboot.system import System
from gwcore.deploy import KEYS, InvalidSetting, NetworkMode, validate_value
from tests.unit.test_firstboot_settings import SHA512, SSH_KEY, make_token

TOKEN = make_token("https://plane.example.com:8443")

# Everything Python, systemd or a shell might take for the end of a line, and a few other controls.
BREAKS = [
    "\n",
    "\r",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
    "\x00",
    "\x1b",
]
HOSTILE = [
    *BREAKS,
    "%eth0\nDNS=203.0.113.66",
    "\n[Network]\nDNS=203.0.113.66",
    "\n[Match]\nName=*",
    "\nAddress=203.0.113.66/32",
    "\\",
    "\n127.0.0.1 evil",
]

# Valid values to insert hostile text into, per key.
VALID = {
    "network.mode": ["static", "dhcp"],
    "network.address": ["192.0.2.10/24", "2001:db8::10/64", "fe80::10/64"],
    "network.gateway": ["192.0.2.1", "2001:db8::1", "fe80::1"],
    "network.dns": ["192.0.2.53", "192.0.2.53,2001:db8::53", "fe80::53"],
    "network.hostname": ["gw-01", "gw-01.corp.example"],
    "network.ntp": ["ntp.example.com", "192.0.2.123,ntp.example.com", "fe80::123"],
    "proxy.url": ["http://proxy.example.com:3128", "http://bob:pw@proxy.example.com:3128"],
    "gateway.join_token": [TOKEN],
    "gateway.plane_url": ["https://plane.example.com:8443"],
    "admin.ssh_key": [SSH_KEY],
    "admin.password_hash": [SHA512],
}


# ---------------------------------------------------------------- the settings layer (table)

SCOPE_IDS = [
    ("network.gateway", "fe80::1%eth0\nDNS=203.0.113.66"),
    ("network.gateway", "fe80::1%eth0"),
    ("network.dns", "fe80::53%eth0\nDNS=203.0.113.66"),
    ("network.dns", "192.0.2.53,fe80::53%2"),
    ("network.ntp", "fe80::123%eth0\n[Time]"),
    ("network.address", "fe80::10%eth0\nDNS=203.0.113.66/64"),
]


@pytest.mark.parametrize(("key", "raw"), SCOPE_IDS)
def test_ipv6_scope_ids_are_refused_with_one_line(key: str, raw: str) -> None:
    with pytest.raises(InvalidSetting) as err:
        validate_value(key, raw)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and "\n" not in message
    assert "scope id" in message or "control character" in message


NEWLINE_INSIDE = [
    ("network.hostname", "gw\n.evil"),
    ("network.hostname", "gw-01\n.x"),
    ("network.ntp", "ntp\n.example.com"),
    ("network.ntp", "a.b\n.c,192.0.2.1"),
    ("admin.ssh_key", SSH_KEY + "\x1b[2J"),
    ("admin.ssh_key", SSH_KEY.replace(" admin", "\x0badmin")),
    ("admin.password_hash", SHA512[:20] + "\n" + SHA512[20:]),
    ("proxy.url", "http://proxy.exa\x0bmple.com:3128"),
    ("proxy.url", "http://bob:p\x00w@proxy.example.com:3128"),
    ("gateway.plane_url", "https://pla\x1bne.example.com"),
]


@pytest.mark.parametrize(("key", "raw"), NEWLINE_INSIDE)
def test_control_characters_inside_a_value_are_refused(key: str, raw: str) -> None:
    with pytest.raises(InvalidSetting) as err:
        validate_value(key, raw)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and "\n" not in message
    assert "\x1b" not in message and "\x00" not in message  # nothing raw reaches a terminal


def test_error_names_the_character_but_never_echoes_a_secret() -> None:
    with pytest.raises(InvalidSetting) as err:
        validate_value("proxy.url", "http://bob:hunter2\n@proxy.example.com:3128")
    assert str(err.value).startswith("proxy.url: control character '\\n' at position 18")
    assert "hunter2" not in str(err.value)


def test_surrounding_whitespace_is_still_trimmed() -> None:
    # A credential file or a paste often ends in a newline: that is not an injection.
    assert validate_value("network.hostname", "gw-01\n") == "gw-01"
    assert validate_value("network.dns", " 192.0.2.53\r\n") == "192.0.2.53"


# ---------------------------------------------------------------- the writers (defence in depth)


def hostile_settings(**changes: object) -> Settings:
    """Settings that skipped validation, as a bug or a future caller might build them."""
    base = build(
        {
            "gateway.join_token": TOKEN,
            "network.mode": "static",
            "network.address": "192.0.2.10/24",
            "network.gateway": "192.0.2.1",
            "network.dns": "192.0.2.53",
            "network.ntp": "ntp.example.com",
            "network.hostname": "gw-01",
            "admin.ssh_key": SSH_KEY,
            "admin.password_hash": SHA512,
        }
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


WRITER_CASES = [
    ("address", "192.0.2.10/24\nDNS=203.0.113.66", network.render_network),
    ("gateway", "fe80::1%eth0\nDNS=203.0.113.66", network.render_network),
    ("dns", ("192.0.2.53\n[Network]",), network.render_network),
    ("dns", ("192.0.2.53 203.0.113.66",), network.render_network),
    ("ntp", ("ntp.example.com\\",), network.render_network),
    ("ntp", ("ntp.example.com\u2028NTP=x",), network.render_timesyncd),
]


@pytest.mark.parametrize(("attr", "value", "render"), WRITER_CASES)
def test_writers_refuse_what_validation_should_have_caught(attr: str, value: object, render: object) -> None:
    with pytest.raises(FirstbootError, match=r"refusing to write"):
        render(hostile_settings(**{attr: value}))  # type: ignore[operator]


def test_hostname_writer_refuses_a_line_break(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    with pytest.raises(FirstbootError, match=r"network.hostname: refusing to write"):
        network.apply_hostname(system, hostile_settings(hostname="gw\n127.0.0.1 evil"))
    assert (system.root / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n"


def test_authorized_keys_writer_refuses_a_second_line(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    with pytest.raises(FirstbootError, match=r"admin.ssh_key: refusing to write"):
        apply_ssh(system, hostile_settings(ssh_key=SSH_KEY + "\nssh-ed25519 AAAA evil"))
    assert not (system.root / "home/admin/.ssh/authorized_keys").exists()


def test_shadow_writer_refuses_a_field_or_line_break() -> None:
    for bad in ("$6$a:b", "$6$a\nroot::0:0", "$6$a b"):
        with pytest.raises(FirstbootError, match=r"admin.password_hash: refusing to write"):
            set_shadow_hash("admin:!:1::::::\n", "admin", bad)


# ---------------------------------------------------------------- the property


def make_root(tmp_path: Path) -> System:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n")
    return System.for_args(str(root))


def skeleton(s: Settings) -> Settings:
    """The same shape of settings (mode, how many servers, which keys are set) with plain values."""
    return dataclasses.replace(
        s,
        hostname="gw-plain" if s.hostname else None,
        address="192.0.2.10/24" if s.mode == NetworkMode.STATIC else None,
        gateway="192.0.2.1" if s.mode == NetworkMode.STATIC else None,
        dns=("192.0.2.53",) * len(s.dns),
        ntp=("ntp.example.com",) * len(s.ntp),
        proxy_url="http://proxy.example.com:3128" if s.proxy_url else None,
        ssh_key=SSH_KEY if s.ssh_key else None,
        password_hash=SHA512 if s.password_hash else None,
    )


GENERATED = (
    "etc/systemd/network/10-firstboot.network",
    "etc/systemd/timesyncd.conf.d/50-firstboot.conf",
    "etc/hostname",
    "etc/hosts",
    "etc/shadow",
    "home/admin/.ssh/authorized_keys",
    "etc/nftables.d/50-ssh.nft",
    "etc/sudoers.d/50-firstboot-admin",
)
_SECTION = re.compile(r"^\s*\[")


def shape(text: str) -> list[str]:
    """What a value must never change: the lines, each line's section header, key or field count.

    str.splitlines() breaks at every character any of the readers might take for a line end.
    """
    out = []
    for line in text.splitlines():
        if _SECTION.match(line) or line.startswith("#"):
            out.append(line)
        elif "=" in line:
            out.append(line.split("=", 1)[0] + "=")  # Key= of a systemd file
        elif ":" in line:
            out.append(f"{line.split(':', 1)[0]}:{line.count(':')}")  # a shadow entry
        else:
            out.append("<value>")  # /etc/hostname, /etc/hosts, authorized_keys
    return out


def applied_files(tmp_path: Path, s: Settings) -> dict[str, str]:
    system = make_root(tmp_path)
    applier.apply(system, s, plan=applier.steps(simulate_register=True))
    return {name: (system.root / name).read_text() for name in GENERATED if (system.root / name).exists()}


def hostile_text(key: str) -> st.SearchStrategy[str]:
    """A valid value with hostile text inserted anywhere, or any text at all."""
    valid = st.sampled_from(VALID[key])

    def insert(pair: tuple[str, tuple[int, str]]) -> str:
        text, (where, bad) = pair
        at = where % (len(text) + 1)
        return text[:at] + bad + text[at:]

    inserted = st.tuples(valid, st.tuples(st.integers(0, 200), st.sampled_from(HOSTILE))).map(insert)
    return st.one_of(valid, inserted, st.text(max_size=40))


@st.composite
def seeds(draw: st.DrawFn) -> dict[str, str]:
    values = {"gateway.join_token": TOKEN}
    for key in KEYS:
        if key != "gateway.join_token" and draw(st.booleans()):
            values[key] = draw(hostile_text(key))
    return values


@settings(max_examples=250, deadline=None)
@given(values=seeds())
@example(values={"gateway.join_token": TOKEN, "network.dns": "fe80::1%eth0\nDNS=203.0.113.66"})
@example(values={"gateway.join_token": TOKEN, "network.hostname": "gw\n.evil"})
@example(values={"gateway.join_token": TOKEN, "network.ntp": "ntp\n.example.com"})
@example(
    values={
        "gateway.join_token": TOKEN,
        "network.mode": "static",
        "network.address": "fe80::10/64",
        "network.gateway": "fe80::1%eth0\nDNS=203.0.113.66",
    }
)
def test_no_generated_file_gains_a_line_or_section_from_a_value(
    tmp_path_factory: pytest.TempPathFactory, values: dict[str, str]
) -> None:
    try:
        s = build(values)
    except FirstbootError as exc:
        message = str(exc)
        assert "\n" not in message and re.match(r"^[a-z]+\.[a-z_]+: ", message), message
        return
    tmp = tmp_path_factory.mktemp("apply")
    got = applied_files(tmp / "hostile", s)
    want = applied_files(tmp / "plain", skeleton(s))
    assert got.keys() == want.keys()
    for name in got:
        assert shape(got[name]) == shape(want[name]), (name, got[name])
    conf = yaml.safe_load((tmp / "hostile/root/etc/gateway/gateway.yaml").read_text())
    assert set(conf) == set(yaml.safe_load((tmp / "plain/root/etc/gateway/gateway.yaml").read_text()))

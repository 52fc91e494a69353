"""The urwid wizard in a real terminal (tmux): the good path, bad input on every screen, try-and-revert."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.wizard_helpers import Tmux, fake_token, make_root

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def tmuxes() -> Iterator[list[Tmux]]:
    started: list[Tmux] = []
    yield started
    for t in started:
        t.close()


def start(tmuxes: list[Tmux], tmp_path: Path, *args: str) -> Tmux:
    t = Tmux(tmp_path, list(args))
    tmuxes.append(t)
    return t


def test_good_path(tmp_path: Path, tmuxes: list[Tmux]) -> None:
    root = make_root(tmp_path / "root")
    t = start(tmuxes, tmp_path, "--root", str(root), "wizard", "--dry-run", "--revert-after", "60")
    t.wait_for("< Start >")
    t.keys("Enter")
    t.wait_for("2/8: Network")
    t.keys("Enter", "Enter", "Enter", "Enter", "Enter")  # DHCP, empty static fields, Next
    t.wait_for("3/8: Host name and time")
    t.type("gw-tui")
    t.keys("Enter")
    t.type("ntp.example.com")
    t.keys("Enter", "Enter")
    t.wait_for("4/8: Outbound proxy")
    t.keys("Enter", "Enter")
    t.wait_for("5/8: Management plane")
    token = fake_token("https://127.0.0.1:9")
    t.type(token)
    screen = t.wait_for("Plane: https://127.0.0.1:9   CA sha256:abababab")
    # Masked like the password while it is typed; what it carries is shown below it.
    assert token[5:] not in screen.replace("\n", "") and "*" * 60 in screen
    t.keys("Enter", "Enter", "Enter")  # token, empty plane URL (taken from the token), Next
    t.wait_for("6/8: Admin access")
    t.keys("Enter")
    t.type("correct horse")
    t.keys("Enter")
    t.type("correct horse")
    t.keys("Enter", "Enter")
    screen = t.wait_for("7/8: Review")
    assert "Join token:             GWJ1.********" in screen
    assert "Console password hash:  ********" in screen
    assert "Plane URL:              https://127.0.0.1:9   (join-token)" in screen
    assert "Plane CA (pinned):      sha256:" + "ab" * 32 + "   (join-token)" in screen
    assert "SSH:                    off (no key)" in screen
    assert "correct horse" not in screen
    t.keys("Enter")  # Apply
    screen = t.wait_for("Keep these network settings?")
    assert "NOT reachable: plane 127.0.0.1 unreachable: Connection refused" in screen
    t.keys("Enter")  # Keep
    screen = t.wait_for("First boot complete. The gateway is starting.")
    assert "Registration with the management plane: done" in screen
    t.keys("Enter")  # Finish
    assert t.exit_code() == 0
    assert (root / "etc/hostname").read_text() == "gw-tui\n"
    assert "NTP=ntp.example.com" in (root / "etc/systemd/timesyncd.conf.d/50-firstboot.conf").read_text()
    assert "DHCP=yes" in (root / "etc/systemd/network/10-firstboot.network").read_text()
    admin = [line for line in (root / "etc/shadow").read_text().splitlines() if line.startswith("admin:")]
    assert admin[0].split(":")[1].startswith("$6$")
    assert (
        yaml.safe_load((root / "etc/gateway/gateway.yaml").read_text())["plane_url"] == "https://127.0.0.1:9"
    )
    assert (root / "var/lib/firstboot/done").exists()


def test_bad_input_on_every_screen_and_network_rollback(tmp_path: Path, tmuxes: list[Tmux]) -> None:
    root = make_root(tmp_path / "root")
    t = start(tmuxes, tmp_path, "--root", str(root), "wizard", "--dry-run", "--revert-after", "2")
    t.wait_for("< Start >")
    t.keys("Enter")
    # Network: static with three bad values at once.
    t.wait_for("2/8: Network")
    t.keys("Right", "Enter")
    t.type("10.0.0.1")
    t.keys("Enter")
    t.type("10.0.0.300")
    t.keys("Enter")
    t.type("dns.example")
    t.keys("Enter", "Enter")
    t.wait_for(
        "network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, got '10.0.0.1'"
    )
    screen = t.wait_for("network.gateway: expected an IPv4/IPv6 address like 192.0.2.1, got '10.0.0.300'")
    assert (
        "network.dns: expected comma-separated IP addresses like 192.0.2.53,192.0.2.54, got 'dns.example'"
        in screen
    )
    t.keys("C-u")
    t.type("192.0.2.10/24")
    t.keys("Enter", "C-u")
    t.type("198.51.100.1")
    t.keys("Enter", "C-u", "Enter", "Enter")
    t.wait_for("network.gateway: 198.51.100.1 is not inside the subnet 192.0.2.0/24 of network.address")
    t.keys("C-u")
    t.type("192.0.2.1")
    t.keys("Enter", "Enter", "Enter")
    # Host name and NTP.
    t.wait_for("3/8: Host name and time")
    t.type("bad_host")
    t.keys("Enter")
    t.type("ntp_1")
    t.keys("Enter", "Enter")
    t.wait_for(
        "network.hostname: expected a host name of letters, digits and '-' (at most 63 per label) "
        "like gw-01, got 'bad_host'"
    )
    t.wait_for(
        "network.ntp: expected comma-separated NTP server names or addresses like ntp.example.com, "
        "got 'ntp_1'"
    )
    t.keys("C-u")
    t.type("gw-2")
    t.keys("Enter", "C-u", "Enter", "Enter")
    # Proxy: the message masks the password.
    t.wait_for("4/8: Outbound proxy")
    t.type("http://bob:hunter2@proxy")
    t.keys("Enter", "Enter")
    t.wait_for(
        "proxy.url: expected an http:// proxy URL with a port like http://proxy.example.com:3128, "
        "got 'http://bob:********@proxy'"
    )
    t.keys("C-u", "Enter", "Enter")
    # Plane: empty, then not a token.
    t.wait_for("5/8: Management plane")
    t.keys("Enter", "Enter", "Enter")
    t.wait_for("gateway.join_token: required: paste the token from the plane")
    t.type("abc")
    t.keys("Enter", "Enter", "Enter")
    t.wait_for("gateway.join_token: must start with 'GWJ1.'")
    t.keys("C-u")
    t.type(fake_token("https://127.0.0.1:9"))
    t.keys("Enter")
    t.type("https://other.example.com")
    t.keys("Enter", "Enter")
    t.wait_for(
        "gateway.plane_url: https://other.example.com does not match the join token's https://127.0.0.1:9 "
        "(leave it empty to use the token's)"
    )
    t.keys("C-u", "Enter", "Enter")
    # Admin: a bad key and a short password, then two different passwords.
    t.wait_for("6/8: Admin access")
    t.type("ssh-rsa AAAA")
    t.keys("Enter")
    t.type("short")
    t.keys("Enter")
    t.type("short")
    t.keys("Enter", "Enter")
    t.wait_for(
        "admin.ssh_key: the key data does not match its type 'ssh-rsa' (a truncated or mangled paste?)"
    )
    t.wait_for("admin.password: use at least 8 characters")
    t.keys("C-u", "Enter", "C-u")
    t.type("longpassword1")
    t.keys("Enter", "C-u")
    t.type("longpassword2")
    t.keys("Enter", "Enter")
    t.wait_for("admin.password: the two passwords differ")
    t.keys("C-u")
    t.type("longpassword1")
    t.keys("Enter", "Enter")
    # Review, Esc goes back one screen.
    t.wait_for("7/8: Review")
    t.keys("Escape")
    t.wait_for("6/8: Admin access")
    t.keys("Enter", "Enter", "Enter", "Enter")
    screen = t.wait_for("7/8: Review")
    assert "Address/prefix:         192.0.2.10/24" in screen
    t.keys("Enter")
    # Nobody confirms: after 2 s the network is rolled back and the operator is back on the Network screen.
    t.wait_for("Keep these network settings?")
    t.wait_for("Network settings were rolled back; check them and try again.", timeout=15)
    assert not (root / "etc/systemd/network/10-firstboot.network").exists()
    state = json.loads((root / "var/lib/firstboot/state.json").read_text())
    assert "network" not in state["completed"]
    assert not (root / "var/lib/firstboot/done").exists()


def test_answers_file_drives_it_unattended(tmp_path: Path, tmuxes: list[Tmux]) -> None:
    root = make_root(tmp_path / "root")
    answers = tmp_path / "answers.yaml"
    answers.write_text(
        yaml.safe_dump(
            {
                "network.mode": "static",
                "network.address": "192.0.2.10/24",
                "network.gateway": "192.0.2.1",
                "network.hostname": "gw-ans",
                "gateway.join_token": fake_token(),
                "admin.password": "longpassword",
                "confirm_network": True,
            }
        )
    )
    t = start(tmuxes, tmp_path, "--root", str(root), "wizard", "--dry-run", "--answers", str(answers))
    assert t.exit_code(timeout=60) == 0
    assert (root / "etc/hostname").read_text() == "gw-ans\n"
    assert "Address=192.0.2.10/24" in (root / "etc/systemd/network/10-firstboot.network").read_text()

    answers.write_text(yaml.safe_dump({"network.mode": "static", "network.address": "10.0.0.1"}))
    t = start(
        tmuxes,
        tmp_path,
        "--root",
        str(make_root(tmp_path / "r2")),
        "wizard",
        "--dry-run",
        "--answers",
        str(answers),
    )
    assert t.exit_code(timeout=60) == 1
    assert t.err_file.read_text() == (
        "error: answers file: network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, "
        "got '10.0.0.1'\n"
    )

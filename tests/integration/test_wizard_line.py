"""Line mode through pexpect, as on a serial console: bad input on every screen, rollback, auto-selection."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pexpect

from tests.integration.wizard_helpers import env, fake_token, make_root


def spawn(*args: str, term: str = "vt220") -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "firstboot", *args],
        env=env(TERM=term),
        encoding="utf-8",
        timeout=20,
        dimensions=(24, 80),
    )
    return child


def ask(child: pexpect.spawn, prompt: str, answer: str) -> None:
    child.expect_exact(prompt)
    child.sendline(answer)


def test_line_mode_bad_input_on_every_screen_then_apply(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    child = spawn("--root", str(root), "wizard", "--dry-run", "--line", "--revert-after", "30")
    try:
        child.expect_exact("== Network ==")
        ask(child, "Network mode (dhcp or static) [dhcp]: ", "static")
        ask(child, "Address/prefix (static only, e.g. 192.0.2.10/24) []: ", "10.0.0.1")
        ask(child, "Gateway (static only, e.g. 192.0.2.1) []: ", "192.0.2.1")
        ask(child, "DNS servers (comma-separated, e.g. 192.0.2.53) []: ", "")
        child.expect_exact(
            "  ! network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, "
            "got '10.0.0.1'"
        )
        ask(child, "Address/prefix (static only, e.g. 192.0.2.10/24) [10.0.0.1]: ", "192.0.2.10/24")

        child.expect_exact("== Host name and time ==")
        ask(child, "Host name (e.g. gw-01) []: ", "bad_host")
        ask(child, "NTP servers (comma-separated; empty = DHCP/distribution default) []: ", "")
        child.expect_exact("  ! network.hostname: expected a host name of letters, digits and '-'")
        ask(child, "Host name (e.g. gw-01) [bad_host]: ", "gw-line")

        child.expect_exact("== Outbound proxy ==")
        ask(child, "Outbound proxy (http://[user:pass@]host:port; empty = direct) []: ", "proxy:3128")
        child.expect_exact(
            "  ! proxy.url: expected an http:// proxy URL with a port like http://proxy.example.com:3128, "
            "got 'proxy:3128'"
        )
        ask(child, "Outbound proxy (http://[user:pass@]host:port; empty = direct) [proxy:3128]: ", "-")

        child.expect_exact("== Management plane ==")
        ask(child, "Join token (GWJ1.... from the management plane) []: ", "abc")
        child.expect_exact("  Join token: ******** (3 characters)")
        child.expect_exact("  Plane: (paste the join token from the management plane)")
        ask(child, "Plane URL (empty = taken from the join token) []: ", "https://other.example.com")
        child.expect_exact("  ! gateway.join_token: must start with 'GWJ1.'")
        # Only the bad field is asked again; the cross check then catches the mismatched URL.
        ask(child, "Join token (GWJ1.... from the management plane) [********]: ", fake_token())
        child.expect_exact("  Plane: https://127.0.0.1:9   CA sha256:abababababababab...")
        child.expect_exact(
            "  ! gateway.plane_url: https://other.example.com does not match the join token's "
            "https://127.0.0.1:9 (leave it empty to use the token's)"
        )
        ask(child, "Plane URL (empty = taken from the join token) [https://other.example.com]: ", "-")

        child.expect_exact("== Admin access ==")
        ask(child, "Admin SSH key (enables SSH for user admin; empty = SSH off) []: ", "")
        ask(child, "Console password (at least 8 characters; empty = keep/none) []: ", "short")
        ask(child, "Repeat password []: ", "short")
        child.expect_exact("  ! admin.password: use at least 8 characters")
        ask(child, "Console password (at least 8 characters; empty = keep/none) []: ", "longpassword")
        ask(child, "Repeat password []: ", "longpassword")

        child.expect_exact("== Review ==")
        # In the table's order (gwcore.deploy.SETTINGS): the plane first.
        child.expect_exact("  Join token             GWJ1.********")
        child.expect_exact("  Address/prefix         192.0.2.10/24")
        ask(child, "Apply these settings? [y]es / [b]ack / [r]estart: ", "y")
        child.expect_exact("The plane is NOT reachable: plane 127.0.0.1 unreachable")
        ask(child, "Keep these network settings? [y/n] (reverting in 30 s) ", "y")
        child.expect_exact("  Registration with the management plane: done")
        child.expect_exact("First boot complete. The gateway is starting.")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "longpassword" not in child.before
    assert (root / "etc/hostname").read_text() == "gw-line\n"
    assert (root / "var/lib/firstboot/done").exists()


def test_line_mode_takes_the_token_blind_and_shows_what_it_carries(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    token = fake_token("https://127.0.0.1:9")
    child = spawn("--root", str(root), "wizard", "--dry-run", "--line")
    seen = io.StringIO()
    child.logfile_read = seen
    try:
        for prompt in ("Network mode", "DNS servers", "Host name", "NTP servers", "Outbound proxy"):
            child.expect_exact(prompt)
            child.expect(r"\]: ")
            child.sendline("")
        ask(child, "Join token (GWJ1.... from the management plane) []: ", token)
        # Before the next question: the token masked, then the plane and CA it carries.
        child.expect_exact(f"  Join token: GWJ1.******** ({len(token)} characters)")
        child.expect_exact("  Plane: https://127.0.0.1:9   CA sha256:abababababababab...")
        ask(child, "Plane URL (empty = taken from the join token) []: ", "")
        for prompt in ("Admin SSH key", "Console password", "Repeat password"):
            child.expect_exact(prompt)
            child.expect(r"\]: ")
            child.sendline("")
        child.expect_exact("  Plane CA (pinned)      sha256:" + "ab" * 32 + "   (join-token)")
        # Back to the start: the kept token is offered masked.
        ask(child, "[r]estart: ", "r")
        for prompt in ("Network mode", "DNS servers", "Host name", "NTP servers", "Outbound proxy"):
            child.expect_exact(prompt)
            child.expect(r"\]: ")
            child.sendline("")
        ask(child, "Join token (GWJ1.... from the management plane) [GWJ1.********]: ", "")
        child.expect_exact("Plane URL")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert token[5:25] not in seen.getvalue()


def test_answers_file_shows_the_token_masked(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    token = fake_token("https://127.0.0.1:9")
    answers = tmp_path / "answers.yaml"
    keys = ("network.mode", "network.dns", "network.hostname", "network.ntp", "proxy.url")
    keys += ("gateway.plane_url", "admin.ssh_key", "admin.password")
    answers.write_text("".join(f"{k}: ''\n" for k in keys) + f"gateway.join_token: {token}\n")
    child = spawn("--root", str(root), "wizard", "--dry-run", "--line", "--answers", str(answers))
    try:
        child.expect_exact("from the management plane) []: GWJ1.********   (from answers)")
        child.expect_exact("First boot complete.")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert token[5:25] not in (child.before or "")
    assert child.exitstatus == 0


def test_line_mode_rolls_back_unconfirmed_network(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    child = spawn("--root", str(root), "wizard", "--dry-run", "--line", "--revert-after", "1")
    try:
        for prompt in ("Network mode", "DNS servers", "Host name", "NTP servers", "Outbound proxy"):
            child.expect_exact(prompt)
            child.expect(r"\]: ")
            child.sendline("")
        ask(child, "Join token (GWJ1.... from the management plane) []: ", fake_token())
        ask(child, "Plane URL (empty = taken from the join token) []: ", "")
        for prompt in ("Admin SSH key", "Console password", "Repeat password"):
            child.expect_exact(prompt)
            child.expect(r"\]: ")
            child.sendline("")
        ask(child, "[r]estart: ", "y")
        child.expect_exact("(reverting in 1 s)")
        child.expect_exact("Network settings rolled back.")
        child.expect_exact("== Network ==")
        assert not (root / "etc/systemd/network/10-firstboot.network").exists()
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 1
    assert "error: console input closed before the wizard finished" in (child.before or "")


def test_dumb_terminal_gets_line_mode(tmp_path: Path) -> None:
    child = spawn("--root", str(make_root(tmp_path / "root")), "wizard", "--dry-run", term="dumb")
    try:
        child.expect_exact("Network mode (dhcp or static) [dhcp]: ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 1


def test_steps_aside_when_the_other_console_finishes(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    child = spawn("--root", str(root), "wizard", "--line")
    try:
        child.expect_exact("Network mode (dhcp or static) [dhcp]: ")
        (root / "var/lib/firstboot").mkdir(parents=True)
        (root / "var/lib/firstboot/done").write_text("tty1\n")
        child.expect_exact("First boot was completed on another console.")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0

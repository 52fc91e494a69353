"""Registration from the wizard and from `firstboot run` against a real `mgmtplane serve` on loopback."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import yaml

from tests.integration.plane_helpers import Plane, register, running_plane
from tests.integration.wizard_helpers import Tmux, env, make_root, with_ca_hash


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path / "plane") as p:
        yield p


def line_wizard(root: Path, token: str) -> pexpect.spawn:
    """A line-mode wizard (not dry-run: it really registers) answered up to the Apply screen."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "firstboot", "--root", str(root), "wizard", "--line", "--revert-after", "30"],
        env=env(TERM="vt220"),
        encoding="utf-8",
        timeout=30,
    )
    # DHCP (the static-only fields are skipped), no DNS, host name, NTP or proxy; the token; no admin access.
    for prompt in ("Network mode", "DNS servers", "Host name", "NTP servers", "Outbound proxy"):
        child.expect_exact(prompt)
        child.expect(r"\]: ")
        child.sendline("")
    child.expect_exact("Join token")
    child.expect(r"\]: ")
    child.sendline(token)
    child.expect_exact("Plane URL")
    child.expect(r"\]: ")
    child.sendline("")
    for prompt in ("Admin SSH key", "Console password", "Repeat password"):
        child.expect_exact(prompt)
        child.expect(r"\]: ")
        child.sendline("")
    child.expect_exact("[r]estart: ")
    child.sendline("y")
    child.expect_exact("  reachable")
    child.expect_exact("Keep these network settings?")
    child.sendline("y")
    return child


def test_wizard_registers_with_a_real_plane(plane: Plane, tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    child = line_wizard(root, plane.token())
    try:
        child.expect_exact("  Registration with the management plane: done")
        child.expect_exact("First boot complete.")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    state = root / "var/lib/gateway"
    identity = json.loads((state / "identity.json").read_text())
    assert identity["plane_url"] == plane.url
    assert (state / "key.pem").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    assert yaml.safe_load((root / "etc/gateway/gateway.yaml").read_text())["plane_url"] == plane.url
    assert (root / "var/lib/firstboot/done").exists()


def test_ca_hash_mismatch_is_refused_in_words(plane: Plane, tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    child = line_wizard(root, with_ca_hash(plane.token(), "sha256:" + "0" * 64))
    try:
        child.expect_exact("  Registration with the management plane: FAILED")
        child.expect_exact("FAILED: REFUSED: the plane's CA does not match the hash in the join token.")
        child.expect_exact("What to do: Do not continue.")
        child.expect_exact("== Management plane ==")  # sent back to paste another token
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert not (root / "var/lib/gateway/identity.json").exists()
    assert "interception" in (root / "var/lib/firstboot/last-error").read_text()
    assert not (root / "var/lib/firstboot/done").exists()


def test_used_token_is_explained(plane: Plane, tmp_path: Path) -> None:
    token = plane.token()
    assert register(token, tmp_path / "other-gateway").returncode == 0
    root = make_root(tmp_path / "root")
    child = line_wizard(root, token)
    try:
        child.expect_exact(
            "FAILED: Registration with the management plane: "
            "join token was already used; create a new one with 'mgmtplane token create'"
        )
        child.expect_exact("What to do: Create a new join token on the plane and paste it.")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()


def test_tui_answers_register_with_a_real_plane(plane: Plane, tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump({"gateway.join_token": plane.token(), "network.hostname": "gw-tui"}))
    t = Tmux(tmp_path, ["--root", str(root), "wizard", "--answers", str(answers)])
    try:
        assert t.exit_code(timeout=60) == 0, t.err_file.read_text()
    finally:
        t.close()
    assert json.loads((root / "var/lib/gateway/identity.json").read_text())["plane_url"] == plane.url


def test_run_from_credentials_registers_once(plane: Plane, tmp_path: Path) -> None:
    import subprocess

    root = make_root(tmp_path / "root")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gateway.join_token").write_text(plane.token() + "\n")
    (creds / "network.hostname").write_text("gw-seeded")
    cmd = [sys.executable, "-m", "firstboot", "--root", str(root), "run"]
    first = subprocess.run(
        cmd,
        env=env(CREDENTIALS_DIRECTORY=str(creds)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    assert "[ OK ] Registration with the management plane" in first.stdout
    gid = json.loads((root / "var/lib/gateway/identity.json").read_text())["gateway_id"]
    # A second boot does nothing; deleting the done marker (a power cut before it) does not re-register.
    (root / "var/lib/firstboot/done").unlink()
    again = subprocess.run(
        cmd,
        env=env(CREDENTIALS_DIRECTORY=str(creds)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads((root / "var/lib/gateway/identity.json").read_text())["gateway_id"] == gid


def test_run_with_wrong_ca_hash_fails_with_what_to_do(plane: Plane, tmp_path: Path) -> None:
    import subprocess

    root = make_root(tmp_path / "root")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gateway.join_token").write_text(with_ca_hash(plane.token(), "sha256:" + "1" * 64))
    proc = subprocess.run(
        [sys.executable, "-m", "firstboot", "--root", str(root), "run"],
        env=env(CREDENTIALS_DIRECTORY=str(creds)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "[FAIL] Registration with the management plane" in proc.stdout
    assert proc.stderr.count("\n") == 1
    assert "possible interception, refusing to register" in proc.stderr
    assert "what to do: fix the setting on the console wizard" in proc.stderr

"""The plane probe through a real CONNECT proxy, and the status console in a terminal (tmux and pexpect)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.integration.plane_helpers import Plane, running_plane
from tests.integration.wizard_helpers import Tmux, env, make_root
from tests.integration.wizard_helpers import fake_token as token_for


class ConnectProxy:
    """A tiny loopback HTTP CONNECT proxy that answers every request with a fixed status and closes."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(4096).decode())
                reason = {200: "Connection established", 407: "Proxy Authentication Required"}.get(
                    self.status, "Bad"
                )
                conn.sendall(f"HTTP/1.1 {self.status} {reason}\r\n\r\n".encode())

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_probe_direct_and_through_proxy(listener: int) -> None:
    from firstboot.console import probe_plane

    assert probe_plane(f"https://127.0.0.1:{listener}") is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert probe_plane(f"https://127.0.0.1:{closed}") == (
        "plane 127.0.0.1 unreachable: Connection refused (check the address, gateway and firewall)"
    )
    ok = ConnectProxy(200)
    auth = ConnectProxy(407)
    try:
        assert probe_plane("https://plane.example.com:8443", f"http://bob:pw@127.0.0.1:{ok.port}") is None
        assert ok.requests[0].startswith("CONNECT plane.example.com:8443 HTTP/1.1\r\n")
        assert "Proxy-Authorization: Basic Ym9iOnB3\r\n" in ok.requests[0]
        assert probe_plane("https://plane.example.com:8443", f"http://127.0.0.1:{auth.port}") == (
            "proxy 127.0.0.1 requires authentication: give user:password in the proxy URL"
        )
    finally:
        ok.close()
        auth.close()


def configured_root(tmp_path: Path, plane_url: str = "https://127.0.0.1:9") -> Path:
    """A --root tree after a (simulated-registration) first boot, with a gateway status report."""
    import subprocess

    root = make_root(tmp_path / "root")
    (root / "etc/os-release").write_text("IMAGE_VERSION=9.9.9\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gateway.join_token").write_text(token_for(plane_url))
    (creds / "network.mode").write_text("static")
    (creds / "network.address").write_text("192.0.2.10/24")
    (creds / "network.gateway").write_text("192.0.2.1")
    (creds / "network.hostname").write_text("gw-status")
    proc = subprocess.run(
        [sys.executable, "-m", "firstboot", "--root", str(root), "run", "--dry-run"],
        env=env(CREDENTIALS_DIRECTORY=str(creds)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (root / "run/gateway").mkdir(parents=True)
    (root / "run/gateway/status.json").write_text(
        json.dumps({"state": "connected", "last_error": None, "targets": 2})
    )
    return root


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_status_console_bundle_and_network_rollback(tmp_path: Path) -> None:
    root = configured_root(tmp_path)
    t = Tmux(tmp_path, ["--root", str(root), "status", "--revert-after", "2"], width=80, height=25)
    try:
        screen = t.wait_for("Tunnel:       connected")
        assert "Gateway appliance 9.9.9" in screen and "Targets:      2" in screen
        assert "Plane:        https://127.0.0.1:9" in screen
        t.keys("Down", "Down", "Enter")  # Create a support bundle
        t.wait_for("Support bundle written to")
        assert len(list((root / "var/lib/gateway-support").glob("support-*.tar.gz"))) == 1
        t.keys("Enter")  # Reconfigure network (focus is back on the first item)
        t.wait_for("Network mode:")
        t.keys("Left", "Enter", "Enter", "Enter", "Enter", "Enter")  # switch to DHCP, Next
        t.wait_for("Keep these network settings?")
        assert "DHCP=yes" in (root / "etc/systemd/network/10-firstboot.network").read_text()
        t.wait_for("Network settings rolled back.", timeout=15)
        assert "Address=192.0.2.10/24" in (root / "etc/systemd/network/10-firstboot.network").read_text()
        t.keys("Down", "Down", "Down", "Enter")  # Reboot asks first
        t.wait_for("Reboot the appliance now?")
        t.keys("Enter")  # No (the default)
        t.wait_for("< Reconfigure network >")
    finally:
        t.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path / "plane") as p:
        yield p


def test_status_line_mode_reregisters_with_a_real_plane(plane: Plane, tmp_path: Path) -> None:
    root = configured_root(tmp_path, plane.url)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "firstboot", "--root", str(root), "status"],
        env=env(TERM="dumb"),
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect_exact("Tunnel:       connected")
        child.expect_exact("Choice: ")
        child.sendline("2")
        child.expect_exact("New join token: ")
        token = plane.token()
        child.sendline(token)
        # Typed blind, like the wizard's: the terminal echoes nothing of it, and what arrived is
        # said masked, with its length, so a paste that went wrong is noticed.
        child.expect_exact(f"Join token: GWJ1.******** ({len(token)} characters)")
        assert token[5:][-24:] not in child.before
        child.expect(r"Registered as gateway ([0-9a-f-]{36})")
        assert token[5:][-24:] not in child.before
        gid = child.match.group(1)
        child.expect_exact(f"Gateway id:   {gid}")
        child.expect_exact("Choice: ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    identity = json.loads((root / "var/lib/gateway/identity.json").read_text())
    assert identity == {**identity, "gateway_id": gid, "plane_url": plane.url}
    assert not (root / "var/lib/gateway.new").exists() and not (root / "var/lib/gateway.old").exists()


def test_status_line_mode_network_keep(tmp_path: Path) -> None:
    root = configured_root(tmp_path)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "firstboot", "--root", str(root), "status", "--line", "--revert-after", "20"],
        env=env(TERM="xterm"),
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect_exact("Choice: ")
        child.sendline("1")
        child.expect_exact("Network mode (dhcp or static) [static]: ")
        child.sendline("")
        child.expect_exact("Address/prefix (static only, e.g. 192.0.2.10/24) [192.0.2.10/24]: ")
        child.sendline("192.0.2.20/24")
        child.expect_exact("Gateway (static only, e.g. 192.0.2.1) [192.0.2.1]: ")
        child.sendline("")
        child.expect_exact("DNS servers (comma-separated, e.g. 192.0.2.53) []: ")
        child.sendline("192.0.2.53")
        child.expect_exact("The plane is NOT reachable: plane 127.0.0.1 unreachable")
        child.expect_exact("Keep these network settings? [y/n] (reverting in 20 s) ")
        child.sendline("y")
        child.expect_exact("Kept.")
        child.expect_exact("Choice: ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    network = (root / "etc/systemd/network/10-firstboot.network").read_text()
    assert "Address=192.0.2.20/24\nGateway=192.0.2.1\nDNS=192.0.2.53\n" in network
    saved = json.loads((root / "var/lib/firstboot/state.json").read_text())["settings"]
    assert saved["network.address"] == "192.0.2.20/24"

"""`firstboot register` through a real tinyproxy (HTTP CONNECT), with and without proxy auth."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firstboot.register.client import load_identity
from gwcore.enrol import encode_token
from tests.integration.plane_helpers import Plane, free_port, register, running_plane

TINYPROXY = shutil.which("tinyproxy") or "/usr/sbin/tinyproxy"
if not Path(TINYPROXY).exists() and Path("/usr/bin/tinyproxy").exists():
    TINYPROXY = "/usr/bin/tinyproxy"
pytestmark = pytest.mark.skipif(
    not Path(TINYPROXY).exists(), reason="tinyproxy is not installed (make setup)"
)


class Proxy:
    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"


@contextlib.contextmanager
def tinyproxy(tmp_path: Path, basic_auth: tuple[str, str] | None = None) -> Iterator[Proxy]:
    """Our own tinyproxy in the foreground on a loopback port, stopped by its PID."""
    port = free_port()
    log = tmp_path / f"tinyproxy-{port}.log"
    conf = tmp_path / f"tinyproxy-{port}.conf"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "LogLevel Connect",
        "MaxClients 20",
        "Allow 127.0.0.1",
    ]
    # No ConnectPort lines: CONNECT to any port is allowed (the plane listens on a random one).
    if basic_auth:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    conf.write_text("\n".join(lines) + "\n")
    with log.open("wb") as out:
        proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tinyproxy did not start: {log.read_text()}") from None
                time.sleep(0.05)
        yield Proxy(port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path / "plane") as running:
        yield running


def test_register_through_proxy(plane: Plane, tmp_path: Path) -> None:
    with tinyproxy(tmp_path) as proxy:
        result = register(plane.token(), tmp_path / "gw", "--proxy", proxy.url())
        log = proxy.log.read_text()
    assert result.returncode == 0, result.stderr
    assert load_identity(tmp_path / "gw") is not None
    # Both exchanges (GET /v1/ca, POST /v1/register) went through the proxy as CONNECT tunnels.
    assert log.count(f"CONNECT 127.0.0.1:{plane.port}") >= 2


def test_proxy_auth_required(plane: Plane, tmp_path: Path) -> None:
    token = plane.token()
    with tinyproxy(tmp_path, basic_auth=("alice", "s3cret")) as proxy:
        missing = register(token, tmp_path / "gw", "--proxy", proxy.url())
        wrong = register(token, tmp_path / "gw", "--proxy", proxy.url("alice:nope"))
        right = register(token, tmp_path / "gw", "--proxy", proxy.url("alice:s3cret"))
    assert missing.returncode == 1
    assert f"proxy http://127.0.0.1:{proxy.port} requires authentication (HTTP 407)" in missing.stderr
    assert wrong.returncode == 1
    assert f"proxy http://127.0.0.1:{proxy.port} rejected the proxy credentials" in wrong.stderr
    assert "nope" not in wrong.stderr and "Traceback" not in wrong.stderr + missing.stderr
    assert right.returncode == 0, right.stderr
    assert load_identity(tmp_path / "gw") is not None


def test_proxy_unreachable(plane: Plane, tmp_path: Path) -> None:
    result = register(plane.token(), tmp_path / "gw", "--proxy", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach proxy http://127.0.0.1:" in result.stderr


def test_proxy_cannot_reach_plane(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane") as plane:
        token = plane.token()
    # The plane is gone: the proxy answers the CONNECT with an error status.
    with tinyproxy(tmp_path) as proxy:
        result = register(token, tmp_path / "gw", "--proxy", proxy.url(), "--timeout", "10")
    assert result.returncode == 1
    assert f"proxy http://127.0.0.1:{proxy.port} refused to connect to https://127.0.0.1:" in result.stderr


def test_bad_proxy_url(tmp_path: Path) -> None:
    token = encode_token("https://127.0.0.1:1", "sha256:" + "0" * 64, "s", 9_999_999_999)
    result = register(token, tmp_path / "gw", "--proxy", "socks5://127.0.0.1:1080")
    assert result.returncode == 1 and "--proxy:" in result.stderr

"""Helpers for plane tests: run `mgmtplane serve` as a real subprocess and the CLIs around it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"mgmtplane: listening on (https://\S+)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The venv may not carry an editable install; the checkout is the code under test.
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    return env


def run(*args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m <args>` with the checkout on the path; captures output."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


def _socket_inodes_to(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def open_sockets_to(port: int) -> int:
    """How many of this process's sockets still talk to `port` on loopback."""
    inodes = _socket_inodes_to(port)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
    return count


async def wait_sockets_closed(port: int, timeout: float = 15.0) -> None:
    """Let closing TLS connections finish their close_notify exchange before the test's loop ends.

    Otherwise a transport still closing when the loop stops is reported as leaked later, in
    whichever test the garbage collector happens to run.
    """
    deadline = time.monotonic() + timeout
    while open_sockets_to(port) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def free_port() -> int:
    """A loopback port that was free a moment ago (for restarts on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Plane:
    """A running `mgmtplane serve` subprocess."""

    def __init__(
        self,
        state_dir: Path,
        listen: str = "127.0.0.1:0",
        advertise_url: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.state_dir = state_dir
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        cmd = [sys.executable, "-m", "mgmtplane", "serve", "--listen", listen, "--state-dir", str(state_dir)]
        if advertise_url:
            cmd += ["--advertise-url", advertise_url]
        cmd += list(extra)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.url = self._wait_ready(timeout=30)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                match = _LISTENING.search(line)
                if match:
                    return match.group(1)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"plane did not start: {self.log_path.read_text()[-2000:]}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def token(self, ttl: str = "1h", url: str | None = None) -> str:
        """A fresh join token from `mgmtplane token create`."""
        args = ["mgmtplane", "token", "create", "--state-dir", str(self.state_dir), "--ttl", ttl]
        if url:
            args += ["--url", url]
        result = run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def admin_token(self) -> str:
        result = run("mgmtplane", "admin-token", "--state-dir", str(self.state_dir))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL only if it hangs); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running_plane(state_dir: Path, **kwargs: Any) -> Iterator[Plane]:
    """A plane for the duration of a with-block."""
    plane = Plane(state_dir, **kwargs)
    try:
        yield plane
    finally:
        plane.stop()


def register(token: str, state_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m firstboot.register` (the same code as `firstboot register`)."""
    return run("firstboot.register", "--token", token, "--state-dir", str(state_dir), *extra)

"""Shared by the update agent's integration tests: the root helper as systemd runs it."""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .tunnel_support import REPO


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport hashlib, json, sys\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@dataclass
class Helper:
    """The root helper as systemd runs it: a listening unix socket, one process per connection."""

    root: Path
    updates: Path
    socket_path: Path
    calls: Path
    status: Path
    install_exit: int = 0
    status_delay: float = 0.0  # the updater's status under emulation takes seconds
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self) -> list[str]:
        record = f"open({str(self.calls)!r}, 'a').write(json.dumps([sys.argv[1:], digest]) + '\\n')"
        refused = "f'{sys.argv[1]}: refused: signature verification failed'"
        install = _script(
            self.root / "install",
            "digest = hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest()\n"
            f"{record}\n"
            f"code = {self.install_exit}\n"
            f"print('installed into slot B' if code == 0 else {refused}, file=sys.stderr)\n"
            "sys.exit(code)",
        )
        reboot = _script(
            self.root / "reboot", f"open({str(self.calls)!r}, 'a').write(json.dumps(['reboot']) + '\\n')"
        )
        status = _script(
            self.root / "status",
            f"import time; time.sleep({self.status_delay}); print(open({str(self.status)!r}).read())",
        )
        return [sys.executable, "-m", "updater", "serve-request", "--updates-dir", str(self.updates),
                "--incoming-dir", str(self.root / "incoming"), "--install-command", install,
                "--reboot-command", reboot, "--status-command", status]  # fmt: skip

    def start(self) -> None:
        argv = self.argv()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.socket_path))
        self._sock.listen(4)

        def accept() -> None:
            assert self._sock is not None
            while True:
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    return
                with conn:
                    proc = subprocess.Popen(argv, stdin=conn.fileno(), stdout=conn.fileno(), cwd=REPO)
                    self.procs.append(proc)

        self._thread = threading.Thread(target=accept, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)

    def recorded(self) -> list[list[object]]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]


@pytest.fixture(name="helper")
def helper_fixture(tmp_path: Path) -> Iterator[Helper]:
    updates = tmp_path / "updates"
    updates.mkdir(mode=0o700)
    status = tmp_path / "status.json"
    # The updater's record after a rollback (python3 -m updater status, as on the appliance).
    last = {"version": "0.1.2", "slot": "B", "result": "rolled-back", "reason": "gateway.service failed"}
    status.write_text(json.dumps({"booted": "A", "version": "0.1.0", "state": {"last": last}}))
    h = Helper(tmp_path, updates, tmp_path / "update.sock", tmp_path / "calls.jsonl", status)
    h.start()
    yield h
    h.stop()

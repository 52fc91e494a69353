"""Helpers to drive `firstboot wizard` in a real terminal: tmux for the urwid view, pexpect for lines."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    """The environment for a firstboot subprocess: the checkout on the path, no proxies, no credentials."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "CREDENTIALS_DIRECTORY"):
        out.pop(var, None)
    out.update(extra)
    return out


def make_root(path: Path) -> Path:
    """A --root tree with what the image provides (an admin entry in /etc/shadow)."""
    (path / "etc").mkdir(parents=True)
    (path / "etc/shadow").write_text("root:*:20000:0:99999:7:::\nadmin:!:20000:0:99999:7:::\n")
    return path


def fake_token(url: str = "https://127.0.0.1:9", ca_hash: str = "sha256:" + "ab" * 32) -> str:
    """A well-formed token (for screens that only parse it)."""
    payload = {"u": url, "h": ca_hash, "s": "s3cret", "e": int(time.time()) + 3600}
    return "GWJ1." + base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def with_ca_hash(token: str, ca_hash: str) -> str:
    """The same token pinning another CA hash (what an interceptor's token would look like)."""
    body = token[5:]
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["h"] = ca_hash
    return "GWJ1." + base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class Tmux:
    """One wizard in a private tmux server (its own socket), read back as rendered screen text."""

    def __init__(
        self, tmp_path: Path, args: list[str], *, width: int = 200, height: int = 40, **extra: str
    ) -> None:
        self.socket = f"fbtest-{uuid.uuid4().hex[:8]}"
        self.rc_file = tmp_path / f"{self.socket}.rc"
        self.err_file = tmp_path / f"{self.socket}.err"
        cmd = shlex.join([sys.executable, "-m", "firstboot", *args])
        err, rc = shlex.quote(str(self.err_file)), shlex.quote(str(self.rc_file))
        # The pane stays open after the wizard exits so its last screen can still be read.
        shell = f"{cmd} 2>{err}; echo $? > {rc}; sleep 600"
        envs: list[str] = []
        for key, value in env(TERM="xterm-256color", **extra).items():
            if key in ("PYTHONPATH", "TERM", "PATH", "HOME", "LANG") or key in extra:
                envs += ["-e", f"{key}={value}"]
        self._tmux("new-session", "-d", "-x", str(width), "-y", str(height), *envs, shell)

    def _tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return proc.stdout

    def screen(self) -> str:
        """The visible screen as text."""
        return self._tmux("capture-pane", "-p")

    def wait_for(self, text: str, timeout: float = 20) -> str:
        """Wait until text is on screen; fail with the screen shown."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                err = self.err_file.read_text() if self.err_file.exists() else ""
                raise AssertionError(
                    f"{text!r} not on screen after {timeout} s:\n{screen}\nstderr:\n{err[-2000:]}"
                )
            time.sleep(0.1)

    def keys(self, *keys: str, pause: float = 0.15) -> None:
        """Press keys (tmux names: Enter, Tab, BTab, Escape, C-u, Right ...)."""
        for key in keys:
            self._tmux("send-keys", key)
            time.sleep(pause)

    def type(self, text: str) -> None:
        """Type literal text into the focused field."""
        self._tmux("send-keys", "-l", text)
        time.sleep(0.15)

    def exit_code(self, timeout: float = 30) -> int:
        """Wait for the wizard to exit."""
        deadline = time.monotonic() + timeout
        while not self.rc_file.exists() or not self.rc_file.read_text().strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"wizard still running after {timeout} s:\n{self.screen()}")
            time.sleep(0.1)
        return int(self.rc_file.read_text())

    def close(self) -> None:
        """Stop this test's tmux server (only ours: it has its own socket)."""
        self._tmux("kill-server")

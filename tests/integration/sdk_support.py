"""The real chain for SDK tests: `mgmtplane serve` -> enrolled `gateway run` -> `mgmtplane forward`.

Everything is a real process on loopback with real TLS: the plane (its own CA and admin token),
a gateway enrolled with a join token and running the shipped policies, and one forward per target.
Simulators are started per test on ports chosen when the chain is built, so targets.yaml is
written once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.filter.policy import SHIPPED_POLICIES
from tests.integration import plane_helpers

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"

_FORWARDING = re.compile(r"mgmtplane: forwarding (http://\S+)")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> Path:
    """A binary that `make setup` builds into .tools/bin (vcsim, govc)."""
    path = TOOLS / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is missing: run 'make setup' (scripts/build-tools.sh builds it)")
    return path


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    """Signal a process we started, wait (SIGKILL if it hangs) and return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def call_url(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain-HTTP call (to a forward); error statuses are returned, and every response is closed."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@dataclass
class Target:
    """One entry of the gateway's targets.yaml."""

    name: str
    kind: str
    port: int = field(default_factory=free_port)
    path: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


@dataclass
class Forward:
    """A running `mgmtplane forward`; `url` is its base URL."""

    proc: subprocess.Popen[str]
    url: str

    def stop(self) -> int:
        code = stop(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code


@dataclass
class Chain:
    """A plane with one enrolled, connected gateway that serves `targets`."""

    root: Path
    plane: plane_helpers.Plane
    gateway_id: str
    gateway: subprocess.Popen[bytes]
    targets: dict[str, Target]
    log_path: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.plane.state_dir / "ca.pem"))

    def plane_get(self, path: str) -> tuple[int, bytes]:
        """GET a plane admin URL with the admin token."""
        req = urllib.request.Request(
            self.plane.url + path, headers={"Authorization": f"Bearer {self.plane.admin_token()}"}
        )
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.plane_get(f"/v1/gateways/{self.gateway_id}")
            if status == 200 and json.loads(body).get("connected"):
                return
            if self.gateway.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not connect: {self.log_path.read_text()[-3000:]}")

    @contextlib.contextmanager
    def forward(self, target: str, *extra: str) -> Iterator[Forward]:
        """`mgmtplane forward GATEWAY TARGET --listen 127.0.0.1:0` for the duration of a with-block."""
        proc = start_forward(self.plane.state_dir, self.gateway_id, target, *extra)
        fwd = Forward(proc, read_forward_url(proc))
        try:
            yield fwd
        finally:
            code = fwd.stop()
            assert code == 0, f"forward exited with {code}"


def start_forward(state_dir: Path, gateway: str, target: str, *extra: str) -> subprocess.Popen[str]:
    """Start `python -m mgmtplane forward` (stdout piped for its one `forwarding` line)."""
    cmd = [sys.executable, "-m", "mgmtplane", "forward", gateway, target, "--listen", "127.0.0.1:0"]
    cmd += ["--state-dir", str(state_dir), *extra]
    return subprocess.Popen(
        cmd, env=plane_helpers._env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )


def read_forward_url(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The base URL from the forward's `mgmtplane: forwarding http://...` line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            match = _FORWARDING.search(proc.stdout.readline())
            if match:
                return match.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"forward exited with {proc.returncode}")
    stop(proc)
    raise RuntimeError("forward did not start listening")


@contextlib.contextmanager
def chain(root: Path, targets: Sequence[Target], extra_policies: Sequence[Path] = ()) -> Iterator[Chain]:
    """Plane, enrolment and `gateway run` with the shipped policies; torn down in reverse order."""
    root.mkdir(parents=True, exist_ok=True)
    with plane_helpers.running_plane(root / "plane") as plane:
        state = root / "gw-state"
        reg = plane_helpers.register(plane.token(), state, "--hostname", "gw-sdk")
        assert reg.returncode == 0, reg.stderr
        gateway_id = json.loads((state / "identity.json").read_text())["gateway_id"]
        lines = ["targets:"]
        for t in targets:
            lines += [f"  - name: {t.name}", f"    url: {t.url}", f"    kind: {t.kind}"]
            lines += ["    allow_private: [127.0.0.1]", "    timeout: {connect: 5, total: 30}"]
        (root / "targets.yaml").write_text("\n".join(lines) + "\n")
        config = root / "gateway.yaml"
        config.write_text(
            f"plane_url: {plane.url}\nstate_dir: {state}\ntargets: {root / 'targets.yaml'}\n"
            f"policy_dirs: [{', '.join(str(d) for d in (SHIPPED_POLICIES, *extra_policies))}]\n"
            "heartbeat_interval: 1\n"
        )
        log_path = root / "gateway.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(config)],
                cwd=REPO,
                env=plane_helpers._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            result = Chain(root, plane, gateway_id, proc, {t.name: t for t in targets}, log_path)
            result.wait_connected()
            yield result
        finally:
            stop(proc)

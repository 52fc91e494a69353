"""The operate lane's real chain: `mgmtplane serve` (with a webhook) -> enrolled `gateway run` ->
targets on loopback, plus a webhook receiver and the support helper's socket, each a real
process or server. Shared by the health, events and support tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

from gateway.filter.policy import SHIPPED_POLICIES
from mgmtplane.webhook import verify
from tests.integration import plane_helpers

REPO = Path(__file__).resolve().parents[2]
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
WEBHOOK_SECRET = b"operate-test-webhook-secret-0123456789"

REDFISH_ROOT = {
    "@odata.id": "/redfish/v1",
    "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
    "Id": "RootService",
    "Name": "Root Service",
    "RedfishVersion": "1.6.0",
    "UUID": "CANARY-uuid-0f4e",
    "Product": "Test BMC",
    "Vendor": "Acme",
    "Oem": {"Acme": {"AdminPassword": "CANARY-bmc-password"}},
}
KEYSTONE_V3 = {
    "version": {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": "http://127.0.0.1/v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until predicate() is truthy; its value, or AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class JsonServer:
    """A loopback HTTP(S) server answering GET path -> JSON document; restartable on its port."""

    def __init__(
        self, routes: dict[str, Any], tls: ssl.SSLContext | None = None, port: int | None = None
    ) -> None:
        self.routes = routes
        self.port = port or free_port()
        self.tls = tls
        self.hits: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def start(self, tls: ssl.SSLContext | None = None) -> None:
        if tls is not None:
            self.tls = tls
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.hits.append(self.path)
                doc = outer.routes.get(self.path)
                body = json.dumps(doc if doc is not None else {"error": "not found"}).encode()
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        server = Server(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def tls_context(ca: trustme.CA) -> tuple[ssl.SSLContext, bytes]:
    """A server context with a fresh certificate from `ca` for 127.0.0.1, and that certificate (DER)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.configure_cert(ctx)
    return ctx, ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


class WebhookReceiver:
    """A loopback webhook receiver that fails the first `fail_first` deliveries with a 500 and
    keeps every delivery (headers, body, whether the signature verified)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.deliveries: list[dict[str, Any]] = []
        self.port = free_port()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signed = verify(
                    WEBHOOK_SECRET, self.headers.get("X-Mgmtplane-Signature", ""), body, time.time()
                )
                outer.deliveries.append(
                    {
                        "headers": dict(self.headers),
                        "body": json.loads(body),
                        "signed": signed,
                        "at": time.time(),
                    }
                )
                ok = len(outer.deliveries) > outer.fail_first and signed
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/gateway"

    def events(self, kind: str | None = None, accepted_only: bool = False) -> list[dict[str, Any]]:
        out = []
        for i, d in enumerate(self.deliveries):
            if accepted_only and (i < self.fail_first or not d["signed"]):
                continue
            if kind is None or d["body"]["type"] == kind:
                out.append(d["body"])
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class TargetSpec:
    """One line of targets.yaml."""

    name: str
    url: str
    kind: str
    tls: dict[str, str] | None = None


@dataclass
class Operate:
    """A running plane and one enrolled gateway."""

    root: Path
    plane: plane_helpers.Plane
    gateway_id: str
    config: Path
    status_file: Path
    log_path: Path
    env: dict[str, str]
    gateway: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    argv_prefix: Sequence[str] = field(default_factory=tuple)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.plane.state_dir / "ca.pem"))

    def get(self, path: str) -> tuple[int, Any]:
        """GET an admin URL of the plane: (status, parsed JSON or raw bytes)."""
        req = urllib.request.Request(
            self.plane.url + path, headers={"Authorization": f"Bearer {self.plane.admin_token()}"}
        )
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            with exc:
                body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def health(self) -> dict[str, Any]:
        status, body = self.get(f"/v1/gateways/{self.gateway_id}/health")
        assert status == 200, body
        return dict(body)

    def history(self) -> list[dict[str, Any]]:
        status, body = self.get(f"/v1/gateways/{self.gateway_id}/health/history")
        assert status == 200, body
        return list(body["history"])

    def record_after(self, seq: int, timeout: float = 30.0) -> dict[str, Any]:
        """The first record the plane holds with a sequence number above `seq`."""

        def newer() -> dict[str, Any] | None:
            record = self.health().get("record")
            return record if record is not None and record["seq"] > seq else None

        return dict(wait_until(newer, timeout, f"a health record after #{seq}"))

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.status_file.read_text()))

    def restart_plane(self, *extra: str) -> None:
        """Stop the plane and start it again on the same port and state dir, with `extra` options."""
        port = self.plane.port
        self.plane.stop()
        self.plane = plane_helpers.Plane(self.plane.state_dir, listen=f"127.0.0.1:{port}", extra=extra)

    def start_gateway(self, *, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        with self.log_path.open("ab") as log:
            self.gateway = subprocess.Popen(
                [*prefix, sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                cwd=REPO,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_connected(self, timeout: float = 30.0) -> None:
        def connected() -> bool:
            assert self.gateway is not None
            if self.gateway.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
            status, body = self.get(f"/v1/gateways/{self.gateway_id}")
            return status == 200 and bool(body.get("connected"))

        wait_until(connected, timeout, "the gateway's tunnel")

    def stop_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait(timeout=10)

    def gateway_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_targets(path: Path, targets: Sequence[TargetSpec]) -> None:
    lines = ["targets:"]
    for t in targets:
        lines += [
            f"  - name: {t.name}",
            f"    url: {t.url}",
            f"    kind: {t.kind}",
            "    allow_private: [127.0.0.1]",
        ]
        lines += ["    timeout: {connect: 3, total: 10}"]
        if t.tls:
            lines.append("    tls:")
            lines += [f"      {k}: {v}" for k, v in t.tls.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def operate(
    root: Path,
    targets: Sequence[TargetSpec],
    *,
    webhook: WebhookReceiver | None = None,
    health_interval: float = 2.0,
    extra_config: str = "",
    plane_port: int | None = None,
    start: bool = True,
    gateway_env: dict[str, str] | None = None,
) -> Iterator[Operate]:
    """A plane (with the webhook, if given), an enrolled gateway with the shipped policies and
    `targets`, running (unless start=False); all stopped at the end."""
    root.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    if webhook is not None:
        secret = root / "webhook-secret"
        secret.write_bytes(WEBHOOK_SECRET + b"\n")
        extra = ["--webhook-url", webhook.url, "--webhook-secret-file", str(secret)]
    listen = f"127.0.0.1:{plane_port or 0}"
    plane = plane_helpers.Plane(root / "plane", listen=listen, extra=extra)
    try:
        state = root / "gw-state"
        reg = plane_helpers.register(plane.token(), state, "--hostname", "gw-operate")
        assert reg.returncode == 0, reg.stderr
        gateway_id = json.loads((state / "identity.json").read_text())["gateway_id"]
        write_targets(root / "targets.yaml", targets)
        config = root / "gateway.yaml"
        status_file = root / "run" / "status.json"
        config.write_text(
            f"plane_url: {plane.url}\nstate_dir: {state}\ntargets: {root / 'targets.yaml'}\n"
            f"policy_dirs: [{SHIPPED_POLICIES}]\nheartbeat_interval: 1\n"
            "backoff_base: 0.05\nbackoff_cap: 0.5\n"
            f"status_file: {status_file}\nstatus_interval: 1\nhealth_interval: {health_interval}\n"
            f"support_socket: {root / 'support.sock'}\ndrain_timeout: 2\n{extra_config}"
        )
        env = plane_helpers._env()
        result = Operate(root, plane, gateway_id, config, status_file, root / "gateway.log", env)
        if start:
            result.start_gateway(env=gateway_env)
            result.wait_connected()
        try:
            yield result
        finally:
            result.stop_gateway()
            plane = result.plane  # a test may have restarted it
    finally:
        plane.stop()


class SupportHelper:
    """What systemd does for gateway-support.socket (Accept=yes): per connection, run
    `firstboot --root ROOT support-bundle --stdout` with the connection as its standard output."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self.served = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "firstboot",
                        "--root",
                        str(self.root),
                        "support-bundle",
                        "--stdout",
                    ],
                    cwd=REPO,
                    env=plane_helpers._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=conn.fileno(),
                    stderr=subprocess.DEVNULL,
                    timeout=120,
                    check=False,
                )
                self.served += 1

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

"""A site of real gateways: `mgmtplane serve`, gateways enrolled with `token create --site`, each a
`gateway run` process, and nginx as the targets, all on loopback. Shared by the sites tests.

Each gateway reaches the target `bmc` through its own nginx port, whose answer names that
gateway (`"Name": "gw-a"`): the answer itself says which gateway served a call. The target
`only-a` is reachable from gw-a only (gw-b's inventory points it at a closed port).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.filter.policy import SHIPPED_POLICIES
from tests.integration import plane_helpers
from tests.integration.operate_support import TargetSpec, free_port, wait_until, write_targets

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE = "dc1"


def _redfish(name: str) -> str:
    return json.dumps({"RedfishVersion": "1.6.0", "Product": "Test BMC", "Vendor": "Acme", "Name": name})


def start_nginx(work: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    """nginx with one server per (name, port), each answering every path with a Redfish root
    that names it. No files are served, so its unprivileged workers need no access to `work`."""
    work.mkdir(parents=True, exist_ok=True)
    servers = "\n".join(
        f"    server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;"
        f" return 200 '{_redfish(name)}'; }} }}"
        for name, port in ports.items()
    )
    temp = " ".join(
        f"{k}_temp_path {work}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = work / "nginx.conf"
    conf.write_text(
        f"daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log warn;\n"
        f"events {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n"
        "    keepalive_requests 1000000;\n"
        f"    {temp}\n{servers}\n}}\n"
    )
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)], stdin=subprocess.DEVNULL)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited: {(work / 'nginx-error.log').read_text()[-2000:]}")
        for port in ports.values():
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) != 0:
                    return False
        return True

    wait_until(listening, 15, "nginx", interval=0.05)
    return proc


@dataclass
class Member:
    """One gateway of the site: its files and its process."""

    name: str
    root: Path
    gateway_id: str
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                cwd=REPO,
                env=plane_helpers._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a test may have stopped it
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Site:
    """A running plane, nginx and the site's gateways."""

    root: Path
    plane: plane_helpers.Plane
    members: dict[str, Member] = field(default_factory=dict)
    token: str = ""

    def api(self, path: str, method: str = "GET") -> tuple[int, Any]:
        """An admin call to the plane (blocking): (status, parsed JSON or text)."""
        import ssl
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            self.plane.url + path, method=method, headers={"Authorization": f"Bearer {self.token}"}
        )
        ctx = ssl.create_default_context(cafile=str(self.plane.state_dir / "ca.pem"))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                body, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            with exc:
                body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def view(self) -> dict[str, Any]:
        status, body = self.api(f"/v1/sites/{SITE}")
        assert status == 200, body
        return dict(body)

    def wait_connected(self, *names: str, timeout: float = 30.0) -> None:
        def connected() -> bool:
            for name in names:
                proc = self.members[name].proc
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"{name} exited: {self.members[name].log_path.read_text()[-3000:]}")
            gws = {g["gateway_id"]: g for g in self.view()["gateways"]}
            return all(
                gws[self.members[n].gateway_id]["connected"]
                and not gws[self.members[n].gateway_id]["draining"]
                for n in names
            )

        wait_until(connected, timeout, f"{', '.join(names)} connected")

    def wait_reach(self, name: str, target: str, reach: str, timeout: float = 30.0) -> None:
        """Until the plane judges `name`'s reach of `target` as `reach` (from its health records)."""

        def judged() -> bool:
            for g in self.view()["gateways"]:
                if g["gateway_id"] == self.members[name].gateway_id:
                    return bool(g["targets"].get(target, {}).get("reach") == reach)
            return False

        wait_until(judged, timeout, f"{name}'s reach of {target} to be {reach}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return plane_helpers.run("mgmtplane", *args, "--state-dir", str(self.plane.state_dir))

    def url(self, target: str, path: str = "redfish/v1") -> str:
        return f"{self.plane.url}/v1/sites/{SITE}/targets/{target}/{path}"


def gateway_yaml(plane_url: str, state: Path, targets: Path, root: Path) -> str:
    """A gateway configuration for tests: fast heartbeats, health records and reconnects."""
    return (
        f"plane_url: {plane_url}\nstate_dir: {state}\ntargets: {targets}\n"
        f"policy_dirs: [{SHIPPED_POLICIES}]\nheartbeat_interval: 1\n"
        "backoff_base: 0.05\nbackoff_cap: 0.5\n"
        f"status_file: {root / 'status.json'}\nstatus_interval: 1\nhealth_interval: 1\n"
        f"support_socket: {root / 'support.sock'}\ndrain_timeout: 5\n"
    )


@contextlib.contextmanager
def site(root: Path, names: tuple[str, ...] = ("gw-a", "gw-b")) -> Iterator[Site]:
    """A plane, nginx, and `names` enrolled into site dc1 and running; all stopped at the end."""
    root.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in names}
    only_a = free_port()
    closed = free_port()  # nothing listens here: gw-b's route to only-a
    nginx = start_nginx(root / "nginx", {**ports, "only-a": only_a})
    plane = plane_helpers.Plane(root / "plane")
    result = Site(root, plane)
    try:
        result.token = plane.admin_token()
        for name in names:
            made = result.cli("token", "create", "--site", SITE, "--ttl", "10m")
            assert made.returncode == 0, made.stderr
            member_root = root / name
            state = member_root / "state"
            reg = plane_helpers.register(made.stdout.strip(), state, "--hostname", name)
            assert reg.returncode == 0, reg.stderr
            gateway_id = json.loads((state / "identity.json").read_text())["gateway_id"]
            targets = member_root / "targets.yaml"
            only = only_a if name == "gw-a" else closed
            write_targets(
                targets,
                [
                    TargetSpec("bmc", f"http://127.0.0.1:{ports[name]}", "redfish"),
                    TargetSpec("only-a", f"http://127.0.0.1:{only}", "redfish"),
                ],
            )
            config = member_root / "gateway.yaml"
            config.write_text(gateway_yaml(plane.url, state, targets, member_root))
            member = Member(name, member_root, gateway_id, config, member_root / "gateway.log")
            result.members[name] = member
            member.start()
        result.wait_connected(*names)
        yield result
    finally:
        for member in result.members.values():
            member.stop()
        plane.stop()
        nginx.terminate()
        nginx.wait(timeout=10)


@dataclass
class Load:
    """The outcome of a bounded load of GETs through the site route."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)
    via: dict[str, int] = field(default_factory=dict)
    done_at: list[float] = field(default_factory=list)  # monotonic times of the successful calls
    slowest: float = 0.0  # the longest call, in seconds

    def gap_around(self, t: float) -> float:
        """The longest stretch without a successful call in the 10 s after `t`, in seconds."""
        times = sorted(x for x in self.done_at if t - 1.0 <= x <= t + 10.0)
        return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


async def run_load(
    site_: Site,
    target: str,
    count: int,
    concurrency: int = 8,
    on_progress: dict[int, Any] | None = None,
    timeout: float = 90.0,
    pace: float = 0.0,
) -> Load:
    """`count` GETs of the site's target, `concurrency` at a time, each worker pausing `pace` s
    between calls; `on_progress[n]` (a callable) runs once n calls have completed. Bounded in
    count and time."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(site_.plane.state_dir / "ca.pem"))
    load = Load()
    done = 0
    queue = iter(range(count))
    hooks = dict(on_progress or {})
    headers = {"Authorization": f"Bearer {site_.token}"}
    url = site_.url(target)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for _ in queue:
            began = time.monotonic()
            try:
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        load.failed.append(f"{resp.status} {body[:200]!r}")
                    else:
                        via = json.loads(body).get("Name", "?")
                        load.via[via] = load.via.get(via, 0) + 1
                        load.ok += 1
                        load.done_at.append(time.monotonic())
            except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
                load.failed.append(f"{type(exc).__name__}: {exc}")
            load.slowest = max(load.slowest, time.monotonic() - began)
            done += 1
            hook = hooks.pop(done, None)  # before any await: `done` is shared by the workers
            if pace:
                await asyncio.sleep(pace)
            if hook is not None:
                await asyncio.get_running_loop().run_in_executor(None, hook)

    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(concurrency))), timeout)
    await plane_helpers.wait_sockets_closed(site_.plane.port)
    return load

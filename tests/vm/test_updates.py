"""A/B updates end to end, under QEMU: refuse, survive a kill, then N -> N+1 and the rollback of
N+2, both driven by the plane's rollout.

One appliance, seeded like a real deployment (SMBIOS credentials: join token, hostname, targets,
an admin password), registered with the real plane (`mgmtplane serve`). The refusals and the
killed install are driven by an operator on the serial console (bundles over HTTP from the host);
N+1 and N+2 are rolled out by the plane (`mgmtplane release add`, `mgmtplane rollout start`): the
gateway's update agent downloads the bundle over mTLS, has the root helper install it, reboots,
and reports each step, which the plane shows in `GET /v1/gateways/{id}` ("update").
Boots, in order, each one shared by several assertions:

  1. N on slot A: connected; bundles signed by another key, damaged, or older are refused with a
     one-line reason; an install of N+1 is started and QEMU is killed while RAUC writes slot B.
  2. N on slot A again, healthy; the interrupted install is on record and at the plane (failed);
     the plane rolls out N+1: downloaded, installed, rebooted by the agent.
  3. N+1 on slot B, marked good, healthy at the plane: same gateway id, hostname, network file and
     targets (a relayed call works). The plane rolls out N+2 (its gateway cannot start).
  4. N+2 on slot A: not healthy, marked bad, reboots by itself.
  5. N+1 on slot B: connected again; the rollback and its reason on record and at the plane.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from appliance.qemu import HOST_ALIAS, BootOptions, Firmware, accelerator, qemu_command
from appliance.render import DEFAULT_CACHE
from appliance.signing import DEV_DIR, development_signer
from appliance.spec import Spec
from tests.integration.plane_helpers import Plane, free_port, run

from .conftest import BUILD
from .test_firstboot_e2e import (
    NOVA_SERVERS,
    _Target,
    admin_get,
    connected_gateways,
    overlay,
    targets_credential,
)
from .update_bundles import make_test_bundles

pytestmark = pytest.mark.timeout(3600)

VERSIONS = {"next": "0.1.1", "broken": "0.1.2"}
INSTALL = "/usr/libexec/appliance/update-install"
ROLLOUT = re.compile(r"rollout (\S+): ")


@functools.cache
def accel() -> str:
    return accelerator(None, BUILD / "SHA256SUMS")


@pytest.fixture(scope="module")
def bundles(
    artifacts: dict[str, Path], spec: Spec, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    signer = development_signer(DEFAULT_CACHE / DEV_DIR)  # the key `make ova` signed with
    started = time.monotonic()
    out = make_test_bundles(artifacts["raw"], signer, tmp_path_factory.mktemp("bundles"), spec.name, VERSIONS)
    # The downgrade: the build's own bundle of N, offered once N+1 runs.
    out["downgrade"] = Path(
        shutil.copyfile(BUILD / f"{spec.artifact_stem}.raucb", out["next"].with_name("downgrade.raucb"))
    )
    own = (BUILD / f"{spec.artifact_stem}.raucb").stat().st_size / 2**20
    size = out["next"].stat().st_size / 2**20
    print(f"test bundles made in {time.monotonic() - started:.0f}s; bundle N -> N+1: {size:.1f} MiB "
          f"(a full root filesystem); the build's own: {own:.1f} MiB")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def http_port(bundles: dict[str, Path]) -> Iterator[int]:
    """The bundles over HTTP on loopback; the guest reaches it through its guest forward."""
    directory = next(iter(bundles.values())).parent

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def target() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    port = free_port()
    plane = Plane(tmp_path_factory.mktemp("plane") / "state", listen=f"127.0.0.1:{port}",
                  advertise_url=f"https://{HOST_ALIAS}:{port}", extra=("--san", HOST_ALIAS))  # fmt: skip
    yield plane
    plane.stop()


class Appliance:
    """One QEMU boot with the serial console driven like an operator at a terminal."""

    def __init__(self, disk: Path, workdir: Path, ports: tuple[int, ...], password: str,
                 credentials: dict[str, str] | None = None) -> None:  # fmt: skip
        opts = BootOptions(image=disk, firmware=Firmware.BIOS, snapshot=False, host_ports=ports,
                           accel=accel(), credentials=credentials or {})  # fmt: skip
        cmd = qemu_command(opts, workdir)
        self.password = password
        self.started = time.monotonic()
        self.child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace", timeout=900)
        self.log = open(workdir / f"console-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed in close()
        self.child.logfile_read = self.log
        self.count = 0

    def drain(self, seconds: float) -> None:
        """Read (and log) the console for a while: QEMU stalls the guest's console when nobody reads."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            with contextlib.suppress(pexpect.TIMEOUT):
                self.child.read_nonblocking(65536, timeout=left)

    def login(self) -> None:
        """Log in as admin on the serial console and become root."""
        self.drain(1)
        self.child.sendline("")  # a fresh prompt: the first one may have been drained already
        self.child.expect(r"login: ", timeout=900)
        self.child.sendline("admin")
        self.child.expect("Password: ", timeout=120)
        self.child.sendline(self.password)
        self.child.expect(r"\$ ", timeout=120)
        # The prompt is split in the command line, so that its echo does not match.
        self.child.sendline("sudo -S -p 'SUDO-PASS''WORD:' bash --noprofile --norc")
        self.child.expect("SUDO-PASSWORD:", timeout=120)
        self.child.sendline(self.password)
        self.child.expect(r"# ", timeout=120)
        self.run("stty cols 1000; export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat")

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        """Run a shell command as root; its exit status and output."""
        self.count += 1
        n = self.count
        self.child.sendline(f"echo __BEGIN{n}__; {command}; echo __END{n}__$?__")
        self.child.expect(rf"__BEGIN{n}__\r*\n", timeout=60)
        self.child.expect(rf"__END{n}__(\d+)__", timeout=timeout)
        output = self.child.before.replace("\r", "")
        return int(self.child.match.group(1)), output.strip()

    def ok(self, command: str, timeout: float = 300) -> str:
        code, output = self.run(command, timeout)
        assert code == 0, f"{command}: exit {code}: {output}"
        return output

    def status(self) -> dict[str, object]:
        return json.loads(self.ok("python3 -m updater status 2>/dev/null"))  # type: ignore[no-any-return]

    def journal(self) -> str:
        return self.ok("journalctl -b -t appliance-update -o cat --no-pager")

    def wait_marked_good(self, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.journal().splitlines() if "marked good" in line]
            if lines:
                return lines[-1]
            self.drain(5)
        raise AssertionError(f"the slot was not marked good in {timeout:.0f}s:\n{self.journal()}")

    def fetch(self, name: str, port: int) -> None:
        url = f"http://{HOST_ALIAS}:{port}/{name}.raucb"
        script = "import shutil,sys,urllib.request as u;"
        script += "shutil.copyfileobj(u.urlopen(sys.argv[1]),open(sys.argv[2],'wb'))"
        # Synced, as an update agent must: a power cut (here: the killed VM) loses unwritten pages.
        self.ok(f'python3 -c "{script}" {url} /var/tmp/{name}.raucb && sync', timeout=600)

    def wait_exit(self, timeout: float) -> None:
        """Wait for QEMU to exit (a reboot ends it: -no-reboot)."""
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.close()

    def kill(self) -> None:
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        self.close()

    def close(self) -> None:
        self.child.close(force=True)
        self.log.close()


def wait_connected(plane: Plane, gateway_id: str | None, app: Appliance, timeout: float = 900) -> str:
    """The gateway's tunnel is up (again); returns its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for gw in connected_gateways(plane):
            if gateway_id is None or gw["gateway_id"] == gateway_id:
                return str(gw["gateway_id"])
        app.drain(3)
    raise AssertionError(f"no tunnel after {time.monotonic() - app.started:.0f}s; console in {app.log.name}")


def refusal(app: Appliance, name: str, pattern: str, timeout: float = 600) -> str:
    """The install entry point refuses: exit 1, the reason as its last line, and that line in the journal."""
    code, output = app.run(f"{INSTALL} /var/tmp/{name}.raucb", timeout=timeout)
    assert code == 1, f"{name}: expected a refusal, got exit {code}: {output}"
    reason = [line for line in output.splitlines() if line.strip()][-1]
    assert re.search(pattern, reason), f"{name}: {reason!r} does not match {pattern!r}"
    assert reason in app.journal().splitlines(), f"{name}: the reason is not a line of the journal"
    print(f"refused {name}: {reason}")
    return reason


def plane_cli(plane: Plane, *args: str) -> str:
    """A `mgmtplane` command on the running plane's state directory."""
    result = run("mgmtplane", *args, "--state-dir", str(plane.state_dir), timeout=600)
    assert result.returncode == 0, f"mgmtplane {' '.join(args)}: {result.stderr}"
    return result.stdout


def roll_out(plane: Plane, bundle: Path, version: str) -> str:
    """`mgmtplane release add` and `rollout start`, as an operator does; the rollout id."""
    print(plane_cli(plane, "release", "add", str(bundle)).strip())
    out = plane_cli(plane, "rollout", "start", version)
    match = ROLLOUT.search(out)
    assert match, out
    time.sleep(5)  # two of the plane's planning rounds
    status = plane_cli(plane, "rollout", "status")
    # Boot 1's killed install (by hand, no rollout id) is on record as a failure of this version:
    # it is not this rollout's, so the rollout goes on.
    assert "phase halted" not in status, status
    return match.group(1)


def plane_update(plane: Plane, gateway_id: str) -> dict[str, object]:
    """What the plane shows of the gateway's update (GET /v1/gateways/{id}, field "update")."""
    code, body, _ = admin_get(plane, f"/v1/gateways/{gateway_id}")
    assert code == 200, body
    update = json.loads(body).get("update")
    return update if isinstance(update, dict) else {}


def wait_update(
    plane: Plane,
    gateway_id: str,
    app: Appliance,
    state: str,
    target: str,
    timeout: float = 1800,
    known: dict[str, object] | None = None,
) -> dict[str, object]:
    """Wait until the plane shows this update state for this target; every state seen is printed.
    A failure or rollback on the way (other than `known`, reported earlier) ends the wait at once."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        update = plane_update(plane, gateway_id)
        step = f"{update.get('state')}({update.get('target')})"
        if not seen or seen[-1] != step:
            seen.append(step)
        if update.get("state") == state and update.get("target") == target:
            print(f"plane saw: {' -> '.join(seen)}")
            return update
        if update.get("state") in ("failed", "rolled-back") and (
            known is None or update.get("at") != known.get("at")
        ):
            raise AssertionError(f"the plane saw {step}: {update.get('reason')}; console {app.log.name}")
        app.drain(2)
    raise AssertionError(
        f"the plane did not see {state} for {target}: {' -> '.join(seen)}; console {app.log.name}"
    )


def test_update_switch_refusals_interrupted_install_and_rollback(
    artifacts: dict[str, Path],
    bundles: dict[str, Path],
    plane: Plane,
    target: int,
    http_port: int,
    spec: Spec,
    tmp_path: Path,
) -> None:
    password = "upd-" + secrets.token_hex(8)
    openssl = ["openssl", "passwd", "-6", "-stdin"]
    crypt = subprocess.run(openssl, input=password, capture_output=True, text=True, check=True).stdout.strip()
    disk = overlay(artifacts["qcow2"], tmp_path / "disk.qcow2")
    ports = (plane.port, target, http_port)
    creds = {"gateway.join_token": plane.token(), "network.hostname": "gw-update",
             "tmpfiles.extra": targets_credential(target), "admin.password_hash": crypt}  # fmt: skip
    figures: dict[str, str] = {"accelerator": accel().upper()}

    # 1. N on slot A.
    app = Appliance(disk, tmp_path, ports, password, creds)
    try:
        gw_id = wait_connected(plane, None, app)
        app.login()
        app.wait_marked_good()
        status = app.status()
        assert (status["booted"], status["version"]) == ("A", spec.version)
        for name in ("other-key", "corrupt", "next"):
            app.fetch(name, http_port)
        refusal(app, "other-key", r"refused: signature verification failed")
        refusal(app, "corrupt", r"install of 0\.1\.1 into slot B failed: ")
        # An install cut off while RAUC writes slot B.
        attempts = app.journal().count("installing 0.1.1 into slot B")  # the damaged bundle's, so far
        app.ok(f"(setsid {INSTALL} /var/tmp/next.raucb > /var/tmp/install.log 2>&1 &)")
        deadline = time.monotonic() + 300
        while app.journal().count("installing 0.1.1 into slot B") == attempts:
            assert time.monotonic() < deadline, app.ok("cat /var/tmp/install.log")
            app.drain(2)
        app.drain(15)
        assert "installed" not in app.ok("cat /var/tmp/install.log"), "the install finished before the kill"
    finally:
        app.kill()

    # 2. N on slot A again: healthy; then the install succeeds.
    app = Appliance(disk, tmp_path, ports, password)
    try:
        assert wait_connected(plane, gw_id, app) == gw_id
        app.login()
        app.wait_marked_good()
        status = app.status()
        assert status["booted"] == "A"
        assert status["grubenv"]["B_OK"] == "0"  # type: ignore[index]
        assert status["state"]["last"]["result"] == "interrupted"  # type: ignore[index]
        # The agent reported the updater's record on the new tunnel.
        interrupted = wait_update(plane, gw_id, app, "failed", "0.1.1", timeout=300)
        assert str(interrupted["reason"]).startswith("interrupted: the install was cut off")
        app.fetch("downgrade", http_port)
        # N+1 rolled out by the plane: the agent downloads, installs and reboots by itself.
        rollout_started = time.monotonic()
        rollout = roll_out(plane, bundles["next"], "0.1.1")
        wait_update(plane, gw_id, app, "rebooting", "0.1.1", known=interrupted)
        app.wait_exit(300)
    finally:
        app.kill()
    figures["rollout start to N+1 installed and rebooting"] = f"{time.monotonic() - rollout_started:.0f}s"

    # 3. N+1 on slot B, with the same configuration and identity.
    app = Appliance(disk, tmp_path, ports, password)
    try:
        assert wait_connected(plane, gw_id, app) == gw_id
        figures["reboot to tunnel on N+1"] = f"{time.monotonic() - app.started:.0f}s"
        app.login()
        good = app.wait_marked_good()
        figures["reboot to marked good (guest uptime)"] = re.search(
            r"marked good (\d+ s) after boot", good
        ).group(1)  # type: ignore[union-attr]
        assert "the gateway is connected to the plane" in good
        healthy = wait_update(plane, gw_id, app, "healthy", "0.1.1", timeout=600)
        figures["rollout start to healthy on N+1"] = f"{time.monotonic() - rollout_started:.0f}s"
        assert (healthy["running"], healthy["slot"], healthy["rollout"]) == ("0.1.1", "B", rollout)
        status = app.status()
        assert (status["booted"], status["version"]) == ("B", "0.1.1")
        assert status["state"]["last"]["result"] == "installed"  # type: ignore[index]
        # The agent's own account of the previous boot (when the journal is kept on /var).
        agent_log = app.ok(
            "journalctl -b -1 -u gateway -o cat --no-pager 2>/dev/null | grep 'update: ' || true"
        )
        print(f"the update agent before the reboot:\n{agent_log}")
        took = re.search(r"downloaded and verified \((\d+) bytes, ([\d.]+) s\)", agent_log)
        if took:
            figures["download of N+1 by the agent (mTLS, slirp)"] = f"{float(took.group(2)):.0f}s"
        assert app.ok("hostname") == "gw-update"
        assert "DHCP=yes" in app.ok("cat /etc/systemd/network/10-firstboot.network")
        assert "nova" in app.ok("cat /etc/gateway/targets.yaml")
        code, body, _ = admin_get(plane, f"/v1/gateways/{gw_id}/targets/nova/v2.1/servers/detail")
        assert code == 200 and NOVA_SERVERS["servers"][0]["name"].encode() in body  # type: ignore[index]
        assert "ro" in app.ok("findmnt -no OPTIONS /").split(",")
        refusal(app, "downgrade", r"refused: 0\.1\.0 is older than the running 0\.1\.1 \(a downgrade needs")
        # N+2 rolled out the same way; its gateway cannot start.
        broken_rollout = roll_out(plane, bundles["broken"], "0.1.2")
        wait_update(plane, gw_id, app, "rebooting", "0.1.2")
        app.wait_exit(300)
    finally:
        app.kill()

    # 4. N+2 on slot A: its gateway cannot start; the slot rolls back by itself.
    app = Appliance(disk, tmp_path, ports, password)
    rollback_started = app.started
    try:
        app.wait_exit(1200)
    finally:
        app.kill()
    figures["N+2 boot until it rebooted itself"] = f"{time.monotonic() - rollback_started:.0f}s"

    # 5. N+1 on slot B again, and the rollback on record.
    app = Appliance(disk, tmp_path, ports, password)
    try:
        assert wait_connected(plane, gw_id, app) == gw_id
        figures["rollback: N+2 power-on to tunnel back on N+1"] = (
            f"{time.monotonic() - rollback_started:.0f}s"
        )
        app.login()
        status = app.status()
        assert (status["booted"], status["version"]) == ("B", "0.1.1")
        last = status["state"]["last"]  # type: ignore[index]
        assert (last["result"], last["version"]) == ("rolled-back", "0.1.2")
        assert "gateway.service cannot start" in last["reason"]
        assert status["grubenv"]["A_OK"] == "0"  # type: ignore[index]
        assert "update to 0.1.2 rolled back" in app.journal()
        rolled = wait_update(plane, gw_id, app, "rolled-back", "0.1.2", timeout=600)
        figures["rollback: N+2 power-on to rolled-back at the plane"] = (
            f"{time.monotonic() - rollback_started:.0f}s"
        )
        assert (rolled["running"], rolled["slot"], rolled["rollout"]) == ("0.1.1", "B", broken_rollout)
        assert "gateway.service cannot start" in str(rolled["reason"])
        print(plane_cli(plane, "rollout", "status").strip())
    finally:
        app.kill()
    print("update figures: " + "; ".join(f"{k}: {v}" for k, v in figures.items()))

"""First boot end to end: the built image registers with a real plane, relays filtered, renews.

The plane and a target run on the host's loopback; the guest reaches them as 10.0.2.100:PORT
through QEMU user networking's guest forwards (and nothing else: restrict=on).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pexpect
import pytest

from appliance.ovf import render_ovf_environment
from appliance.qemu import HOST_ALIAS, BootOptions, Forward, accelerator, qemu_command
from appliance.smoke import console_text
from appliance.spec import Firmware, Spec
from tests.integration.identity_support import set_lifetime, tunnels_up
from tests.integration.plane_helpers import Plane, free_port
from tests.integration.plane_helpers import run as run_cli

from .conftest import BUILD

pytestmark = pytest.mark.timeout(1800)

CANARY = "CANARY-adminPass-7f3e"
NOVA_SERVERS = {
    "servers": [
        {
            "id": "9f1c1d2e-0000-4000-8000-000000000001",
            "name": "web-01",
            "status": "ACTIVE",
            "flavor": {"id": "m1.small"},
            "adminPass": CANARY,
            "user_data": base64.b64encode(b"#cloud-config CANARY-userdata").decode(),
        }
    ]
}


class _Target(BaseHTTPRequestHandler):
    """A Nova-like API on loopback: one servers list with secrets the filter must strip."""

    def do_GET(self) -> None:
        body = json.dumps(NOVA_SERVERS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def target() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    port = free_port()
    plane = Plane(
        tmp_path_factory.mktemp("plane") / "state",
        listen=f"127.0.0.1:{port}",
        advertise_url=f"https://{HOST_ALIAS}:{port}",
        extra=("--san", HOST_ALIAS),
    )
    yield plane
    plane.stop()


def targets_credential(target_port: int) -> str:
    """A tmpfiles.d line (systemd's `tmpfiles.extra` credential) that writes the target inventory."""
    inventory = (
        f"targets:\n  - name: nova\n    url: http://{HOST_ALIAS}:{target_port}\n    kind: openstack-nova\n"
    )
    return f"f~ /etc/gateway/targets.yaml 0644 root root - {base64.b64encode(inventory.encode()).decode()}\n"


def admin_get(plane: Plane, path: str) -> tuple[int, bytes, dict[str, str]]:
    import ssl

    ctx = ssl.create_default_context(cafile=str(plane.state_dir / "ca.pem"))
    req = urllib.request.Request(
        f"https://127.0.0.1:{plane.port}{path}", headers={"Authorization": f"Bearer {plane.admin_token()}"}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


@functools.cache
def accel() -> str:
    """KVM if it really works; probed with the kernel built beside the artifacts (overlays are in tmp)."""
    return accelerator(None, BUILD / "SHA256SUMS")


class Guest:
    """One QEMU boot of a persistent overlay over the built image, console to a file or a pty."""

    def __init__(self, disk: Path, workdir: Path, ports: tuple[int, ...], *, serial_file: bool = True,
                 credentials: dict[str, str] | None = None, ovf_iso: Path | None = None,
                 forwards: tuple[Forward, ...] = ()) -> None:  # fmt: skip
        self.workdir = workdir
        self.log = workdir / f"serial-{time.monotonic_ns()}.log"
        opts = BootOptions(image=disk, firmware=Firmware.BIOS, snapshot=False, host_ports=ports,
                           serial_log=self.log if serial_file else None, accel=accel(),
                           credentials=credentials or {}, ovf_iso=ovf_iso, forwards=forwards)  # fmt: skip
        self.cmd = [*qemu_command(opts, workdir), "-qmp", f"unix:{workdir}/qmp.sock,server=on,wait=off"]
        self.started = time.monotonic()

    def console(self) -> str:
        return console_text(self.log.read_bytes()) if self.log.exists() else ""


def overlay(base: Path, dest: Path) -> Path:
    """A qcow2 overlay, so a boot can write (and reboot) without touching the artifact."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.resolve()), str(dest)]
    subprocess.run(cmd, check=True)
    return dest


def wait_for(predicate, timeout: float, what: str, console=lambda: "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(2)
    tail = "\n".join(console().splitlines()[-40:])
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; console:\n{tail}")


def connected_gateways(plane: Plane) -> list[dict[str, object]]:
    status, body, _ = admin_get(plane, "/v1/gateways")
    assert status == 200, body
    items = json.loads(body)["gateways"]
    return [g for g in items if g.get("connected")]


def new_gateway_connected(plane: Plane, known: set[object]) -> bool:
    return any(g["gateway_id"] not in known for g in connected_gateways(plane))


def qmp_powerdown(workdir: Path) -> None:
    """ACPI power button through QMP: a clean shutdown, like a hypervisor's 'shut down guest'."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(workdir / "qmp.sock"))
        sock.settimeout(10)
        sock.recv(4096)
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        sock.recv(4096)
        sock.sendall(b'{"execute": "system_powerdown"}\n')
        sock.recv(4096)


def run_qemu(guest: Guest) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        guest.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes], workdir: Path, timeout: float = 300) -> None:
    if proc.poll() is None:
        try:
            qmp_powerdown(workdir)
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def gateway_record(plane: Plane, gateway_id: object) -> dict[str, Any]:
    status, body, _ = admin_get(plane, f"/v1/gateways/{gateway_id}")
    assert status == 200, body
    return dict(json.loads(body))


def relay_nova(plane: Plane, gateway_id: object) -> tuple[int, bytes, dict[str, str]]:
    return admin_get(plane, f"/v1/gateways/{gateway_id}/targets/nova/v2.1/servers/detail")


# The first certificate is short-lived: the appliance renews it in this boot, about two thirds into
# its life (two minutes), with the tunnel and relayed calls going on. What it renews to is the
# plane's normal lifetime again, so the reboot below finds a valid certificate.
FIRST_LIFETIME = "180s"


def password_hash() -> str:
    """A sha512crypt hash of a random password (a secret of the seeds, as an operator's would be)."""
    done = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=secrets.token_urlsafe(16),
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def check_health(plane: Plane, gw_id: str, spec_version: str) -> None:
    """The plane shows the appliance's health and each target's state, from the gateway's own probes."""

    def record() -> dict[str, Any] | None:
        status, body, _ = admin_get(plane, f"/v1/gateways/{gw_id}/health")
        assert status == 200, body
        rec = json.loads(body)["record"]
        # One made after the relayed call and the renewal (records come every 30 s, and at once on
        # connecting; a renewal's handover keeps the tunnel up, so the next periodic one tells it).
        if rec is None or not rec["targets"] or not rec["filter"]["allowed"]:
            return None
        renewed = (rec["certificate"] or {}).get("not_after", 0) - time.time() > 80 * 86400
        return rec if renewed else None

    wait_for(lambda: record() is not None, 300, "a health record after the relayed call and the renewal")
    rec = record()
    assert rec is not None
    print(f"health record from the VM: {len(json.dumps(rec, separators=(',', ':')))} bytes, 1 target")
    appliance = rec["appliance"]
    assert appliance["image_version"] == spec_version and appliance["slot"]
    (nova,) = rec["targets"]
    assert nova["name"] == "nova" and nova["state"] == "up" and nova["kind"] == "openstack-nova", nova
    assert isinstance(rec["failed_units"], list), rec["failed_units"]
    assert (rec["certificate"]["not_after"] - time.time()) / 86400 < 91  # the renewed one, >80 above
    assert rec["system"]["var_percent"] is not None and rec["system"]["mem_total"]
    assert rec["filter"]["policy_hash"].startswith("sha256:")
    print(f"  failed units {rec['failed_units']}, clock {rec['clock']}")


def check_support_bundle(plane: Plane, gw_id: str, tmp_path: Path, seeds: list[str]) -> None:
    """A bundle comes back through the plane, built by the appliance's root helper, with the
    daemon's own status file in it (written under its sandbox) and no secret from the seeds."""
    out = tmp_path / "support.tar.gz"
    start = time.monotonic()
    # The plane advertises the guest's alias for the host; from the host it is 127.0.0.1.
    done = run_cli("mgmtplane", "support-bundle", gw_id, "-o", str(out), "--state-dir", str(plane.state_dir),
                   "--url", f"https://127.0.0.1:{plane.port}", timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "built by the helper" in done.stdout, done.stdout
    print(f"support bundle from the VM: {done.stdout.strip()} ({time.monotonic() - start:.0f}s)")
    with tarfile.open(out) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert b"gateway" in blobs["bundle/journal.txt"] and len(blobs["bundle/journal.txt"]) > 10_000
    status = json.loads(blobs["bundle/run/gateway/status.json"])
    assert status["state"] == "connected" and status["pid"] and status["target_states"][0]["name"] == "nova"
    state = json.loads(blobs["bundle/var/lib/firstboot/state.json"])
    assert state["settings"]["gateway.join_token"] == "<redacted>"
    assert state["settings"]["admin.password_hash"] == "<redacted>"
    assert not any("key.pem" in name for name in blobs)
    everything = b"\n".join(blobs.values())
    for secret in seeds:
        assert secret.encode() not in everything, "a secret of the seeds is in the support bundle"


def test_seeded_by_smbios_registers_relays_filtered_renews_and_survives_reboot(
    artifacts: dict[str, Path], plane: Plane, target: int, spec: Spec, tmp_path: Path
) -> None:
    disk = overlay(artifacts["qcow2"], tmp_path / "disk.qcow2")
    set_lifetime(plane.state_dir, FIRST_LIFETIME)
    try:
        token, hashed = plane.token(), password_hash()
        creds = {
            "gateway.join_token": token,
            "network.hostname": "gw-e2e",
            "admin.password_hash": hashed,
            "tmpfiles.extra": targets_credential(target),
        }
        t0 = time.monotonic()
        guest = Guest(disk, tmp_path, (plane.port, target), credentials=creds)
        proc = run_qemu(guest)
    except BaseException:
        set_lifetime(plane.state_dir, "90d")
        raise
    try:
        wait_for(lambda: bool(connected_gateways(plane)), 900, "the tunnel to come up", guest.console)
        set_lifetime(plane.state_dir, "90d")  # what the renewal gets
        connect_s = time.monotonic() - t0
        (gw,) = connected_gateways(plane)
        gw_id = gw["gateway_id"]
        status, body, headers = relay_nova(plane, gw_id)
        assert status == 200, body
        assert b"web-01" in body and b"9f1c1d2e" in body  # metadata passes
        assert CANARY.encode() not in body and b"CANARY-userdata" not in body  # secrets do not
        assert "removed=" in headers.get("X-Gateway-Filter", ""), headers
        print(f"power-on to connected tunnel: {connect_s:.0f}s under {guest.cmd[2].upper()}")

        # The renewal, with relayed calls going on all through it.
        first = gateway_record(plane, gw_id)
        calls: list[int] = []
        halt = threading.Event()

        def keep_calling() -> None:
            while not halt.is_set():
                calls.append(relay_nova(plane, gw_id)[0])
                halt.wait(2)

        caller = threading.Thread(target=keep_calling, daemon=True)
        caller.start()
        try:
            wait_for(lambda: gateway_record(plane, gw_id).get("renewals", 0) >= 1, 600,
                     "the appliance to renew its certificate", guest.console)  # fmt: skip
            wait_for(
                lambda: len(tunnels_up(plane, str(gw_id))) >= 2, 120, "the tunnel on the new certificate"
            )
            halt.wait(6)  # a few calls on the new tunnel too
        finally:
            halt.set()
            caller.join(timeout=60)
        renewed = gateway_record(plane, gw_id)
        assert renewed["connected"] and renewed["cert_fingerprint"] != first["cert_fingerprint"], renewed
        until = datetime.fromisoformat(str(renewed["cert_not_after"]))
        assert until > datetime.now(UTC) + timedelta(days=80), until  # the plane's normal lifetime now
        assert calls and all(code == 200 for code in calls), calls
        tunnels = tunnels_up(plane, str(gw_id))
        assert len(tunnels) == 2, tunnels  # one new tunnel for the renewal, no reconnects
        signed = renewal_signed_at(plane, str(gw_id))
        print(f"renewal of the {FIRST_LIFETIME} certificate: new tunnel up {tunnels[1] - signed:.2f}s"
              f" after the plane signed; {len(calls)} relayed calls during it, all 200")  # fmt: skip
        check_health(plane, str(gw_id), spec.version)
        check_support_bundle(plane, str(gw_id), tmp_path, [token[5:], token[5:][-24:], hashed, hashed[-30:]])
    finally:
        stop(proc, tmp_path)
    registered = json.loads((plane.state_dir / "gateways.json").read_text())

    # Second boot of the same disk: the tunnel comes back with the stored identity.
    guest2 = Guest(disk, tmp_path, (plane.port, target))
    proc = run_qemu(guest2)
    try:
        wait_for(lambda: bool(connected_gateways(plane)), 900, "the tunnel after reboot", guest2.console)
        (gw2,) = connected_gateways(plane)
        assert gw2["gateway_id"] == gw_id
        assert json.loads((plane.state_dir / "gateways.json").read_text()) == registered  # no re-registration
    finally:
        stop(proc, tmp_path)


def test_seeded_by_ovf_iso_registers(
    artifacts: dict[str, Path], plane: Plane, target: int, spec: Spec, tmp_path: Path
) -> None:
    if not shutil.which("xorriso"):
        pytest.fail("xorriso is missing: run 'make setup'")
    env_dir = tmp_path / "iso"
    env_dir.mkdir()
    (env_dir / "ovf-env.xml").write_text(
        render_ovf_environment(spec, {"gateway.join_token": plane.token(), "network.hostname": "gw-iso"})
    )
    iso = tmp_path / "ovf-env.iso"
    mkisofs = [
        "xorriso",
        "-as",
        "mkisofs",
        "-quiet",
        "-V",
        "OVF ENV",
        "-J",
        "-R",
        "-o",
        str(iso),
        str(env_dir),
    ]
    subprocess.run(mkisofs, check=True, capture_output=True)
    disk = overlay(artifacts["qcow2"], tmp_path / "disk.qcow2")
    known = {g["gateway_id"] for g in connected_gateways(plane)}
    guest = Guest(disk, tmp_path, (plane.port, target), ovf_iso=iso,
                  credentials={"tmpfiles.extra": targets_credential(target)})  # fmt: skip
    proc = run_qemu(guest)
    try:
        wait_for(
            lambda: new_gateway_connected(plane, known), 900, "the ISO-seeded gateway's tunnel", guest.console
        )
    finally:
        stop(proc, tmp_path)


def test_wrong_ca_hash_is_refused_on_the_console(
    artifacts: dict[str, Path], plane: Plane, tmp_path: Path
) -> None:
    token = plane.token()
    payload = json.loads(base64.urlsafe_b64decode(token[5:] + "=" * (-len(token[5:]) % 4)))
    payload["h"] = "sha256:" + "00" * 32  # the pin no longer matches the plane's CA
    forged = "GWJ1." + base64.urlsafe_b64encode(
        json.dumps(payload, separators=(",", ":")).encode()
    ).decode().rstrip("=")
    disk = overlay(artifacts["qcow2"], tmp_path / "disk.qcow2")
    guest = Guest(disk, tmp_path, (plane.port,), credentials={"gateway.join_token": forged})
    proc = run_qemu(guest)
    try:
        wait_for(lambda: "interception" in guest.console(), 900, "the refusal on the console", guest.console)
    finally:
        stop(proc, tmp_path, timeout=60)
    assert "possible interception" in guest.console()


def renewal_signed_at(plane: Plane, gateway_id: str) -> float:
    """When the plane signed the gateway's (first) renewal, from its log."""
    pattern = re.compile(rf"^(\S+ \S+) \w+ mgmtplane\.identity: gateway {gateway_id}: renewed", re.MULTILINE)
    (stamp, *_rest) = pattern.findall(plane.log_path.read_text())
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def ssh_keypair(tmp_path: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair for the admin user: (private key file, public key line)."""
    key = tmp_path / "id_ed25519"
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e@host", "-f", str(key)]
    subprocess.run(argv, check=True)
    return key, key.with_name("id_ed25519.pub").read_text().strip()


def ssh_admin(key: Path, port: int, command: str) -> subprocess.CompletedProcess[str]:
    """Run a command over SSH as admin through the host forward (loopback only)."""
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=60",
            "admin@127.0.0.1", command]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def shell(child: pexpect.spawn, marker: str, command: str) -> str:
    """Run a command in the serial console's shell; returns its output (one line).

    It is printed after `marker=`, spelt `M''ARKER=` on the command line, so that the terminal's
    echo of the typed line cannot match.
    """
    child.sendline(f"echo {marker[0]}''{marker[1:]}=$({command})")
    child.expect(rf"{marker}=([^\r\n]*)\r*\n")
    return str(child.match.group(1)).strip()


def test_wizard_over_the_serial_console(
    artifacts: dict[str, Path], plane: Plane, target: int, tmp_path: Path
) -> None:
    """An operator at the serial console: the wizard, then a login with the password it set, and SSH."""
    disk = overlay(artifacts["qcow2"], tmp_path / "disk.qcow2")
    known = {g["gateway_id"] for g in connected_gateways(plane)}
    key, pubkey = ssh_keypair(tmp_path)
    password = "e2e-Console-pw-4711"
    ssh_port = free_port()
    token = plane.token()
    secret_part = token[5:][-24:]  # never on the console: the token is typed blind like a password
    problems: list[str] = []  # checks that do not stop the session are reported together at the end
    # The serial console on QEMU's stdio, driven like an operator at a serial terminal.
    guest = Guest(disk, tmp_path, (plane.port, target), serial_file=False,
                  credentials={"tmpfiles.extra": targets_credential(target)},
                  forwards=(Forward(ssh_port, 22),))  # fmt: skip
    cmd = guest.cmd
    start = time.monotonic()
    child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", timeout=900, codec_errors="replace")
    child.logfile_read = open(tmp_path / "wizard-console.log", "w")  # noqa: SIM115 - closed below
    try:
        child.expect_exact("Network mode (dhcp or static) [dhcp]: ")
        wizard_shown = time.monotonic() - start
        child.timeout = 120
        child.sendline("")
        for prompt in ("DNS servers", "Host name", "NTP servers", "Outbound proxy"):
            child.expect_exact(prompt)
            child.expect(r"\]: ")
            child.sendline("gw-wizard" if prompt == "Host name" else "")
        child.expect_exact("Join token (GWJ1.... from the management plane) []: ")
        child.sendline(token)
        # What the token carries is shown before anything else is asked or applied.
        child.expect_exact("Plane URL (empty = taken from the join token) []: ")
        shown = child.before
        if secret_part in shown:
            problems.append(f"the join token was echoed on the console: {shown!r}")
        ca = token_ca_hash(token)
        for want in (
            f"Plane: https://{HOST_ALIAS}:{plane.port}   CA {ca[:23]}...",
            "Join token: GWJ1.********",
        ):
            if want not in shown:
                problems.append(f"{want!r} not shown after the token was typed: {shown!r}")
        child.sendline("")
        child.expect_exact("Admin SSH key")
        child.expect(r"\]: ")
        child.sendline(pubkey)
        for prompt in ("Console password", "Repeat password"):
            child.expect_exact(prompt)
            child.expect(r"\]: ")
            child.sendline(password)
        child.expect_exact("[r]estart: ")
        if f"Plane CA (pinned)      {ca}" not in child.before:
            problems.append(f"the review does not show the pinned CA {ca}")
        child.sendline("y")
        child.timeout = 600
        index = child.expect_exact(["Keep these network settings?", "First boot complete."])
        if index == 0:
            child.sendline("y")
            child.expect_exact("First boot complete.")
        took = time.monotonic() - start
        wait_for(lambda: new_gateway_connected(plane, known), 600, "the wizard-configured gateway's tunnel")
        print(f"wizard shown after {wizard_shown:.0f}s; good path done after {took:.0f}s")

        # SSH with the key the wizard was given: sshd runs and the firewall lets port 22 in.
        proc = ssh_admin(key, ssh_port, "echo SSH-OK $(id -un)")
        if "SSH-OK admin" not in proc.stdout:
            problems.append(
                f"ssh as admin with the wizard's key failed ({proc.returncode}): {proc.stderr[-300:]!r}"
            )

        # The serial console is handed to a login prompt; the wizard's password opens a shell.
        child.timeout = 120
        child.expect(r"login: ")
        child.sendline("admin")
        child.expect_exact("Password: ")
        child.sendline(password)
        child.expect(r"admin@gw-wizard:~\$ ")
        logged_in = time.monotonic() - start
        assert shell(child, "ID", "id").startswith("uid=1000(admin) gid=1000(admin)")
        assert shell(child, "GW", "systemctl is-active gateway") == "active"
        # sudo asks for the same password: the operator can administer the appliance.
        as_root = f"echo '{password}' | sudo -S -p '' "
        assert shell(child, "SUDO", as_root + "id -u") == "0"
        # SSH takes keys only: the console password is not an SSH password.
        pwauth = shell(child, "PWAUTH", as_root + "sshd -T | grep -i '^passwordauthentication'")
        if pwauth.lower() != "passwordauthentication no":
            problems.append(f"sshd accepts passwords: {pwauth!r}")
        print(f"serial console login as admin after {logged_in:.0f}s")
        child.sendline("exit")
    except Exception as exc:
        if problems:  # say what else went wrong before the step that stopped the session
            raise AssertionError("\n".join([*problems, f"then: {type(exc).__name__}: {exc}"[:2000]])) from exc
        raise
    finally:
        child.logfile_read.close()
        if child.isalive():
            child.kill(signal.SIGKILL)
        child.close()
    assert not problems, "\n".join(problems)


def token_ca_hash(token: str) -> str:
    """The plane CA's SPKI hash a join token pins (`sha256:<hex>`), as the wizard shows it."""
    payload = json.loads(base64.urlsafe_b64decode(token[5:] + "=" * (-len(token[5:]) % 4)))
    return str(payload["h"])

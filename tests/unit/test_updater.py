"""The appliance-side updater's pure parts and its decisions, on directory trees in tmp_path.

grub's state goes through the real grub-editenv on a real grubenv file; `rauc status mark-*`, which
needs RAUC's service on an appliance, is played by the same grub-editenv writes RAUC's grub backend
makes (X_OK/X_TRY), so the state the tests read is the state grub would read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from updater import state
from updater.errors import UpdateError
from updater.health import Verdict, health, judge, notice_outcomes, tunnel_state
from updater.install import check_version
from updater.rauc import Rauc, reason
from updater.system import Appliance, booted_slot, grubenv_vars, os_release, rauc_config
from updater.version import Version

GRUB_EDITENV = shutil.which("grub-editenv")


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("0.1.0", "0.1.1"),
        ("0.9.0", "0.10.0"),
        ("1.0.0~rc1", "1.0.0"),
        ("1.0.0~rc1", "1.0.0~rc2"),
        ("1.0.0", "1.0.0-2"),
        ("1.0.0", "1.0.1~rc1"),
        ("1.2", "1.10"),
    ],
)
def test_version_order(lower: str, higher: str) -> None:
    assert Version(lower) < Version(higher)
    assert Version(higher) > Version(lower)


def test_version_trailing_zeros_are_equal() -> None:
    assert Version("1.0") == Version("1.0.0")
    assert hash(Version("1.0")) == hash(Version("1.0.0"))


@pytest.mark.parametrize("text", ["", "v1.0", "1..0", "1.0 beta", "latest", "1.0\n[x]"])
def test_version_rejects_garbage(text: str) -> None:
    with pytest.raises(UpdateError, match="not a version"):
        Version(text)


def test_check_version_refuses_downgrade_and_reinstall_unless_allowed() -> None:
    check_version("0.1.0", "0.2.0", allow_downgrade=False)
    with pytest.raises(UpdateError, match=r"0\.0\.9 is older than the running 0\.1\.0"):
        check_version("0.1.0", "0.0.9", allow_downgrade=False)
    with pytest.raises(UpdateError, match="already running"):
        check_version("0.1.0", "0.1.0", allow_downgrade=False)
    check_version("0.1.0", "0.0.9", allow_downgrade=True)
    check_version("0.1.0", "0.1.0", allow_downgrade=True)


def test_booted_slot_from_the_kernel_command_line() -> None:
    assert booted_slot("BOOT_IMAGE=x root=/dev/disk/by-partlabel/root-b ro rauc.slot=B quiet") == "B"
    assert booted_slot("root=/dev/sda3 ro") is None
    assert booted_slot("rauc.slot=C") is None
    assert booted_slot("rauc.slot") is None


def test_os_release_and_grubenv_and_rauc_config() -> None:
    assert os_release('IMAGE_VERSION="0.2.0"\nID=debian\n# x=y\nBAD="unterminated\n') == {
        "IMAGE_VERSION": "0.2.0",
        "ID": "debian",
    }
    assert grubenv_vars("ORDER=B A\nA_OK=1\n# comment\n") == {"ORDER": "B A", "A_OK": "1"}
    conf = rauc_config("[system]\ncompatible=gateway\ngrubenv=/efi/grub/grubenv\n", "system.conf")
    assert (conf.compatible, str(conf.grubenv)) == ("gateway", "/efi/grub/grubenv")
    with pytest.raises(UpdateError, match="system.conf: No option 'grubenv'"):
        rauc_config("[system]\ncompatible=gateway\n", "system.conf")


def test_reason_picks_the_line_that_says_why() -> None:
    out = (
        "rauc-Message: 10:00:00.123: Reading bundle: /tmp/b.raucb\n"
        "rauc-Message: 10:00:00.200: Verifying bundle signature...\n"
        "signature verification failed: Verify error:unable to get local issuer certificate\n"
    )
    assert reason(out) == "signature verification failed: Verify error:unable to get local issuer certificate"
    installing = (
        "installing\n  0% Installing\n 20% Checking bundle\nLastError: Compatible mismatch: Expected 'a'\n"
    )
    assert reason(installing) == "Compatible mismatch: Expected 'a'"
    assert reason("") == "no output"
    assert len(reason("error " + "x" * 1000)) == 400


def test_tunnel_state_prefers_a_fresh_status_file() -> None:
    fresh = json.dumps({"state": "connected", "updated_at": 1000.0, "interval": 15}).encode()
    assert tunnel_state("tunnel backoff: refused", fresh, now=1010.0) == "connected"
    assert tunnel_state("tunnel connected", fresh, now=2000.0) == "stale"
    assert tunnel_state("tunnel connected", None, now=0) == "connected"
    assert tunnel_state("tunnel backoff: connection refused", None, now=0) == "backoff"
    assert tunnel_state("tunnel connected", b"{torn", now=0) == "connected"
    assert tunnel_state("", None, now=0) == ""


# ---------------------------------------------------------------------------------------------
# An appliance tree, grub's state in a real grubenv, and RAUC's mark-* as its grub backend does them.


class FakeSystemd:
    """Answers systemctl's questions from a table, in `systemctl show`'s key=value terms."""

    def __init__(self, units: dict[str, dict[str, str]] | None = None, boot: str = "running") -> None:
        self.units = units or {}
        self.boot = boot
        self.rebooted = False

    def system_state(self) -> str:
        return self.boot

    def show(self, unit: str, *props: str) -> dict[str, str]:
        values = {"ActiveState": "inactive", "SubState": "dead", "NRestarts": "0", "StatusText": ""}
        values.update(self.units.get(unit, {}))
        return {p: values[p] for p in props}

    def reboot(self) -> None:
        self.rebooted = True


def appliance(
    tmp_path: Path, slot: str = "A", version: str = "0.1.0", *, firstboot_done: bool = True
) -> Appliance:
    root = tmp_path / "root"
    for rel, text in {
        "proc/cmdline": f"root=/dev/disk/by-partlabel/root-{slot.lower()} ro rauc.slot={slot}\n",
        "proc/uptime": "93.5 12.0\n",
        "usr/lib/os-release": f'ID=debian\nIMAGE_VERSION="{version}"\n',
        "usr/lib/rauc/system.conf": f"[system]\ncompatible=gateway\ngrubenv={tmp_path}/grubenv\n",
        "var/lib/gateway/cert.pem": "x",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if firstboot_done:
        (root / "var/lib/firstboot").mkdir(parents=True)
        (root / "var/lib/firstboot/done").write_text("x")
    return Appliance(root)


class GrubRauc(Rauc):
    """Rauc whose grub-editenv calls are real and whose `status mark-*` writes what RAUC's grub
    backend writes; `install` is refused (RAUC's service and slot devices are on the appliance)."""

    def __init__(self, grubenv: Path, booted: str) -> None:
        super().__init__(run=self._run)
        self.grubenv_file = grubenv
        self.booted = booted
        self.calls: list[list[str]] = []
        subprocess.run([GRUB_EDITENV, str(grubenv), "create"], check=True)
        initial = ["ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"]
        subprocess.run([GRUB_EDITENV, str(grubenv), "set", *initial], check=True)

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "rauc" and argv[1:3] in (["status", "mark-good"], ["status", "mark-bad"]):
            ok = "1" if argv[2] == "mark-good" else "0"
            argv = [
                GRUB_EDITENV or "",
                str(self.grubenv_file),
                "set",
                f"{self.booted}_OK={ok}",
                f"{self.booted}_TRY=0",
            ]
        elif argv[0] == "grub-editenv":
            argv[0] = GRUB_EDITENV or ""
        else:
            return subprocess.CompletedProcess(argv, 1, "", "rauc service not reachable in unit tests")
        return subprocess.run(argv, capture_output=True, text=True, check=False)


pytestmark = pytest.mark.skipif(
    GRUB_EDITENV is None, reason="grub-editenv (grub-common) is a build-host tool"
)


def no_sleep(seconds: float) -> None:
    del seconds


def test_proven_slot_is_marked_good_once_booted_even_without_the_tunnel(tmp_path: Path) -> None:
    app = appliance(tmp_path)
    rauc = GrubRauc(tmp_path / "grubenv", "A")
    rauc.grubenv_set(tmp_path / "grubenv", A_TRY="1")  # grub counted this boot
    systemd = FakeSystemd({"gateway.service": {"ActiveState": "activating", "StatusText": "tunnel backoff"}})
    assert health(app, rauc, systemd, sleep=no_sleep) == 0
    env = rauc.grubenv(tmp_path / "grubenv")
    assert (env["A_OK"], env["A_TRY"]) == ("1", "0")
    assert not systemd.rebooted


def test_trial_slot_connected_is_marked_good_and_recorded(tmp_path: Path) -> None:
    app = appliance(tmp_path, slot="B", version="0.2.0")
    rauc = GrubRauc(tmp_path / "grubenv", "B")
    rauc.grubenv_set(tmp_path / "grubenv", ORDER="B A", B_OK="1", B_TRY="3")
    pending = {"version": "0.2.0", "slot": "B", "from_version": "0.1.0", "from_slot": "A"}
    state.save(app.state_file, {"pending": pending})
    systemd = FakeSystemd({"gateway.service": {"ActiveState": "active", "StatusText": "tunnel connected"}})
    assert health(app, rauc, systemd, sleep=no_sleep) == 0
    env = rauc.grubenv(tmp_path / "grubenv")
    assert (env["ORDER"], env["B_OK"], env["B_TRY"]) == ("B A", "1", "0")
    record = state.load(app.state_file)
    assert "pending" not in record
    assert record["last"]["result"] == "installed"
    assert record["last"]["reason"] == "the gateway is connected to the plane"


def test_trial_slot_whose_gateway_cannot_start_is_marked_bad_and_reboots(tmp_path: Path) -> None:
    app = appliance(tmp_path, slot="A", version="0.3.0")
    rauc = GrubRauc(tmp_path / "grubenv", "A")
    rauc.grubenv_set(tmp_path / "grubenv", ORDER="A B", A_TRY="3", B_OK="1", B_TRY="0")
    state.save(app.state_file, {"pending": {"version": "0.3.0", "slot": "A", "from_version": "0.2.0"}})
    systemd = FakeSystemd({"gateway.service": {"ActiveState": "activating", "NRestarts": "3"}})
    assert health(app, rauc, systemd, sleep=no_sleep) == 1
    assert systemd.rebooted
    env = rauc.grubenv(tmp_path / "grubenv")
    assert (env["A_OK"], env["B_OK"]) == ("0", "1")  # grub now boots B
    assert state.load(app.state_file)["trial_failure"] == "gateway.service cannot start (restarted 3 times)"

    # The next boot is slot B: it records the rollback with the trial's reason.
    back = appliance(tmp_path / "b", slot="B", version="0.2.0")
    back.state_file.parent.mkdir(parents=True)
    shutil.copy(app.state_file, back.state_file)
    rauc_b = GrubRauc(tmp_path / "grubenv-b", "B")
    assert health(back, rauc_b, FakeSystemd(), sleep=no_sleep) == 0
    last = state.load(back.state_file)["last"]
    assert last["result"] == "rolled-back"
    assert last["reason"] == "gateway.service cannot start (restarted 3 times)"


def test_trial_times_out_while_the_tunnel_stays_down(tmp_path: Path) -> None:
    app = appliance(tmp_path, slot="B", version="0.2.0")
    rauc = GrubRauc(tmp_path / "grubenv", "B")
    state.save(app.state_file, {"pending": {"version": "0.2.0", "slot": "B"}})
    ticks = iter(range(0, 10_000, 100))
    systemd = FakeSystemd(
        {"gateway.service": {"ActiveState": "active", "StatusText": "tunnel backoff: refused"}}
    )
    assert (
        health(app, rauc, systemd, trial_seconds=600, clock=lambda: float(next(ticks)), sleep=no_sleep) == 1
    )
    assert (
        "not healthy after 600 s (gateway.service active, tunnel backoff)"
        in state.load(app.state_file)["trial_failure"]
    )


def test_trial_waiting_for_the_operator_is_healthy(tmp_path: Path) -> None:
    app = appliance(tmp_path, slot="B", firstboot_done=False)
    assert judge(app, FakeSystemd(), 0.0) == Verdict(True, "first boot is waiting for its operator")
    failed = FakeSystemd({"systemd-networkd.service": {"ActiveState": "failed"}})
    assert judge(app, failed, 0.0) == Verdict(False, "systemd-networkd.service failed")


def test_interrupted_install_and_a_slot_that_never_booted_are_recorded() -> None:
    record = {
        "installing": {"version": "0.2.0", "slot": "B"},
        "pending": {"version": "0.2.0", "slot": "B"},
    }
    messages = notice_outcomes(record, "A", "0.1.0")
    assert record["last"]["result"] == "rolled-back"
    assert "did not finish booting" in record["last"]["reason"]
    assert len(messages) == 2 and "cut off" in messages[0]
    record = {"installing": {"version": "0.2.0", "slot": "B"}}
    notice_outcomes(record, "A", "0.1.0")
    assert record["last"]["result"] == "interrupted"
    assert "installing" not in record


class InstallingRauc(GrubRauc):
    """GrubRauc whose `rauc info` reads a manifest from a dict and whose `rauc install` makes the
    grubenv writes RAUC's install makes: target bad while writing, then primary."""

    def __init__(self, grubenv: Path, booted: str, manifest: dict[str, str], fail: str = "") -> None:
        super().__init__(grubenv, booted)
        self.manifest = manifest
        self.fail = fail

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        target = "B" if self.booted == "A" else "A"
        if argv[:2] == ["rauc", "info"]:
            self.calls.append(argv)
            return subprocess.CompletedProcess(argv, 0, json.dumps(self.manifest), "")
        if argv[:2] == ["rauc", "install"]:
            self.calls.append(argv)
            env = self.grubenv_file
            subprocess.run(
                [GRUB_EDITENV or "", str(env), "set", f"{target}_OK=0", f"{target}_TRY=0"], check=True
            )
            if self.fail:
                return subprocess.CompletedProcess(argv, 1, "", f"LastError: {self.fail}\n")
            order = f"ORDER={target} {self.booted}"
            subprocess.run(
                [GRUB_EDITENV or "", str(env), "set", f"{target}_OK=1", f"{target}_TRY=0", order], check=True
            )
            return subprocess.CompletedProcess(argv, 0, "", "")
        return super()._run(argv)


def test_install_records_the_trial_and_leaves_the_new_slot_one_attempt(tmp_path: Path) -> None:
    from updater.install import install

    app = appliance(tmp_path)
    bundle = tmp_path / "next.raucb"
    bundle.write_bytes(b"bundle")
    rauc = InstallingRauc(tmp_path / "grubenv", "A", {"compatible": "gateway", "version": "0.2.0"})
    done = install(app, rauc, bundle)
    assert (done.version, done.slot) == ("0.2.0", "B")
    env = rauc.grubenv(tmp_path / "grubenv")
    assert (env["ORDER"], env["B_OK"], env["B_TRY"], env["A_OK"]) == ("B A", "1", "2", "1")
    record = state.load(app.state_file)
    assert "installing" not in record
    assert record["pending"]["slot"] == "B" and record["pending"]["from_version"] == "0.1.0"


def test_failed_install_is_recorded_and_leaves_the_running_slot_first(tmp_path: Path) -> None:
    from updater.install import install

    app = appliance(tmp_path)
    bundle = tmp_path / "next.raucb"
    bundle.write_bytes(b"bundle")
    rauc = InstallingRauc(tmp_path / "grubenv", "A", {"compatible": "gateway", "version": "0.2.0"},
                          fail="Failed to read bundle: Input/output error")  # fmt: skip
    with pytest.raises(UpdateError) as err:
        install(app, rauc, bundle)
    assert err.value.message == (
        f"{bundle}: install of 0.2.0 into slot B failed: Failed to read bundle: Input/output error"
    )
    env = rauc.grubenv(tmp_path / "grubenv")
    assert (env["ORDER"], env["A_OK"], env["B_OK"]) == ("A B", "1", "0")
    record = state.load(app.state_file)
    assert record["last"]["result"] == "failed" and "pending" not in record and "installing" not in record

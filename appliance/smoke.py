"""Smoke test: boot an artifact, let the in-guest check judge it, and return its verdict."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.qemu import EXIT_FAIL, EXIT_PASS, BootOptions, accelerator, qemu_command

log = logging.getLogger(__name__)

VERDICT_PREFIX = "APPLIANCE-SMOKE:"
# The console is ready for an operator when it shows a login prompt or, on an unconfigured
# appliance, the first-boot wizard's first question.
CONSOLE_READY = (b"login:", b"Network mode (dhcp or static)")


@dataclass(frozen=True)
class SmokeResult:
    """What one smoke boot showed: the verdict, the reasons, how long it took and where."""

    passed: bool
    problems: tuple[str, ...]
    seconds: float
    accel: str
    console: str
    login_seconds: float | None
    info: dict[str, str] = dataclasses.field(default_factory=dict)


def console_text(raw: bytes) -> str:
    """The serial log as text, with terminal escape sequences removed."""
    import re

    text = raw.decode("utf-8", "replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07", "", text)


def smoke(opts: BootOptions, *, version: str, timeout: float = 900) -> SmokeResult:
    """Boot opts.image with the smoke credential; the guest reports through isa-debug-exit."""
    accel = accelerator(opts.accel, opts.image)
    with tempfile.TemporaryDirectory(prefix="appliance-smoke-") as tmp:
        log_path = Path(tmp) / "serial.log"
        credentials = {**opts.credentials, "appliance.smoke": version}
        run_opts = dataclasses.replace(opts, serial_log=log_path, debug_exit=True, snapshot=True,
                                       accel=accel, credentials=credentials)  # fmt: skip
        cmd = qemu_command(run_opts, Path(tmp))
        log.info("smoke-booting %s under %s (%s firmware, %s disk, %s NIC)",
                 opts.image.name, accel.upper(), opts.firmware, opts.disk, opts.nic)  # fmt: skip
        start = time.monotonic()
        login_at: float | None = None
        # QEMU's own output goes to a file: a pipe nobody reads could fill and stall it.
        qemu_log = Path(tmp) / "qemu.log"
        with (
            open(qemu_log, "wb") as out,
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT) as proc,
        ):
            try:
                while proc.poll() is None:
                    if time.monotonic() - start > timeout:
                        console = console_text(log_path.read_bytes() if log_path.exists() else b"")
                        raise ApplianceError(
                            f"{opts.image}: no verdict after {timeout:.0f}s under {accel.upper()}; console:\n"
                            + "\n".join(console.splitlines()[-40:])
                        )
                    if login_at is None and log_path.exists():
                        seen = log_path.read_bytes()
                        if any(marker in seen for marker in CONSOLE_READY):
                            login_at = time.monotonic() - start
                    time.sleep(0.5)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        elapsed = time.monotonic() - start
        console = console_text(log_path.read_bytes() if log_path.exists() else b"")
        qemu_output = qemu_log.read_text(errors="replace")
    verdicts = [
        line.split(VERDICT_PREFIX, 1)[1].strip() for line in console.splitlines() if VERDICT_PREFIX in line
    ]
    problems = tuple(v.removeprefix("FAIL:").strip() for v in verdicts if v.startswith("FAIL"))
    info = dict(
        v.removeprefix("INFO:").strip().split("=", 1) for v in verdicts if v.startswith("INFO:") and "=" in v
    )
    if proc.returncode == EXIT_PASS:
        return SmokeResult(True, (), elapsed, accel, console, login_at, info)
    if proc.returncode == EXIT_FAIL:
        problems = problems or ("the guest reported failure",)
        return SmokeResult(False, problems, elapsed, accel, console, login_at, info)
    tail = "\n".join((qemu_output.strip().splitlines() + console.splitlines())[-40:])
    raise ApplianceError(
        f"{opts.image}: QEMU exited with status {proc.returncode} and no verdict; console:\n{tail}"
    )

"""The one way the build runs other programs: argument lists, no shell, stdin from /dev/null."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)

# What each external tool is for and which Debian package provides it, for "X not found" errors.
TOOLS: dict[str, tuple[str, str]] = {
    "mkosi": ("building the image", "mkosi (bookworm-backports)"),
    "qemu-img": ("converting the disk to qcow2", "qemu-utils"),
    "qemu-system-x86_64": ("booting images", "qemu-system-x86"),
    "grub-bios-setup": ("installing the BIOS boot loader", "grub-pc-bin"),
    "sfdisk": ("resizing the partition table", "fdisk"),
    "xorriso": ("making the OVF environment ISO", "xorriso"),
    "socat": ("letting a guest reach host loopback ports", "socat"),
    "rauc": ("building the signed update bundle", "rauc"),
    "mksquashfs": ("building the update bundle's payload", "squashfs-tools"),
    "openssl": ("signing SHA256SUMS", "openssl"),
}


class ProcessError(ApplianceError):
    """A command failed: carries the command, its exit code and both output streams."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        tail = (stderr or stdout).strip().splitlines()[-1:] or [""]
        super().__init__(f"{shlex.join(cmd)}: exit code {returncode}: {tail[0]}")
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def find_tool(name: str) -> str:
    """The absolute path of a tool, or an error saying what it is for and where it comes from."""
    path = shutil.which(name) or (f"/usr/lib/grub/i386-pc/{name}" if name.startswith("grub-") else None)
    if path and os.access(path, os.X_OK):
        return path
    purpose, package = TOOLS.get(name, ("the build", name))
    raise ApplianceError(
        f"{name} not found; it is needed for {purpose}", hint=f"install {package}, or run 'make setup'"
    )


def run(
    cmd: Sequence[str | Path],
    *,
    capture: bool = False,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command. With capture=False its output streams to ours (a long build shows progress)."""
    argv = [str(c) for c in cmd]
    argv[0] = find_tool(argv[0]) if "/" not in argv[0] else argv[0]
    log.debug("+ %s", shlex.join(argv))
    full_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            text=True,
            cwd=cwd,
            env=full_env,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ApplianceError(f"{argv[0]} not found") from exc
    if check and proc.returncode != 0:
        raise ProcessError(argv, proc.returncode, proc.stdout or "", proc.stderr or "")
    return proc

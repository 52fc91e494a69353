"""The system boundary: path redirection (--root), the one run() wrapper, atomic writes."""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.errors import FirstbootError
from gwcore.atomic import write_atomic

log = logging.getLogger(__name__)

# Which Debian package provides a tool, for the "not found" message.
_PROVIDERS = {
    "vmware-rpctool": "open-vm-tools",
    "hostnamectl": "systemd",
    "systemctl": "systemd",
    "networkctl": "systemd",
    "journalctl": "systemd",
    "usermod": "passwd",
    "blkid": "util-linux",
    "mount": "mount",
    "umount": "mount",
}


class CommandError(FirstbootError):
    """A command failed: carries the command, exit code and output (ProcessExecutionError)."""

    def __init__(self, argv: Sequence[str], code: int, stdout: str, stderr: str) -> None:
        last = (stderr or stdout).strip().splitlines()
        detail = last[-1] if last else "no output"
        super().__init__(f"`{shlex.join(argv)}` failed with exit code {code}: {detail}")
        self.argv = list(argv)
        self.code = code
        self.stdout = stdout
        self.stderr = stderr


@dataclass
class System:
    """Where first boot acts: the live system (root=/) or a directory tree that only records commands."""

    root: Path = Path("/")
    record_only: bool = False
    recorded: list[list[str]] = field(default_factory=list)

    @classmethod
    def for_args(cls, root: str | None) -> System:
        """The live system, or a redirected tree when --root is given."""
        if root is None or Path(root).resolve() == Path("/"):
            return cls()
        return cls(root=Path(root).resolve(), record_only=True)

    @property
    def live(self) -> bool:
        return not self.record_only

    def path(self, absolute: str) -> Path:
        """Map an absolute system path into the root."""
        return self.root / absolute.lstrip("/")

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120,
        input_text: str | None = None,
        why: str = "",
        always: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (argument list, no shell); with --root it is only recorded unless always=True."""
        argv = [str(a) for a in argv]
        log.debug("+ %s", shlex.join(argv))
        if self.record_only and not always:
            self.recorded.append(argv)
            log.info("would run: %s", shlex.join(argv))
            return subprocess.CompletedProcess(argv, 0, "", "")
        if shutil.which(argv[0]) is None:
            pkg = _PROVIDERS.get(Path(argv[0]).name)
            hint = f"install {pkg}" if pkg else None
            raise FirstbootError(f"{argv[0]} not found{' (needed to ' + why + ')' if why else ''}", hint)
        try:
            proc = subprocess.run(
                argv,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FirstbootError(f"`{shlex.join(argv)}` did not finish within {timeout:g} s") from None
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def has(self, tool: str) -> bool:
        """Whether a tool exists (always False in record-only mode, so nothing probes the host)."""
        return self.live and shutil.which(tool) is not None


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> bool:
    """Write via temp file + fsync + os.replace in the same directory; returns False if unchanged."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if path.read_bytes() == raw and (path.stat().st_mode & 0o777) == mode:
            return False
    except OSError:
        pass
    write_atomic(path, raw, mode)
    return True


def remove(path: Path) -> bool:
    """Remove a file if present; returns whether it existed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def read_os_release(system: System) -> dict[str, str]:
    """/etc/os-release (or /usr/lib/os-release) as a dict; empty if absent."""
    for name in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = system.path(name).read_text()
        except OSError:
            continue
        out = {}
        for line in text.splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                try:
                    out[key.strip()] = " ".join(shlex.split(value))
                except ValueError:
                    out[key.strip()] = value.strip().strip("\"'")
        return out
    return {}

"""Everything one wizard run needs, shared by the urwid and line views."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from firstboot import apply as applier
from firstboot.seeds import SeedContext, resolve
from firstboot.system import System, read_os_release
from firstboot.wizard.flow import hash_password
from firstboot.wizard.model import PASSWORD, PASSWORD2, Answers, Screen, WizardModel


@dataclass
class Session:
    system: System
    model: WizardModel
    answers: Answers | None = None
    simulate_register: bool = False
    revert_after: float = 60.0
    console: str | None = None
    dry_run_root: Path | None = None
    applied: bool = field(default=False)

    def answer(self, key: str) -> str | None:
        """The answers file's value for a field, if it drives this run."""
        if self.answers is None:
            return None
        if key == PASSWORD2:  # an answers file gives the password once
            key = PASSWORD
        return self.answers.values.get(key)

    def commit(self, screen: Screen, entries: dict[str, str]) -> None:
        """Store a validated screen; a typed password becomes a crypt hash at once (never stored)."""
        password = entries.pop(PASSWORD, "")
        entries.pop("admin.password2", None)
        if password:
            self.model.values["admin.password_hash"] = hash_password(self.system, password)
            self.model.sources["admin.password_hash"] = "wizard"
        self.model.store(screen, entries)


def load_model(system: System, *, probe: bool = True) -> WizardModel:
    """Prefill from seeds and any saved unfinished run; the version and last error for the welcome screen."""
    resolved = resolve(SeedContext(system=system, probe=probe))
    model = WizardModel(values=dict(resolved.values), sources=dict(resolved.sources))
    saved = applier.saved_settings(system)
    if saved is not None:
        for key, value in saved.raw().items():
            model.values.setdefault(key, value)
            model.sources.setdefault(key, "saved-state")
    release = read_os_release(system)
    model.version = release.get("IMAGE_VERSION") or release.get("VERSION_ID") or "unknown"
    model.last_error = applier.last_error(system)
    model.last_reason = applier.last_reason(system)
    return model


def appliance_info(system: System) -> list[str]:
    """Lines for the welcome screen: host name and addresses."""
    lines = [f"Host name: {socket.gethostname() if system.live else '(dry run)'}"]
    if system.live:
        proc = system.run(["ip", "-brief", "address"], check=False, timeout=5)
        for line in proc.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] != "lo":
                lines.append(f"  {fields[0]:<10} {fields[1]:<6} {' '.join(fields[2:])}")
    return lines

"""The updater's calls of RAUC and grub-editenv, through one runner, with RAUC's errors as one line."""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from updater.errors import UpdateError

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

# RAUC prefixes and progress chatter that say nothing about why it failed.
_NOISE = re.compile(r"^(rauc-(Message|Warning|Critical|Info|Debug)|installing|\d+% )", re.IGNORECASE)
_PREFIX = re.compile(r"^(rauc-\w+:\s*(\d\d:\d\d:\d\d\.\d+:\s*)?|LastError:\s*|error:\s*)", re.IGNORECASE)
_USEFUL = re.compile(r"error|fail|mismatch|invalid|refus|not |denied|unable|corrupt|verif", re.IGNORECASE)


def reason(output: str) -> str:
    """The one line of RAUC's output that best says why a command failed."""
    lines = [_PREFIX.sub("", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line and not _NOISE.match(line)]
    useful = [line for line in lines if _USEFUL.search(line)]
    # RAUC nests causes as "A: B: C"; its LastError line carries the whole chain, usually last.
    picked = (useful or lines or ["no output"])[-1]
    return picked if len(picked) <= 400 else picked[:397] + "..."


def default_runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    log.debug("+ %s", shlex.join(argv))
    try:
        return subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=3600
        )
    except FileNotFoundError:
        raise UpdateError(f"{argv[0]} not found (the image installs it)") from None
    except subprocess.TimeoutExpired:
        raise UpdateError(f"{shlex.join(argv)}: no answer in an hour") from None


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle's signed manifest says."""

    compatible: str
    version: str


@dataclass
class Rauc:
    """RAUC on this appliance (the service does installs; the CLI talks to it over D-Bus)."""

    run: Runner = default_runner
    conf: Path | None = None  # RAUC's own search path (/usr/lib/rauc/system.conf) when None

    def _rauc(self, *args: str) -> list[str]:
        return ["rauc", *([f"--conf={self.conf}"] if self.conf else []), *args]

    def info(self, bundle: Path) -> BundleInfo:
        """The bundle's manifest, after RAUC verified its signature against the image's keyring."""
        proc = self.run(self._rauc("info", "--output-format=json", str(bundle)))
        if proc.returncode != 0:
            raise UpdateError(f"{bundle}: refused: {reason(proc.stderr + proc.stdout)}")
        try:
            data: Any = json.loads(proc.stdout)
            return BundleInfo(compatible=str(data["compatible"]), version=str(data["version"]))
        except (ValueError, KeyError, TypeError):
            raise UpdateError(f"{bundle}: refused: RAUC printed no readable manifest") from None

    def install(self, bundle: Path) -> None:
        proc = self.run(self._rauc("install", str(bundle)))
        if proc.returncode != 0:
            raise UpdateError(reason(proc.stderr + proc.stdout))

    def mark(self, state: str, slot: str = "booted") -> None:
        """mark-good, mark-bad or mark-active for a slot (RAUC's grub backend writes grubenv)."""
        proc = self.run(self._rauc("status", f"mark-{state}", slot))
        if proc.returncode != 0:
            raise UpdateError(f"rauc status mark-{state} {slot}: {reason(proc.stderr + proc.stdout)}")

    def grubenv_set(self, grubenv: Path, **values: str) -> None:
        """Set grubenv variables RAUC does not manage (the attempts a new slot gets)."""
        pairs = [f"{key}={value}" for key, value in values.items()]
        proc = self.run(["grub-editenv", str(grubenv), "set", *pairs])
        if proc.returncode != 0:
            raise UpdateError(f"grub-editenv {grubenv}: {reason(proc.stderr + proc.stdout)}")

    def grubenv(self, grubenv: Path) -> dict[str, str]:
        from updater.system import grubenv_vars

        proc = self.run(["grub-editenv", str(grubenv), "list"])
        if proc.returncode != 0:
            raise UpdateError(f"grub-editenv {grubenv}: {reason(proc.stderr + proc.stdout)}")
        return grubenv_vars(proc.stdout)

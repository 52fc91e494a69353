"""`appliance verify DIR` (`make verify`): check an artifact set before it is published or used.

An artifact set is a build's output directory: the disks and the OVA, SHA256SUMS, the package lock,
the SBOM and the wheel. Each check is one entry in CHECKS, a function from the set to the problems
it found; `register_check()` adds one (the signature check of signed releases plugs in there), so
`make verify` runs every check there is and prints one line per check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.lock import LOCK_NAME, load_lock
from appliance.sbom import SBOM_NAME, read_sbom

SUMS_NAME = "SHA256SUMS"
_SUM_LINE = re.compile(r"(?P<digest>[0-9a-f]{64}) [ *](?P<name>[^/\s][^/]*)")
# What every build's set must hold besides the disks (checked by name pattern).
REQUIRED = (SUMS_NAME, LOCK_NAME, SBOM_NAME)


@dataclass(frozen=True)
class ArtifactSet:
    """A directory of artifacts and what its SHA256SUMS lists, {file name: sha256}."""

    root: Path
    sums: dict[str, str]

    def path(self, name: str) -> Path:
        return self.root / name

    def only(self, suffix: str) -> Path | None:
        """The one listed artifact whose name ends with suffix, or None."""
        found = sorted(n for n in self.sums if n.endswith(suffix))
        return self.root / found[0] if len(found) == 1 else None


Check = Callable[[ArtifactSet], list[str]]
CHECKS: dict[str, Check] = {}


def register_check(name: str) -> Callable[[Check], Check]:
    """Add a check to `appliance verify` (a decorator); checks run in registration order."""

    def add(func: Check) -> Check:
        if name in CHECKS:
            raise ValueError(f"verify check {name!r} registered twice")
        CHECKS[name] = func
        return func

    return add


def parse_sums(text: str, source: str) -> dict[str, str]:
    """SHA256SUMS as `sha256sum` writes it: `HEX  NAME` per line, names without directories."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _SUM_LINE.fullmatch(line)
        if not match:
            raise ApplianceError(
                f"{source}: line {number}: expected 'SHA256  NAME' (a plain file name), got {line[:80]!r}"
            )
        if match["name"] in sums:
            raise ApplianceError(f"{source}: line {number}: {match['name']} is listed twice")
        sums[match["name"]] = match["digest"]
    if not sums:
        raise ApplianceError(f"{source}: lists no files")
    return sums


def open_set(root: Path) -> ArtifactSet:
    """Read a set's SHA256SUMS; an unreadable or malformed one is a one-line error."""
    sums_path = root / SUMS_NAME
    try:
        text = sums_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApplianceError(f"{sums_path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return ArtifactSet(root, parse_sums(text, str(sums_path)))


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            sha.update(chunk)
    return sha.hexdigest()


@register_check("sums")
def check_sums(artifacts: ArtifactSet) -> list[str]:
    """Every listed file is there with its listed SHA-256, and the set's required files are listed."""
    problems = [f"{name}: not listed in {SUMS_NAME}" for name in REQUIRED[1:] if name not in artifacts.sums]
    for name, digest in sorted(artifacts.sums.items()):
        path = artifacts.path(name)
        if not path.is_file():
            problems.append(f"{name}: listed in {SUMS_NAME} but missing")
        elif (actual := _sha256(path)) != digest:
            problems.append(f"{name}: SHA-256 is {actual}, {SUMS_NAME} says {digest}")
    return problems


@register_check("sbom")
def check_sbom(artifacts: ArtifactSet) -> list[str]:
    """The SBOM lists exactly the lock's Debian packages at the lock's versions, and the set's wheel."""
    try:
        lock = load_lock(artifacts.path(LOCK_NAME))
        sbom_path = artifacts.path(SBOM_NAME)
        sbom = read_sbom(sbom_path.read_text(encoding="utf-8"), str(sbom_path))
    except ApplianceError as exc:
        return [str(exc)]
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{SBOM_NAME}: cannot read: {getattr(exc, 'strerror', None) or exc}"]
    problems = []
    locked = {f"{p.name}:{p.architecture}": p.version for p in lock}
    for key in sorted(locked.keys() - sbom.debs.keys()):
        problems.append(f"{SBOM_NAME}: {key} {locked[key]} is installed ({LOCK_NAME}) but not listed")
    for key in sorted(sbom.debs.keys() - locked.keys()):
        problems.append(f"{SBOM_NAME}: lists {key} {sbom.debs[key]}, which {LOCK_NAME} does not have")
    for key in sorted(locked.keys() & sbom.debs.keys()):
        if locked[key] != sbom.debs[key]:
            problems.append(f"{SBOM_NAME}: {key} is {sbom.debs[key]}, {LOCK_NAME} says {locked[key]}")
    wheel = artifacts.only(".whl")
    if wheel is None:
        problems.append(f"expected exactly one wheel (*.whl) in {SUMS_NAME}")
    elif sbom.wheel_sha256 != artifacts.sums[wheel.name]:
        listed = artifacts.sums[wheel.name]
        problems.append(f"{SBOM_NAME}: the wheel's SHA-256 is {sbom.wheel_sha256}, {wheel.name} has {listed}")
    return problems


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict."""

    name: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(root: Path, only: tuple[str, ...] = ()) -> list[CheckResult]:
    """Run every registered check (or those named) over the artifact set in root."""
    unknown = [name for name in only if name not in CHECKS]
    if unknown:
        raise ApplianceError(f"unknown verify check {unknown[0]!r} (known: {', '.join(CHECKS)})")
    artifacts = open_set(root)
    return [
        CheckResult(name, tuple(check(artifacts)))
        for name, check in CHECKS.items()
        if not only or name in only
    ]

"""The package lock: the exact Debian packages a build installed, and how a later build is pinned to them.

The build reads the image's dpkg database (exported by the finalize script) and writes
`packages.lock`, one tab-separated line per package, sorted. Given a lock, the next build installs
those versions: apt preferences pin each package to its locked version (priority 1001, so a pin also
wins over a newer candidate), and after the build the installed versions are compared with the lock;
a package the mirror no longer offers at its locked version is an error, never a silent upgrade.

Pure parsing and formatting here; reading the files and the package cache is done by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

LOCK_NAME = "packages.lock"
HEADER = "# package\tversion\tarchitecture\tsource\tsource_version\tsha256"
NO_HASH = "-"

# Debian policy 5.6.1 (names) and 5.6.12 (versions), loose enough for every real archive.
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION = re.compile(r"(?:[0-9]+:)?[0-9A-Za-z.+~-]+")
_ARCH = re.compile(r"[a-z0-9-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SOURCE = re.compile(r"(?P<name>[^\s(]+)(?:\s+\((?P<version>[^)]+)\))?")


@dataclass(frozen=True, order=True)
class Package:
    """One installed Debian binary package and the source package it was built from."""

    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    sha256: str = NO_HASH  # of the .deb, when the package cache still had it

    @property
    def deb_filename(self) -> str:
        """The name apt gives the downloaded .deb (an epoch's colon is URL-encoded)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def _stanzas(text: str) -> Iterable[tuple[int, dict[str, str]]]:
    fields: dict[str, str] = {}
    start = 1
    key = ""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if fields:
                yield start, fields
            fields, key = {}, ""
            start = number + 1
        elif line[0] in " \t":
            if key:  # continuation of a multi-line field (Description, Conffiles): not needed
                continue
        else:
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"line {number}: expected 'Field: value', got {line[:60]!r}")
            fields[key.strip().lower()] = value.strip()
    if fields:
        yield start, fields


def parse_dpkg_status(text: str, source: str = "dpkg status") -> list[Package]:
    """The installed packages in a dpkg status file, sorted by name and architecture."""
    packages = []
    try:
        stanzas = list(_stanzas(text))
    except ValueError as exc:
        raise ApplianceError(f"{source}: {exc}") from None
    for line, fields in stanzas:
        status = fields.get("status", "").split()
        if status[-1:] != ["installed"]:
            continue  # config-files, half-installed, not-installed: nothing of it is on the image
        try:
            name, version, arch = fields["package"], fields["version"], fields["architecture"]
        except KeyError as exc:
            raise ApplianceError(
                f"{source}: line {line}: the stanza has no {exc.args[0].title()} field"
            ) from None
        src_name, src_version = name, version
        if "source" in fields:
            match = _SOURCE.fullmatch(fields["source"])
            if not match:
                raise ApplianceError(f"{source}: line {line}: {name}: bad Source field {fields['source']!r}")
            src_name, src_version = match["name"], match["version"] or version
        packages.append(
            _checked(Package(name, version, arch, src_name, src_version), f"{source}: line {line}")
        )
    return sorted(packages)


def _checked(pkg: Package, where: str) -> Package:
    for what, value, pattern in (
        ("package name", pkg.name, _NAME),
        ("version", pkg.version, _VERSION),
        ("architecture", pkg.architecture, _ARCH),
        ("source package name", pkg.source, _NAME),
        ("source version", pkg.source_version, _VERSION),
    ):
        if not pattern.fullmatch(value):
            raise ApplianceError(f"{where}: {pkg.name}: bad {what} {value!r}")
    if pkg.sha256 != NO_HASH and not _SHA256.fullmatch(pkg.sha256):
        raise ApplianceError(f"{where}: {pkg.name}: bad sha256 {pkg.sha256!r} (64 hex digits or '-')")
    return pkg


def format_lock(packages: Sequence[Package], *, image: str, release: str) -> str:
    """The lock file's text: a comment header, then one sorted tab-separated line per package."""
    lines = [
        f"# Debian packages installed in {image} ({release}), written by `appliance build`.",
        "# `appliance build --lock FILE` (make ova LOCK=FILE) installs exactly these versions again.",
        HEADER,
    ]
    for p in sorted(packages):
        lines.append("\t".join((p.name, p.version, p.architecture, p.source, p.source_version, p.sha256)))
    return "\n".join(lines) + "\n"


def parse_lock(text: str, source: str) -> list[Package]:
    """Read a lock file; every problem is one line naming the file and line."""
    packages: dict[tuple[str, str], Package] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 6:
            raise ApplianceError(
                f"{source}: line {number}: expected 6 tab-separated fields, got {len(fields)}"
            )
        pkg = _checked(Package(*fields), f"{source}: line {number}")
        key = (pkg.name, pkg.architecture)
        if key in packages:
            raise ApplianceError(f"{source}: line {number}: {pkg.name}:{pkg.architecture} is listed twice")
        packages[key] = pkg
    if not packages:
        raise ApplianceError(f"{source}: no packages listed")
    return sorted(packages.values())


def load_lock(path: Path) -> list[Package]:
    """parse_lock() of a file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApplianceError(
            f"{path}: cannot read the package lock: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return parse_lock(text, str(path))


def apt_preferences(packages: Sequence[Package]) -> str:
    """apt_preferences(5) pinning every locked package to its version, above any candidate.

    apt files architecture-independent packages under the native architecture, so `name:all`
    would match nothing: those are pinned by name alone.
    """
    return "".join(
        f"Package: {p.name if p.architecture == 'all' else f'{p.name}:{p.architecture}'}\n"
        f"Pin: version {p.version}\nPin-Priority: 1001\n\n"
        for p in sorted(packages)
    )


def with_hashes(packages: Sequence[Package], hashes: Mapping[str, str]) -> list[Package]:
    """The packages with the sha256 of their .deb filled in from {deb filename: sha256}."""
    return [
        Package(
            p.name, p.version, p.architecture, p.source, p.source_version, hashes.get(p.deb_filename, NO_HASH)
        )
        for p in packages
    ]


@dataclass(frozen=True)
class LockDrift:
    """How the installed packages differ from a lock."""

    changed: tuple[tuple[Package, Package], ...]  # (locked, installed)
    added: tuple[Package, ...]  # installed, not in the lock (a package added to the image)
    removed: tuple[Package, ...]  # locked, not installed (a package taken out of the image)


def compare(locked: Sequence[Package], installed: Sequence[Package]) -> LockDrift:
    """Compare by (name, architecture) and version; hashes are not compared (a cache may lack them)."""
    lock = {(p.name, p.architecture): p for p in locked}
    have = {(p.name, p.architecture): p for p in installed}
    changed = tuple(
        (lock[k], have[k]) for k in sorted(lock.keys() & have.keys()) if lock[k].version != have[k].version
    )
    added = tuple(have[k] for k in sorted(have.keys() - lock.keys()))
    removed = tuple(lock[k] for k in sorted(lock.keys() - have.keys()))
    return LockDrift(changed, added, removed)


def drift_error(lock_path: Path, drift: LockDrift) -> ApplianceError:
    """One line for packages apt could not install at their locked versions."""
    shown = ", ".join(f"{old.name} {old.version} -> {new.version}" for old, new in drift.changed[:5])
    more = f" and {len(drift.changed) - 5} more" if len(drift.changed) > 5 else ""
    return ApplianceError(
        f"{lock_path}: {len(drift.changed)} {'package is' if len(drift.changed) == 1 else 'packages are'}"
        f" not at the locked version: {shown}{more}",
        hint="the mirror no longer offers those versions; point APPLIANCE_MIRROR at a snapshot of the "
        "archive from the locked build's day (docs/reproducible-builds.md), or build without --lock",
    )

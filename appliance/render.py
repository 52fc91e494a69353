"""Renders the generated mkosi configuration from the spec (templates, StrictUndefined)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from appliance.lock import Package, apt_preferences
from appliance.spec import Spec

TEMPLATES = Path(__file__).parent / "templates"
# The checkout: image/mkosi.build.chroot compiles the C accelerators from its scripts/, gateway/ and gwcore/.
REPO = Path(__file__).resolve().parent.parent
# Exports the image's dpkg database for the package lock and the SBOM (appliance/provenance.py).
FINALIZE_SCRIPT = Path(__file__).parent / "scripts" / "export-packages.finalize"
DEFAULT_CACHE = Path(os.environ.get("APPLIANCE_CACHE_DIR", "/var/cache/gateway-appliance"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


@dataclass(frozen=True)
class BuildPaths:
    """Where one build keeps its files: the output tree, generated config and caches."""

    output: Path
    cache: Path = DEFAULT_CACHE
    # Which incremental image of the config to use (appliance/repro.py: cache_key). mkosi's cache
    # check compares package lists only, not the build's date or the package pins, and a cached
    # image carries both (the dates in /etc/shadow, the initrd), so they key the directory.
    cache_key: str = "default"

    @property
    def generated(self) -> Path:
        return self.output / "mkosi"

    @property
    def work(self) -> Path:
        return self.output / "work"

    @property
    def mkosi_output(self) -> Path:
        return self.output / "mkosi.output"

    def incremental_cache(self, spec: Spec) -> Path:
        # Each mkosi config (release) gets its own incremental cache: mkosi keys its cache
        # by image name only, so two releases sharing a directory would clobber each other.
        return self.cache / "incremental" / f"{spec.name}-{spec.debian_release}" / self.cache_key

    @property
    def package_cache(self) -> Path:
        return self.cache / "packages"

    @property
    def package_archives(self) -> Path:
        """Where apt keeps the .debs it downloaded (inside mkosi's package cache)."""
        return self.package_cache / "cache" / "apt" / "archives"


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True
    )


def mirrors(environ: Mapping[str, str] | None = None) -> tuple[str, str, bool]:
    """(archive, security archive, is a snapshot): $APPLIANCE_MIRROR and $APPLIANCE_SECURITY_MIRROR.

    A pinned rebuild after the live mirror moved on points them at snapshot.debian.org as of the
    locked build's day (docs/reproducible-builds.md); a snapshot's Release files have expired.
    """
    env = os.environ if environ is None else environ
    mirror = env.get("APPLIANCE_MIRROR") or DEFAULT_MIRROR
    security = env.get("APPLIANCE_SECURITY_MIRROR") or DEFAULT_SECURITY_MIRROR
    return mirror, security, (mirror, security) != (DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR)


def render_mkosi(
    spec: Spec,
    paths: BuildPaths,
    mirror: str | None = None,
    *,
    environment: Mapping[str, str] | None = None,
    pins: Sequence[Package] = (),
) -> Path:
    """Write the generated mkosi config and apt sources; return the config file to include."""
    env = _environment()
    pkgmngr = paths.generated / "pkgmngr"
    sources = pkgmngr / "etc/apt/sources.list.d/mkosi.sources"
    sources.parent.mkdir(parents=True, exist_ok=True)
    archive, security, snapshot = mirrors()
    sources.write_text(
        env.get_template("debian.sources.j2").render(
            mirror=mirror or archive, security_mirror=security, release=spec.debian_release, snapshot=snapshot
        )
    )
    # A package lock becomes apt preferences in the package manager's tree: they bind every apt run
    # of the build, mkosi's bootstrap of the essential packages too. No lock, no preferences file.
    preferences = pkgmngr / "etc/apt/preferences.d/appliance-lock.pref"
    preferences.parent.mkdir(parents=True, exist_ok=True)
    if pins:
        preferences.write_text(apt_preferences(pins))
    else:
        preferences.unlink(missing_ok=True)
    conf = paths.generated / "mkosi.conf"
    conf.write_text(
        env.get_template("mkosi.conf.j2").render(
            spec=spec,
            pkgmngr=pkgmngr.resolve(),
            output_dir=paths.mkosi_output.resolve(),
            incremental_cache=paths.incremental_cache(spec),
            package_cache=paths.package_cache,
            work_dir=paths.work.resolve(),
            repo=REPO,
            environment=dict(sorted((environment or {}).items())),
            finalize_script=FINALIZE_SCRIPT,
        )
    )
    return conf

"""The SBOM: a CycloneDX 1.5 JSON document of what is in the image.

Every Debian package (name, version, architecture, source package and version, the .deb's SHA-256
when known) and the project's wheel. Deterministic: no wall clock, no random serial number (the
serial is a UUID derived from the content, the timestamp is the build's SOURCE_DATE_EPOCH), so
two builds of one commit write the same bytes. Pure: dicts and text in, text out.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from appliance.errors import ApplianceError
from appliance.lock import NO_HASH, Package

SBOM_NAME = "sbom.cdx.json"
SPEC_VERSION = "1.5"
# A fixed namespace for the content-derived serial number (uuid5 of the components).
_SERIAL_NAMESPACE = uuid.UUID("0b9d2f9e-6a43-4f0e-9d0c-3c7d1a5e8f21")


@dataclass(frozen=True)
class Wheel:
    """The project's wheel as installed on the image."""

    name: str
    version: str
    filename: str
    sha256: str


def deb_purl(pkg: Package, release: str) -> str:
    """The package URL of a Debian binary package (purl-spec, type deb)."""
    return (
        f"pkg:deb/debian/{quote(pkg.name)}@{quote(pkg.version, safe='')}"
        f"?arch={pkg.architecture}&distro=debian-{release}"
    )


def _deb_component(pkg: Package, release: str) -> dict[str, Any]:
    purl = deb_purl(pkg, release)
    component: dict[str, Any] = {
        "type": "library" if pkg.name.startswith("lib") else "application",
        "bom-ref": purl,
        "name": pkg.name,
        "version": pkg.version,
        "purl": purl,
        "properties": [
            {"name": "debian:architecture", "value": pkg.architecture},
            {"name": "debian:source", "value": pkg.source},
            {"name": "debian:source_version", "value": pkg.source_version},
        ],
    }
    if pkg.sha256 != NO_HASH:
        component["hashes"] = [{"alg": "SHA-256", "content": pkg.sha256}]
    return component


def _wheel_component(wheel: Wheel) -> dict[str, Any]:
    purl = f"pkg:pypi/{quote(wheel.name)}@{quote(wheel.version, safe='')}"
    return {
        "type": "application",
        "bom-ref": purl,
        "name": wheel.name,
        "version": wheel.version,
        "purl": purl,
        "hashes": [{"alg": "SHA-256", "content": wheel.sha256}],
        "properties": [{"name": "wheel:filename", "value": wheel.filename}],
    }


def make_sbom(
    *,
    image: str,
    version: str,
    release: str,
    packages: Sequence[Package],
    wheel: Wheel,
    epoch: int,
) -> str:
    """The SBOM's JSON text (sorted keys, two-space indent, trailing newline)."""
    components = [_deb_component(p, release) for p in sorted(packages)] + [_wheel_component(wheel)]
    serial = uuid.uuid5(_SERIAL_NAMESPACE, json.dumps(components, sort_keys=True) + f"{image}@{version}")
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
            "tools": {"components": [{"type": "application", "name": "appliance build", "version": version}]},
            "component": {
                "type": "operating-system",
                "bom-ref": f"appliance:{image}@{version}",
                "name": image,
                "version": version,
                "description": f"{image} virtual appliance, Debian {release}",
            },
        },
        "components": components,
        "dependencies": [
            {"ref": f"appliance:{image}@{version}", "dependsOn": [c["bom-ref"] for c in components]}
        ],
    }
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class SbomContents:
    """What an SBOM lists, read back for checking: {deb name:arch: version} and the wheel's hash."""

    debs: Mapping[str, str]
    wheel_sha256: str | None


def read_sbom(text: str, source: str) -> SbomContents:
    """Parse an SBOM this module wrote; one-line errors naming the file and the problem."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ApplianceError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise ApplianceError(f"{source}: not a CycloneDX document (bomFormat is missing or wrong)")
    comps = doc.get("components")
    if not isinstance(comps, list):
        raise ApplianceError(f"{source}: components: expected a list")
    debs: dict[str, str] = {}
    wheel_sha: str | None = None
    for index, comp in enumerate(comps):
        purl = comp.get("purl") if isinstance(comp, dict) else None
        if not isinstance(purl, str) or not isinstance(comp.get("version"), str):
            raise ApplianceError(f"{source}: components[{index}]: expected a purl and a version")
        if purl.startswith("pkg:deb/"):
            props = {p.get("name"): p.get("value") for p in comp.get("properties", []) if isinstance(p, dict)}
            debs[f"{comp.get('name')}:{props.get('debian:architecture')}"] = comp["version"]
        elif purl.startswith("pkg:pypi/"):
            hashes = [h.get("content") for h in comp.get("hashes", []) if isinstance(h, dict)]
            wheel_sha = hashes[0] if hashes and isinstance(hashes[0], str) else None
    return SbomContents(debs, wheel_sha)

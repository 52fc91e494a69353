"""Fixtures for the QEMU layer: the artifacts `make ova` built, and where they are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.spec import Spec, load_spec

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("APPLIANCE_BUILD_DIR", REPO / "build"))
SCHEMAS = REPO.parent / "shared" / "schemas" / "ovf"


@pytest.fixture(scope="session")
def spec() -> Spec:
    return load_spec(REPO / "appliance.yaml")


@pytest.fixture(scope="session")
def artifacts(spec: Spec) -> dict[str, Path]:
    """The built artifacts; the vm layer runs after `make ova`, so a missing one is a failure."""
    found = {
        ext: BUILD / f"{spec.artifact_stem}.{ext}" for ext in ("raw", "qcow2", "ova", "vmlinuz", "raucb")
    }
    missing = [str(p) for p in found.values() if not p.exists()]
    if missing:
        pytest.fail(f"missing build artifacts {missing}: run 'make ova' first")
    return found

"""The signature check of an artifact set: SHA256SUMS.sig, and each update bundle, verify against
the keyring the appliances trust (`appliance verify-signature DIR`, run by `make verify`).

The keyring is $APPLIANCE_SIGNING_KEYRING (a vendor's CA), else the development build's in the
build cache. It has the shape of an `appliance verify` check (appliance/verify.py) but is not
registered there: `verify` also serves unsigned sets (its own tests, a build being compared), and
a signature check belongs to sets that are about to be published.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.render import DEFAULT_CACHE
from appliance.run import run
from appliance.signing import DEV_DIR, ENV_KEYRING, verify_file
from appliance.verify import SUMS_NAME, ArtifactSet


def keyring() -> Path:
    """The CA certificate the signatures must chain to."""
    if os.environ.get(ENV_KEYRING):
        return Path(os.environ[ENV_KEYRING])
    return DEFAULT_CACHE / DEV_DIR / "keyring.pem"


def check_signatures(artifacts: ArtifactSet, ring: Path | None = None) -> list[str]:
    """SHA256SUMS.sig verifies, and so does every *.raucb in the set (RAUC's own signature)."""
    ring = ring or keyring()
    if not ring.is_file():
        return [f"{ring}: no keyring to check signatures against (set ${ENV_KEYRING})"]
    problems = []
    try:
        verify_file(artifacts.path(SUMS_NAME), ring)
    except ApplianceError as exc:
        problems.append(exc.message)
    for bundle in sorted(artifacts.root.glob("*.raucb")):
        proc = run(["rauc", f"--keyring={ring}", "info", bundle], capture=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            problems.append(f"{bundle.name}: does not verify against {ring}: {last}")
    return problems

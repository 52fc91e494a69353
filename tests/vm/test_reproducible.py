"""Two builds of one commit give the same bytes (issue #13, docs/reproducible-builds.md).

The second build goes into build/repro/ from the same checkout. It installs every package again
(--no-incremental: mkosi's cached image of the first build is not used), pinned to the first build's
packages.lock, with .debs from the shared package cache; its artifacts are compared byte for byte
with the first build's, and both sets pass `appliance verify`. The time of the second build and
the comparison are printed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.compare import compare_builds
from appliance.spec import Spec
from appliance.verify import open_set, verify

from .conftest import BUILD, REPO

pytestmark = pytest.mark.timeout(1800)


def test_first_build_passes_verify(artifacts: dict[str, Path], spec: Spec) -> None:
    results = verify(BUILD)
    assert [(r.name, r.problems) for r in results] == [(r.name, ()) for r in results]
    listed = set(open_set(BUILD).sums)
    expected = {artifacts[k].name for k in ("raw", "qcow2", "ova")} | {"packages.lock", "sbom.cdx.json"}
    assert expected <= listed
    assert any(name.endswith(".whl") for name in listed)


def test_second_build_is_byte_identical(
    artifacts: dict[str, Path], spec: Spec, capsys: pytest.CaptureFixture[str]
) -> None:
    second = BUILD / "repro"
    shutil.rmtree(second, ignore_errors=True)
    cmd = [sys.executable, "-m", "appliance", "build", "--spec", str(REPO / "appliance.yaml"),
           "--output", str(second), "--no-incremental", "--lock", str(BUILD / "packages.lock")]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    took = time.monotonic() - start
    if proc.returncode != 0 and "not at the locked version" in proc.stderr:
        # The live mirror published an update between the two builds: the pin cannot be honoured.
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both sets verified first: then their SHA256SUMS are the files' digests, and nothing is hashed twice.
    verified = [(r.name, r.problems) for r in verify(second)]
    first, other = open_set(BUILD).sums, open_set(second).sums
    result = compare_builds(BUILD, second, sorted(first), digests=(first, other))
    with capsys.disabled():
        print(
            f"\nrepro: second build (every package installed again, pinned, package cache) took {took:.0f} s"
        )
        print(f"repro: identical: {', '.join(result.same) or 'none'}")
        for name in (*result.different, *result.missing):
            print(f"repro: DIFFERENT or missing: {name}")
        for line in result.details:
            print(f"repro:   {line}")
    assert verified == [(name, ()) for name, _ in verified]
    assert result.identical, "\n".join(result.details)
    shutil.rmtree(second)  # kept when different, for `appliance compare` and diffoscope

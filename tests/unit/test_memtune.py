"""gwcore/memtune.py: with the thresholds set, freed body pieces are reused, not mapped afresh.

Measured as the kernel counts it: minor page faults while a child process moves 256 KiB pieces
through a buffer as the target client does, with and without tune_malloc().
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gwcore import memtune

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
_CHILD = """
import resource, sys
from gwcore.memtune import tune_malloc
if sys.argv[1] == "tune":
    print(tune_malloc(), file=sys.stderr)
piece = bytes(64 * 1024)
buf = bytearray()
def run(n):  # as the target client's buffer: socket reads appended, 256 KiB taken from the front
    global buf
    for _ in range(n):
        while len(buf) < 512 * 1024:
            buf += piece
        out = bytes(buf[: 256 * 1024])
        del buf[: 256 * 1024]
        frame = b"".join([b"header", out])  # and framed for the tunnel
        del out, frame
run(20)  # warm up: glibc's dynamic threshold moves, the heap grows
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run(500)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env: dict[str, str], tune: bool = True) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, "tune" if tune else "no"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(run.stdout), run.stderr.strip()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    return {**env, **extra}


def test_the_c_module_is_built() -> None:
    assert memtune._memtune is not None


def test_freed_pieces_are_reused_once_tuned() -> None:
    tuned, took = _faults(_env())
    assert took == "True"
    untuned, _ = _faults(_env(), tune=False)
    assert untuned >= 500 * 32  # glibc's own thresholds: pages faulted in afresh, time after time
    assert tuned < 500  # reused: almost none


def test_an_administrator_s_setting_wins() -> None:
    _, took = _faults(_env(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576"))
    assert took == "False"

"""The C accelerators under AddressSanitizer and UndefinedBehaviorSanitizer, on hostile input.

gateway/filter/_xmlfast.c and _jsonfast.c, and gateway/relay/_http1fast.c, parse what on-prem
targets send, so a memory error in them is a remote one. This test compiles them with the
sanitizers into a copy of the packages, and runs their equivalence tests (random, hostile and
mangled input against the Python references) in a child process with the sanitizer runtimes
loaded: any out-of-bounds access, use after free or undefined behaviour aborts the child, and
the test fails with the sanitizer's report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SOURCES = {
    "gateway/filter/_xmlfast.c": ["-lexpat"],
    "gateway/filter/_jsonfast.c": [],
    "gateway/relay/_http1fast.c": [],
}
TESTS = [
    "tests/unit/test_xmlfilter_accel.py",
    "tests/unit/test_jsonfilter_accel.py",
    "tests/unit/test_http1_accel.py",
    "tests/unit/test_http1_vs_h11.py",
]


def _runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    return path.stdout.strip()


def test_the_c_filters_are_clean_under_the_sanitizers(tmp_path: Path) -> None:
    work = tmp_path / "tree"
    for package in ("gateway", "gwcore", "tests"):
        shutil.copytree(
            REPO / package,
            work / package,
            ignore=shutil.ignore_patterns("*.so", "__pycache__", ".hypothesis"),
        )
    shutil.copy(REPO / "pyproject.toml", work / "pyproject.toml")
    paths = sysconfig.get_paths()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for source, libs in SOURCES.items():
        out = work / (source[: -len(".c")] + suffix)
        subprocess.run(
            [
                "gcc", "-O1", "-g", "-fPIC", "-shared", "-fno-omit-frame-pointer",
                "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                f"-I{paths['include']}", f"-I{paths['platinclude']}",
                str(REPO / source), *libs, "-o", str(out),
            ],
            check=True,
        )  # fmt: skip
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    assert Path(asan).is_file() and Path(ubsan).is_file(), "gcc's sanitizer runtimes are missing"
    env = {
        **os.environ,
        "LD_PRELOAD": f"{asan}:{ubsan}",
        # CPython's own allocations are not leaks to report; abort on the first error of either kind.
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONMALLOC": "malloc",  # pymalloc's arenas would hide small overruns from ASan
    }
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run(
        # -s: the sanitizer writes its report to fd 2, which pytest would otherwise capture and lose.
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-x", *TESTS],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = run.stderr.find("ERROR: AddressSanitizer")
    report = run.stderr.find("runtime error:") if report < 0 else report
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[max(report, 0) :][:4000]
    # The child ran the C code (the tests assert the modules are in use), not the Python fallback.
    assert " passed" in run.stdout

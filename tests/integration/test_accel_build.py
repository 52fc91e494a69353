"""The C accelerators' build on the host (scripts/build-accel.sh, `make venv`; docs/image.md).

Real compiles with the host's gcc, for the venv's own interpreter. No skips: CI installs the
compiler and headers (scripts/setup-host.sh), and a checkout without them cannot pass `make venv`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from appliance.build import build_wheel, check_pure_wheel
from appliance.render import BuildPaths

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-accel.sh"
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = pytest.mark.integration


def sources() -> list[str]:
    listed = subprocess.run([SCRIPT, "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert listed, "scripts/build-accel.sh lists no accelerator"
    return listed


def checkout_copy(root: Path) -> Path:
    """The build script and the accelerator sources, as in a checkout at another path."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "scripts" / SCRIPT.name)
    for source in sources():
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / source, root / source)
    return root


def build(checkout: Path, dest: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([checkout / "scripts" / SCRIPT.name, sys.executable, dest],
                          capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env})  # fmt: skip


def test_make_venv_built_each_accelerator_for_the_venv() -> None:
    for source in sources():
        module = importlib.import_module(source.removesuffix(".c").replace("/", "."))
        built = REPO / (source.removesuffix(".c") + SUFFIX)
        assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)
        assert Path(str(module.__file__)) == built
        assert built.stat().st_mtime >= (REPO / source).stat().st_mtime, f"{built} is older than {source}"
        # make's dependency: were the source changed, `make venv` would compile it again.
        dry = subprocess.run(["make", "-n", "-W", source, "venv"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"scripts/build-accel.sh .venv/bin/python . {source}" in dry


def test_the_xml_accelerator_links_the_system_libexpat() -> None:
    built = REPO / ("gateway/filter/_xmlfast" + SUFFIX)
    dynamic = subprocess.run(["readelf", "-d", built], capture_output=True, text=True, check=True).stdout
    assert "Shared library: [libexpat.so.1]" in dynamic


def test_same_source_same_bytes_wherever_the_checkout_is(tmp_path: Path) -> None:
    first = checkout_copy(tmp_path / "a")
    second = checkout_copy(tmp_path / "somewhere" / "else" / "b")
    for checkout, dest in ((first, tmp_path / "out1"), (second, tmp_path / "out2")):
        result = build(checkout, dest)
        assert result.returncode == 0, result.stderr
    for source in sources():
        one = (tmp_path / "out1" / (source.removesuffix(".c") + SUFFIX)).read_bytes()
        two = (tmp_path / "out2" / (source.removesuffix(".c") + SUFFIX)).read_bytes()
        assert one == two
        assert str(tmp_path).encode() not in one  # the checkout's path is mapped away
        sections = subprocess.run(["readelf", "-S", tmp_path / "out1" / (source.removesuffix(".c") + SUFFIX)],
                                  capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert ".symtab" not in sections and ".debug" not in sections  # stripped, no debug info
        # The copy loads into this interpreter under its package's name.
        name = source.removesuffix(".c").replace("/", ".")
        path = tmp_path / "out2" / (source.removesuffix(".c") + SUFFIX)
        load = (
            f"import importlib.util as u; s = u.spec_from_file_location({name!r}, {str(path)!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.__name__)"
        )
        loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, check=False)
        assert loaded.returncode == 0 and loaded.stdout.strip() == name, loaded.stderr


def test_a_source_that_does_not_compile_is_one_line_naming_it(tmp_path: Path) -> None:
    checkout = checkout_copy(tmp_path / "src")
    source = sources()[0]
    with open(checkout / source, "a") as fh:
        fh.write("\n#error broken on purpose\n")
    result = build(checkout, tmp_path / "out")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"build-accel: {source}: does not compile for Python {VERSION}: "), first
    assert "broken on purpose" in first
    assert "Traceback" not in result.stderr
    # Nothing half-written is left where Python would import it.
    assert not list((tmp_path / "out").rglob("*.so*"))


def test_a_missing_compiler_says_what_to_install(tmp_path: Path) -> None:
    result = build(checkout_copy(tmp_path / "src"), tmp_path / "out", CC="/nonexistent/gcc")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "build-accel: /nonexistent/gcc: no C compiler found: "
        "install gcc and libc6-dev (scripts/setup-host.sh)"
    )


def test_an_unlisted_source_is_refused(tmp_path: Path) -> None:
    checkout = checkout_copy(tmp_path / "src")
    (checkout / "gateway" / "other.c").write_text("int x;\n")
    script = checkout / "scripts" / SCRIPT.name
    result = subprocess.run(
        [script, sys.executable, tmp_path / "out", "gateway/other.c"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("build-accel: gateway/other.c: not an accelerator of this project")


def test_the_wheel_stays_pure_python_beside_host_built_modules(tmp_path: Path) -> None:
    built = [REPO / (s.removesuffix(".c") + SUFFIX) for s in sources()]
    assert all(path.exists() for path in built)  # what must stay out of the wheel is really there
    wheel = build_wheel(BuildPaths(tmp_path))
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/filter/xmlfilter.py" in names
    assert not [n for n in names if n.endswith((".so", ".c"))]
    check_pure_wheel(wheel)

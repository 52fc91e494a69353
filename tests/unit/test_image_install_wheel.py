"""image/.../install-wheel: the image gets the core, the gateway, first boot and the updater, never
the build system or the reference plane (and no console scripts for them)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "image/mkosi.extra/usr/libexec/appliance/install-wheel"

ENTRY_POINTS = """[console_scripts]
appliance = appliance.__main__:main
firstboot = firstboot.__main__:main
gateway = gateway.__main__:main
mgmtplane = mgmtplane.__main__:main
"""


def load_script(site: Path, bin_dir: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("install_wheel", str(SCRIPT))
    spec = importlib.util.spec_from_loader("install_wheel", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.SITE, module.BIN = site, bin_dir
    return module


def make_wheel(path: Path, packages: tuple[str, ...]) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        for package in packages:
            wheel.writestr(f"{package}/__init__.py", "")
            wheel.writestr(f"{package}/__main__.py", "def main():\n    return 0\n")
        wheel.writestr("gateway/filter/policies/vsphere.yaml", "rules: []\n")
        wheel.writestr("gateway_appliance-0.1.0.dist-info/entry_points.txt", ENTRY_POINTS)
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    site, bin_dir = tmp_path / "site", tmp_path / "bin"
    site.mkdir()
    bin_dir.mkdir()
    return site, bin_dir


def test_only_the_image_packages_and_their_scripts_are_installed(
    tmp_path: Path, dirs: tuple[Path, Path]
) -> None:
    site, bin_dir = dirs
    wheel = make_wheel(
        tmp_path / "gw.whl", ("appliance", "firstboot", "gateway", "gwcore", "mgmtplane", "updater")
    )
    assert load_script(site, bin_dir).main([str(wheel)]) == 0
    assert sorted(p.name for p in site.iterdir()) == ["firstboot", "gateway", "gwcore", "updater"]
    assert (site / "gateway/filter/policies/vsphere.yaml").is_file()
    assert sorted(p.name for p in bin_dir.iterdir()) == ["firstboot", "gateway"]
    script = (bin_dir / "gateway").read_text()
    assert script.startswith("#!/usr/bin/python3\n") and "from gateway.__main__ import main" in script
    assert (bin_dir / "gateway").stat().st_mode & 0o111


def test_a_wheel_without_an_image_package_is_refused(
    tmp_path: Path, dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    site, bin_dir = dirs
    wheel = make_wheel(tmp_path / "gw.whl", ("gwcore", "gateway", "mgmtplane"))
    assert load_script(site, bin_dir).main([str(wheel)]) == 1
    assert capsys.readouterr().err.strip().endswith("no package firstboot, updater")
    assert list(site.iterdir()) == [] and list(bin_dir.iterdir()) == []

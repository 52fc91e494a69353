"""The CLI: plan (masked secrets, sources), run from seeds in --root mode, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firstboot.cli import main
from tests.unit.test_firstboot_apply import make_root
from tests.unit.test_firstboot_seeds import ovf_env
from tests.unit.test_firstboot_settings import SHA512, make_token


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_plan_prints_masked_settings_with_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = make_token("https://10.0.2.2:8443")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin.password_hash").write_text(SHA512)
    (creds / "proxy.url").write_text("http://bob:hunter2@proxy.example.com:3128")
    env = tmp_path / "ovf-env.xml"
    env.write_text(ovf_env({"gateway.join_token": token, "network.hostname": "gw-9"}))
    assert main(["--root", str(tmp_path), "plan", "--ovf-env", str(env), "--credentials", str(creds)]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out)
    assert plan == {
        "settings": {
            "network.hostname": {"value": "gw-9", "source": "ovf-env", "secret": False},
            "proxy.url": {
                "value": "http://bob:********@proxy.example.com:3128",
                "source": "credentials",
                "secret": True,
            },
            "gateway.join_token": {"value": "GWJ1.********", "source": "ovf-env", "secret": True},
            "admin.password_hash": {"value": "********", "source": "credentials", "secret": True},
            "gateway.plane_url": {"value": "https://10.0.2.2:8443", "source": "join-token", "secret": False},
        },
        "missing": [],
        "problems": [],
        "complete": True,
    }
    for secret in ("hunter2", SHA512, token):
        assert secret not in out
    assert not list(tmp_path.glob("etc")) and not list(tmp_path.glob("var"))  # applies nothing


def test_plan_reports_missing_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "network.mode").write_text("dhcp")
    assert main(["plan", "--credentials", str(creds)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["missing"] == ["gateway.join_token"] and plan["complete"] is False
    (creds / "network.address").write_text("10.0.0.1")
    assert main(["plan", "--credentials", str(creds)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["problems"] == [
        "network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, got '10.0.0.1'"
    ]
    assert captured.err == (
        "error: network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, "
        "got '10.0.0.1'\n"
    )


def test_run_applies_credentials_in_root_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    system = make_root(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gateway.join_token").write_text(make_token())
    (creds / "network.hostname").write_text("gw-cred")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert main(["--root", str(system.root), "run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[ OK ] Network" in out and out.rstrip().endswith("first boot complete: the gateway is starting")
    assert (system.root / "etc/hostname").read_text() == "gw-cred\n"
    assert main(["--root", str(system.root), "run"]) == 0
    assert capsys.readouterr().out == "first boot already completed\n"


def test_run_without_token_leaves_it_to_the_wizard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = make_root(tmp_path)
    assert main(["--root", str(system.root), "run"]) == 0
    assert "the console wizard will ask" in capsys.readouterr().out
    assert not (system.root / "var/lib/firstboot").exists()


def test_run_with_bad_seed_is_one_line_error_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    system = make_root(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gateway.join_token").write_text(make_token())
    (creds / "network.mode").write_text("bogus")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert main(["--root", str(system.root), "run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "error: seed settings: network.mode: expected dhcp or static, got 'bogus' (what to do: "
    )
    assert "network.mode" in (system.root / "var/lib/firstboot/last-error").read_text()


def test_building_the_command_line_imports_no_network_or_crypto_stack() -> None:
    # The wizards and the status console run for as long as the console is up; aiohttp and
    # cryptography cost each of them ~20 MiB and seconds of start-up under emulation.
    code = (
        "import sys, firstboot.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('aiohttp', 'cryptography', 'yarl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_building_the_command_line_imports_no_yaml() -> None:
    # firstboot.service runs before the console wizard may start. Without a join token it only
    # reads the seeds, so PyYAML (~60 ms here, a second or more under emulation) waits until
    # something applies settings or reads YAML.
    code = "import sys, firstboot.cli as c; c.build_parser(); print('yaml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

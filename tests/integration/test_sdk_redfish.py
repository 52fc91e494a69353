"""sushy and DMTF's Redfish service validator against sushy-tools' emulator, through the relay.

`sushy-emulator --fake` (no libvirt) runs one per test on loopback behind HTTP basic auth with a
fresh password; the gateway runs the shipped redfish policy. What sushy reads of systems,
chassis and managers through the relay equals what it reads from the emulator directly; what the
policy keeps from a BMC (BIOS, virtual media, certificates, firmware update) is refused with the
filter's reason; every resource that leaves keeps the payload properties the Redfish
specification requires; and the validator's figures with and without the filter are compared.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import sushy
from sushy import exceptions as sushy_errors

from tests.integration.sdk_support import Chain, Forward, Target, call_url, chain, stop, wait_port

USER = "operator"


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    url: str
    password: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Chain, Forward]]:
    root = tmp_path_factory.mktemp("redfish")
    with chain(root, [Target("bmc", "redfish")]) as c, c.forward("bmc") as fwd:
        yield c, fwd


@pytest.fixture
def emulator(env: tuple[Chain, Forward], tmp_path: Path) -> Iterator[Emulator]:
    port = env[0].targets["bmc"].port
    password = secrets.token_urlsafe(12)
    auth = tmp_path / "htpasswd"
    auth.write_text(f"{USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    config = tmp_path / "emulator.conf"
    config.write_text(f"SUSHY_EMULATOR_AUTH_FILE = {str(auth)!r}\n")
    exe = Path(sys.executable).parent / "sushy-emulator"
    cmd = [str(exe), "--fake", "-i", "127.0.0.1", "-p", str(port), "--config", str(config)]
    log = (tmp_path / "emulator.log").open("wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_port(port, proc)
        yield Emulator(proc, f"http://127.0.0.1:{port}", password)
    finally:
        stop(proc)
        log.close()


def client(base: str, password: str) -> sushy.Sushy:
    return sushy.Sushy(f"{base}/redfish/v1", username=USER, password=password)


def _status(field: Any) -> Any:
    return None if field is None else (str(field.state), str(field.health))


def read_inventory(base: str, password: str) -> dict[str, Any]:
    """What an inventory job reads with sushy: systems, their NICs and boot, chassis, managers."""
    conn = client(base, password)
    out: dict[str, Any] = {"root": (conn.uuid, conn.redfish_version)}
    for system in conn.get_system_collection().get_members():
        out[f"system {system.identity}"] = {
            "name": system.name,
            "uuid": system.uuid,
            "manufacturer": system.manufacturer,
            "power": str(system.power_state),
            "led": str(system.indicator_led),
            "status": _status(system.status),
            "memory": (system.memory_summary.health, system.memory_summary.size_gib),
            "boot": (str(system.boot.enabled), str(system.boot.target), str(system.boot.mode)),
            "boot choices": sorted(map(str, system.get_allowed_system_boot_source_values())),
            "secure boot": (system.secure_boot.enabled, str(system.secure_boot.current_boot)),
            "nics": sorted(
                (n.identity, n.mac_address, _status(n.status))
                for n in system.ethernet_interfaces.get_members()
            ),
        }
    for chassis in conn.get_chassis_collection().get_members():
        out[f"chassis {chassis.identity}"] = {
            "name": chassis.name,
            "type": str(chassis.chassis_type),
            "power": str(chassis.power_state),
            "make": (chassis.manufacturer, chassis.model),
            "status": _status(chassis.status),
            "temperatures": [
                (t.name, t.reading_celsius, str(t.physical_context)) for t in chassis.thermal.temperatures
            ],
            "fans": [(f.name, f.reading) for f in chassis.thermal.fans],
        }
    for manager in conn.get_manager_collection().get_members():
        out[f"manager {manager.identity}"] = {
            "name": manager.name,
            "type": str(manager.manager_type),
            "firmware": manager.firmware_version,
            "uuid": manager.uuid,
            "model": manager.model,
        }
    return out


def test_sushy_reads_systems_chassis_and_managers_as_the_bmc_has_them(
    env: tuple[Chain, Forward], emulator: Emulator
) -> None:
    truth = read_inventory(emulator.url, emulator.password)
    seen = read_inventory(env[1].url, emulator.password)
    assert seen == truth
    assert {k.split()[0] for k in seen} == {"root", "system", "chassis", "manager"}
    system = next(v for k, v in seen.items() if k.startswith("system"))
    assert system["power"] == "PowerState.OFF" and system["boot choices"] and system["nics"]


def test_sushy_credentials_reach_the_bmc_and_bad_ones_fail_as_401(
    env: tuple[Chain, Forward], emulator: Emulator
) -> None:
    with pytest.raises(sushy_errors.AccessError) as info:
        client(env[1].url, "wrong-" + secrets.token_hex(4)).get_system_collection()
    assert info.value.status_code == 401


def _get(base: str, path: str, password: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": "Basic " + b64encode(f"{USER}:{password}".encode()).decode()}
    if method == "POST":
        headers["Content-Type"] = "application/json"
        return call_url(base + path, headers, method, b'{"ResetType": "ForceOff"}')
    return call_url(base + path, headers, method)


@pytest.mark.parametrize(
    ("method", "path", "reason"),
    [
        ("GET", "/redfish/v1/Managers/{m}/VirtualMedia", "virtual media image URIs can embed credentials"),
        ("GET", "/redfish/v1/Systems/{s}/VirtualMedia/Cd", "virtual media image URIs can embed credentials"),
        ("GET", "/redfish/v1/CertificateService", "certificates and keys"),
        ("GET", "/redfish/v1/UpdateService", "firmware images are data"),
        ("GET", "/redfish/v1/Systems/{s}/Bios", "BIOS attributes can hold passwords"),
        ("POST", "/redfish/v1/Systems/{s}/Actions/ComputerSystem.Reset", "no rule allows POST"),
    ],
)
def test_what_is_not_metadata_is_refused_with_the_reason(
    env: tuple[Chain, Forward], emulator: Emulator, method: str, path: str, reason: str
) -> None:
    conn = client(emulator.url, emulator.password)
    system = next(iter(conn.get_system_collection().get_members()))
    manager = next(iter(conn.get_manager_collection().get_members()))
    full = path.format(s=system.identity, m=manager.identity)
    status, headers, body = _get(env[1].url, full, emulator.password, method)
    assert status == 403, body
    assert json.loads(body)["error"] == "filtered"
    assert reason in headers["X-Relay-Refusal"]
    assert system.power_state == sushy.PowerState.OFF  # the refused reset never reached the BMC


def crawl(base: str, password: str) -> dict[str, dict[str, Any]]:
    """Every resource reachable from the service root by @odata.id links, by path."""
    seen: dict[str, dict[str, Any]] = {}
    todo = ["/redfish/v1"]
    while todo and len(seen) < 200:
        path = todo.pop()
        if path in seen:
            continue
        status, _h, body = _get(base, path, password)
        if status != 200:
            continue
        doc = json.loads(body)
        seen[path] = doc
        links = re.findall(r'"@odata\.id":\s*"([^"#]+)"', json.dumps(doc))
        todo += [link.rstrip("/") for link in links if link.startswith("/redfish/v1")]
    return seen


def missing_required(doc: dict[str, Any]) -> list[str]:
    """What DSP0266 requires of a resource payload and `doc` lacks."""
    kind = str(doc.get("@odata.type", ""))
    need = ["@odata.id", "@odata.type", "Name"]
    need += ["Members", "Members@odata.count"] if "Collection." in kind else ["Id"]
    missing = [key for key in need if key not in doc]
    for array in ("Temperatures", "Fans", "PowerControl", "PowerSupplies", "Voltages"):
        for member in doc.get(array, []):
            missing += [f"{array}[].{k}" for k in ("@odata.id", "MemberId") if k not in member]
    return missing


def test_every_resource_that_leaves_keeps_what_the_redfish_spec_requires(
    env: tuple[Chain, Forward], emulator: Emulator
) -> None:
    direct = crawl(emulator.url, emulator.password)
    relayed = crawl(env[1].url, emulator.password)
    assert len(relayed) >= 10
    assert set(relayed) <= set(direct)
    for path, doc in relayed.items():
        assert missing_required(doc) == [], path
        assert "Actions" not in doc and "Oem" not in doc, path
    # What the filter takes away: whole resources it never links to (virtual media, registries,
    # certificate and update services) and unlisted properties; nothing required.
    assert not any("VirtualMedia" in p or "CertificateService" in p for p in relayed)


_COUNTS = re.compile(r"\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|")


def validate(base: str, password: str, out: Path) -> dict[str, Any]:
    """Run DMTF's rf_service_validator; its PASS/WARN/FAIL/NOT TESTED figures and the resources it saw."""
    schemas = out / "schemas"
    schemas.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "rf_service_validator"
    # Offline: DMTF's schema bundle (DSP8010) comes from dmtf.org, which tests never reach, so the
    # download is skipped and external fetches go to a closed loopback port.
    # --option=value: a random password may start with "-", which argparse takes for an option.
    cmd = [str(exe), f"--rhost={base}", f"--user={USER}", f"--password={password}", "--authtype=Basic"]
    cmd += [f"--logdir={out}"]
    cmd += ["--schema_directory", str(schemas), "--skipschema", "--timeout", "10"]
    cmd += ["--ext_http_proxy", "http://127.0.0.1:9", "--ext_https_proxy", "http://127.0.0.1:9"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=out)
    counts = _COUNTS.search(result.stdout)
    assert counts is not None, result.stdout[-2000:] + result.stderr[-2000:]
    per_resource = re.findall(
        r"^Validating (\S+)\.\.\.\n(?:.*\n)*?  - Pass: \d+, Warn: \d+, Fail: (\d+)", result.stdout, flags=re.M
    )
    return {
        "counts": tuple(int(n) for n in counts.groups()),
        "resources": [path for path, _fail in per_resource],
        "failed": {path for path, fail in per_resource if int(fail)},
    }


def test_dmtf_validator_figures_with_and_without_the_filter(
    env: tuple[Chain, Forward], emulator: Emulator, tmp_path: Path
) -> None:
    direct = validate(emulator.url, emulator.password, tmp_path / "direct")
    relayed = validate(env[1].url, emulator.password, tmp_path / "relayed")
    print(f"\nvalidator direct: {direct['counts']} over {len(direct['resources'])} resources")
    print(f"validator relayed: {relayed['counts']} over {len(relayed['resources'])} resources")
    removed = sorted(set(direct["resources"]) - set(relayed["resources"]))
    print("not reached through the relay:", *removed, sep="\n  ")
    pass_, _warn, fail, _skip = relayed["counts"]
    d_pass, _d_warn, d_fail, _d_skip = direct["counts"]
    assert set(relayed["resources"]) <= set(direct["resources"])
    # The filter adds no failure: every resource that fails through it fails on the BMC too.
    assert fail <= d_fail and pass_ == d_pass
    for path in ("/redfish/v1/", "/redfish/v1/Systems", "/redfish/v1/Chassis", "/redfish/v1/Managers"):
        assert path in relayed["resources"]
    # Not reached through the relay: what the policy keeps on the BMC, or what fails on it anyway
    # (the emulator's Processors/CPU, linked only from a thermal sensor's RelatedItem).
    kept_back = ("VirtualMedia", "Registries", "CertificateService", "UpdateService", "Bios")
    assert all(any(word in p for word in kept_back) or p in direct["failed"] for p in removed), removed

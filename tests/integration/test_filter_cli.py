"""`gateway policy check` and `gateway filter` run as real subprocesses."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from gateway.filter.policy import SHIPPED_POLICIES

FIXTURES = Path(__file__).parent.parent / "unit" / "fixtures" / "filter"
SHIPPED = SHIPPED_POLICIES


def _gateway(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_policy_check_shipped_is_clean() -> None:
    done = _gateway("policy", "check", str(SHIPPED))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"ok: 12 files, ")
    assert b"warning" not in done.stderr


def test_policy_check_reports_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: openstack-nova\nrules:\n  - name: x\n    path: /v2.1/servers\n    json:\n      - a..b\n"
    )
    other = tmp_path / "other.yaml"
    other.write_text("kind: nope\nrules: []\n")
    done = _gateway("policy", "check", str(tmp_path))
    assert done.returncode == 1
    lines = done.stdout.decode().splitlines()
    assert lines == [
        f"{bad}:6: json: path 'a..b': unexpected '.' at column 3",
        f"{other}:1: kind: unknown kind 'nope' (one of: vsphere, vsphere-soap, redfish, "
        "openstack-keystone, openstack-nova, openstack-cinder, openstack-glance, openstack-neutron, "
        "openstack-heat, openstack-gnocchi, openstack-aodh, openstack-murano, http)",
    ]
    assert b"Traceback" not in done.stderr


def test_policy_check_warns_about_passthrough(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        "kind: http\nrules:\n  - name: raw\n    path: /raw\n    passthrough: true\n"
    )
    done = _gateway("policy", "check", str(tmp_path))
    assert done.returncode == 0
    assert b"warning: " in done.stderr and b"passthrough" in done.stderr


def test_policy_check_missing_dir_is_one_line_error(tmp_path: Path) -> None:
    done = _gateway("policy", "check", str(tmp_path / "nope"))
    assert done.returncode == 1
    assert done.stderr.decode().strip() == f"error: {tmp_path / 'nope'}: not a directory"


def test_filter_prints_filtered_body() -> None:
    body = (FIXTURES / "openstack" / "nova-servers-detail.json").read_bytes()
    done = _gateway(
        "filter",
        "--kind",
        "openstack-nova",
        "--path",
        "/v2.1/servers/detail",
        "--policies",
        str(SHIPPED),
        stdin=body,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"CANARY" not in done.stdout
    doc = json.loads(done.stdout)
    assert doc["servers"][0]["name"] == "new-server-test"
    assert b"X-Gateway-Filter: nova-servers-detail; removed=" in done.stderr


def test_filter_gzip_input() -> None:
    body = gzip.compress((FIXTURES / "vsphere" / "vm-list.json").read_bytes())
    done = _gateway(
        "filter", "--kind", "vsphere", "--path", "/api/vcenter/vm", "--content-encoding", "gzip", stdin=body
    )
    assert done.returncode == 0 and b"vm-1002" in done.stdout and b"CANARY" not in done.stdout


def test_filter_soap_with_request_body() -> None:
    done = _gateway(
        "filter",
        "--kind",
        "vsphere-soap",
        "--method",
        "POST",
        "--path",
        "/sdk",
        "--content-type",
        "text/xml",
        "--request-body",
        str(FIXTURES / "vsphere-soap" / "retrieve-request.xml"),
        stdin=(FIXTURES / "vsphere-soap" / "retrieve-vms.xml").read_bytes(),
    )
    assert done.returncode == 0, done.stdout
    assert b"poweredOn" in done.stdout and b"CANARY" not in done.stdout


def test_filter_denials() -> None:
    done = _gateway("filter", "--kind", "openstack-glance", "--path", "/v2/images/i1/file")
    assert done.returncode == 1 and done.stdout == b"denied: image data never leaves\n"
    done = _gateway(
        "filter", "--kind", "openstack-nova", "--path", "/v2.1/servers/detail", stdin=b"\x89PNG\r\n"
    )
    assert done.returncode == 1 and done.stdout == b"denied: JSON body is not valid UTF-8\n"
    done = _gateway(
        "filter",
        "--kind",
        "redfish",
        "--path",
        "/redfish/v1/Systems/1",
        "--content-type",
        "text/html",
        stdin=b"<p>x</p>",
    )
    assert done.returncode == 1 and done.stdout.startswith(b"denied: ")

"""openstacksdk through the relay: a real Keystone, and Nova and Glance from recorded responses.

Keystone is Debian bookworm's python3-keystone (22, "Zed") on SQLite, served by its own WSGI
script under /usr/bin/python3 on loopback; it is set up once for the module (db_sync, fernet
keys, bootstrap) and the set-up time is printed. The catalog and every version document name
closed ports as the services' URLs: from the plane the services' own addresses are unreachable,
so the SDK reaches them only through its forwards, as an operator's would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
from openstack import exceptions as os_errors

from tests.integration.sdk_support import REPO, Chain, Target, call_url, chain, free_port, stop, wait_port

# openstacksdk 4.22 warns about its own internals on every connection (InfluxDB metrics that
# nobody configured, its deprecated _compute_attributes): its deprecations, not ours.
pytestmark = [
    pytest.mark.filterwarnings(f"ignore::openstack.warnings.{kind}")
    for kind in ("OpenStackDeprecationWarning", "RemovedInSDK50Warning", "RemovedInSDK60Warning")
]

KEYSTONE_MANAGE = Path("/usr/bin/keystone-manage")
KEYSTONE_WSGI = Path("/usr/bin/keystone-wsgi-public")
UNREACHABLE = "http://127.0.0.1:1"  # a closed port: where the catalog says the services are
FIXTURES = Path(__file__).parent / "fixtures" / "openstack"


@dataclass
class Keystone:
    url: str
    password: str
    setup_seconds: float
    proc: subprocess.Popen[bytes]


def _manage(conf: Path, *args: str) -> None:
    result = subprocess.run(
        ["/usr/bin/python3", str(KEYSTONE_MANAGE), "--config-file", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"keystone-manage {args[0]}: {result.stderr[-2000:]}"


@pytest.fixture(scope="module")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    if not KEYSTONE_WSGI.exists():
        pytest.fail("python3-keystone is not installed: run 'make setup' (scripts/setup-host.sh)")
    root = tmp_path_factory.mktemp("keystone")
    keys = {name: root / name for name in ("fernet", "receipts", "credential")}
    for path in keys.values():
        path.mkdir(mode=0o700)
    conf = root / "keystone.conf"
    conf.write_text(
        "[DEFAULT]\nuse_stderr = true\n"
        f"public_endpoint = {UNREACHABLE}/\n"
        f"[database]\nconnection = sqlite:///{root / 'keystone.db'}\n"
        "[token]\nprovider = fernet\n"
        f"[fernet_tokens]\nkey_repository = {keys['fernet']}\n"
        f"[fernet_receipts]\nkey_repository = {keys['receipts']}\n"
        f"[credential]\nkey_repository = {keys['credential']}\n"
        # bcrypt's cheapest cost: a test login should not spend a second hashing.
        "[identity]\npassword_hash_rounds = 4\n"
    )
    password = secrets.token_urlsafe(16)
    user = f"{os.getuid()}"
    started = time.monotonic()
    _manage(conf, "db_sync")
    _manage(conf, "fernet_setup", "--keystone-user", user, "--keystone-group", f"{os.getgid()}")
    _manage(conf, "credential_setup", "--keystone-user", user, "--keystone-group", f"{os.getgid()}")
    # `--option=value`: a random password may start with "-", which argparse takes for an option.
    _manage(
        conf,
        "bootstrap",
        f"--bootstrap-password={password}",
        f"--bootstrap-public-url={UNREACHABLE}/v3",
        "--bootstrap-region-id=RegionOne",
    )
    # WAL: a reader in one of Keystone's pooled connections must not block another's write
    # ("database is locked"); the journal mode is kept in the database file.
    with contextlib.closing(sqlite3.connect(root / "keystone.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
    port = free_port()
    log = (root / "keystone.log").open("wb")
    proc = subprocess.Popen(
        ["/usr/bin/python3", str(KEYSTONE_WSGI), "--port", str(port), "--host", "127.0.0.1"],
        env={"PATH": "/usr/bin:/bin", "OS_KEYSTONE_CONFIG_FILES": str(conf)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        wait_port(port, proc, timeout=60)
        ks = Keystone(f"http://127.0.0.1:{port}", password, time.monotonic() - started, proc)
        _seed(ks)
        ks.setup_seconds = time.monotonic() - started
        print(f"\nkeystone: set up and serving in {ks.setup_seconds:.1f} s")
        yield ks
    finally:
        stop(proc)
        log.close()


def _seed(ks: Keystone) -> None:
    """What an operator's cloud has: compute and image services in the catalog, a second project."""
    admin = _connect(ks.password, identity=f"{ks.url}/v3", auth_url=f"{ks.url}/v3")
    for kind, name, path in (("compute", "nova", "/v2.1"), ("image", "glance", "")):
        service = admin.identity.create_service(type=kind, name=name)
        admin.identity.create_endpoint(
            service_id=service.id, interface="public", url=f"{UNREACHABLE}{path}", region_id="RegionOne"
        )
    admin.identity.create_project(name="inventory", domain_id="default", description="CANARY-project-notes")
    admin.close()


def _connect(password: str, identity: str, auth_url: str, **overrides: str) -> Any:
    return openstack.connect(
        load_yaml_config=False,  # this machine's clouds.yaml and OS_* variables are not the test's
        load_envvars=False,
        auth_type="v3password",
        auth_url=auth_url,
        username="admin",
        password=password,
        project_name="admin",
        user_domain_name="Default",
        project_domain_name="Default",
        region_name="RegionOne",
        identity_endpoint_override=identity,
        **overrides,
    )


@pytest.fixture(scope="module")
def env(
    keystone: Keystone, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Chain, dict[str, str]]]:
    root = tmp_path_factory.mktemp("openstack")
    targets = [
        Target("keystone", "openstack-keystone", port=int(keystone.url.rsplit(":", 1)[1])),
        Target("nova", "openstack-nova"),
        Target("glance", "openstack-glance"),
    ]
    with (
        chain(root, targets) as c,
        c.forward("keystone") as ks,
        c.forward("nova") as nova,
        c.forward("glance") as glance,
    ):
        yield c, {"keystone": ks.url, "nova": nova.url, "glance": glance.url}


@pytest.fixture
def recorded(env: tuple[Chain, dict[str, str]], keystone: Keystone, tmp_path: Path) -> Iterator[Path]:
    c = env[0]
    nova, glance = c.targets["nova"].port, c.targets["glance"].port
    log_path = tmp_path / "recorded.log"
    cmd = [sys.executable, "-m", "tests.integration.openstack_recorded", "--keystone", keystone.url]
    cmd += ["--nova-port", str(nova), "--glance-port", str(glance), "--link-prefix", UNREACHABLE]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_port(nova, proc)
        wait_port(glance, proc)
        yield log_path
    finally:
        stop(proc)


def sdk(env: tuple[Chain, dict[str, str]], keystone: Keystone) -> Any:
    """openstacksdk as an operator configures it: every service's base URL is its forward."""
    fwd = env[1]
    return _connect(
        keystone.password,
        identity=f"{fwd['keystone']}/v3",
        auth_url=f"{fwd['keystone']}/v3",
        compute_endpoint_override=f"{fwd['nova']}/v2.1",
        image_endpoint_override=fwd["glance"],  # unversioned, as for Glance itself
    )


def test_openstacksdk_lists_projects_servers_and_images(
    env: tuple[Chain, dict[str, str]], keystone: Keystone, recorded: Path
) -> None:
    conn = sdk(env, keystone)
    projects = {p.name: p for p in conn.identity.projects()}
    servers = list(conn.compute.servers())
    images = list(conn.image.images())
    one = conn.compute.get_server("569f39f9-7c76-42a1-9c2d-8394e2638a6d")
    conn.close()

    assert {"admin", "inventory"} <= set(projects)
    assert projects["inventory"].description is None  # free text stays behind

    recorded_servers = json.loads((FIXTURES / "nova-servers-detail.json").read_text())["servers"]
    assert [(s.id, s.name, s.status) for s in servers] == [
        (r["id"], r["name"], r["status"]) for r in recorded_servers
    ]
    web = servers[0]
    assert web.flavor.original_name == "m1.tiny.specs" and web.flavor.ram == 512
    assert web.addresses["private"][0]["addr"] == "192.168.1.30"
    assert web.hypervisor_hostname == "fake-mini" and web.tags == ["web"]
    assert web.metadata in ({}, None) and web.description is None and web.user_data is None
    assert servers[1].attached_volumes[0]["id"] == "f5a2dd6c-26d5-4b43-b1c9-5b2d3b96f8a1"
    assert one.name == "new-server-test" and one.power_state == 1

    recorded_images = json.loads((FIXTURES / "glance-images.json").read_text())["images"]
    assert [(i.id, i.name, i.size, i.checksum) for i in images] == [
        (r["id"], r["name"], r["size"], r["checksum"]) for r in recorded_images
    ]
    assert images[0].architecture == "x86_64" and images[1].tags == ["golden"]

    parsed = json.dumps(
        [s.to_dict() for s in servers]
        + [i.to_dict() for i in images]
        + [p.to_dict() for p in projects.values()],
        default=str,
    )
    assert "CANARY" not in parsed
    # Every call reached Nova and Glance through the relay (their own URLs are closed ports).
    assert "GET /v2.1/servers/detail" in recorded.read_text()


def test_openstacksdk_refusals_carry_the_filters_reason(
    env: tuple[Chain, dict[str, str]], keystone: Keystone, recorded: Path
) -> None:
    conn = sdk(env, keystone)
    with pytest.raises(os_errors.ForbiddenException) as console:
        conn.compute.create_console("569f39f9-7c76-42a1-9c2d-8394e2638a6d", console_type="novnc")
    assert "console URLs give screen and keyboard access" in str(console.value)
    # openstacksdk does not check the status of an image download: it hashes the refusal's JSON
    # and reports a checksum mismatch. The bytes it got are the refusal, not the image.
    with pytest.raises(os_errors.InvalidResponse, match="checksum mismatch"):
        conn.image.download_image("1bea47ed-f6a9-463b-b423-14b9cca9ad27")
    status, headers, _body = call_url(
        f"{env[1]['glance']}/v2/images/1bea47ed-f6a9-463b-b423-14b9cca9ad27/file",
        {"X-Auth-Token": conn.session.get_token()},
    )
    assert status == 403 and "image data never leaves" in headers["X-Relay-Refusal"]
    with pytest.raises(os_errors.ForbiddenException) as creds:
        list(conn.identity.credentials())
    assert "the credential store holds EC2 and TOTP secrets" in str(creds.value)
    conn.close()
    assert "/file" not in recorded.read_text()  # the refused download never reached Glance


def test_a_token_not_issued_through_the_relay_opens_nothing(
    env: tuple[Chain, dict[str, str]], recorded: Path
) -> None:
    status, _h, body = call_url(f"{env[1]['nova']}/v2.1/servers/detail", {"X-Auth-Token": "gAAAAforged"})
    assert status == 401
    assert json.loads(body)["error"]["code"] == 401


def test_keystone_is_debians(keystone: Keystone) -> None:
    assert shutil.which("keystone-manage") is not None
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "python3-keystone"], capture_output=True, text=True
    )
    assert out.stdout.startswith("2:22."), out.stdout

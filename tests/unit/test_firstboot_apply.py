"""Apply in --root mode: files written, idempotent, and a run cut short at any step is finished next boot."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot import apply as applier
from firstboot.apply.access import set_shadow_hash
from firstboot.apply.network import render_network
from firstboot.errors import FirstbootError
from firstboot.settings import Settings, build
from firstboot.system import System
from tests.unit.test_firstboot_settings import SHA512, SSH_KEY, make_token

TOKEN = make_token("https://plane.example.com:8443")


def static_settings(**extra: str) -> Settings:
    return build(
        {
            "gateway.join_token": TOKEN,
            "network.mode": "static",
            "network.address": "192.0.2.10/24",
            "network.gateway": "192.0.2.1",
            "network.dns": "192.0.2.53",
            "network.ntp": "ntp.example.com",
            "network.hostname": "gw-01",
            "proxy.url": "http://bob:pw@proxy.example.com:3128",
            "admin.ssh_key": SSH_KEY,
            "admin.password_hash": SHA512,
            **extra,
        }
    )


def make_root(tmp_path: Path, name: str = "root") -> System:
    root = tmp_path / name
    (root / "etc").mkdir(parents=True)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n")
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\timage\n")
    return System.for_args(str(root))


def tree(root: Path) -> dict[str, bytes]:
    skip = ("var/lib/firstboot/state.json", "var/lib/firstboot/done")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)) not in skip
    }


SIMULATED = applier.steps(simulate_register=True)


def test_full_apply_writes_every_file(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    ran = applier.apply(system, static_settings(), plan=SIMULATED)
    assert ran == [s.name for s in SIMULATED]
    r = system.root
    net = (r / "etc/systemd/network/10-firstboot.network").read_text()
    assert "Address=192.0.2.10/24\nGateway=192.0.2.1\nDNS=192.0.2.53\nNTP=ntp.example.com\n" in net
    assert (r / "etc/hostname").read_text() == "gw-01\n"
    assert (r / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tgw-01\n"
    assert (
        (r / "etc/systemd/timesyncd.conf.d/50-firstboot.conf").read_text().endswith("NTP=ntp.example.com\n")
    )
    keys = r / "home/admin/.ssh/authorized_keys"
    assert keys.read_text() == SSH_KEY + "\n" and keys.stat().st_mode & 0o777 == 0o600
    assert (r / "home/admin/.ssh").stat().st_mode & 0o777 == 0o700
    shadow = r / "etc/shadow"
    assert f"admin:{SHA512}:19000:" in shadow.read_text() and shadow.stat().st_mode & 0o777 == 0o640
    conf = yaml.safe_load((r / "etc/gateway/gateway.yaml").read_text())
    assert conf == {
        "plane_url": "https://plane.example.com:8443",
        "state_dir": "/var/lib/gateway",
        "proxy_url": "http://bob:pw@proxy.example.com:3128",
        "targets": "/etc/gateway/targets.yaml",
        "policy_dirs": ["/usr/share/gateway/policies", "/etc/gateway/policies.d"],
    }
    assert (r / "etc/gateway/gateway.yaml").stat().st_mode & 0o777 == 0o640
    assert yaml.safe_load((r / "etc/gateway/targets.yaml").read_text()) == {"targets": []}
    state = r / "var/lib/firstboot/state.json"
    assert state.stat().st_mode & 0o777 == 0o600
    assert applier.is_done(system)
    assert ["systemctl", "enable", "--now", "--no-block", "ssh.service"] in system.recorded
    assert ["systemctl", "enable", "--now", "--no-block", "gateway.service"] in system.recorded
    assert ["hostnamectl", "set-hostname", "gw-01"] in system.recorded
    # Nothing leaves temp files behind.
    assert not [p for p in r.rglob("*.tmp")]


def test_second_run_does_nothing_and_rewrite_is_byte_identical(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    applier.apply(system, static_settings(), plan=SIMULATED)
    before = tree(system.root)
    assert applier.apply(system, static_settings(), plan=SIMULATED) == []
    # Re-running every step from scratch (as after a torn state file) changes nothing either.
    (system.root / "var/lib/firstboot/state.json").write_text('{"completed": ["netw')
    assert applier.apply(system, static_settings(), plan=SIMULATED) == [s.name for s in SIMULATED]
    assert tree(system.root) == before


@pytest.mark.parametrize("cut", range(len(SIMULATED)))
def test_power_cut_after_each_step_is_finished_by_next_boot(tmp_path: Path, cut: int) -> None:
    reference = make_root(tmp_path, "reference")
    applier.apply(reference, static_settings(), plan=SIMULATED)

    system = make_root(tmp_path)
    applier.apply(system, static_settings(), plan=SIMULATED[:cut])
    assert not applier.is_done(system)
    # A write torn by the power cut leaves only a temp file, which is ignored.
    (system.root / "etc/.hostname.crash.tmp").write_text("gw-")
    # The next boot may no longer see the seed: the saved settings finish the job.
    saved = applier.saved_settings(system)
    assert saved == static_settings()
    ran = applier.apply(system, saved, plan=SIMULATED)
    assert ran == [s.name for s in SIMULATED[cut:]]
    assert applier.is_done(system)
    (system.root / "etc/.hostname.crash.tmp").unlink()
    assert tree(system.root) == tree(reference.root)


def test_failed_step_is_recorded_and_resumed(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    (system.root / "etc/shadow").unlink()
    with pytest.raises(FirstbootError, match=r"^Console password: .*/etc/shadow: missing"):
        applier.apply(system, static_settings(), plan=SIMULATED)
    assert applier.last_error(system) is not None and "Console password" in (applier.last_error(system) or "")
    state = json.loads((system.root / "var/lib/firstboot/state.json").read_text())
    assert state["completed"] == ["network", "hostname", "ntp", "ssh"]
    (system.root / "etc/shadow").write_text("admin:!:1::::::\n")
    assert applier.apply(system, static_settings(), plan=SIMULATED) == [
        "password",
        "register",
        "config",
        "enable",
    ]
    assert applier.last_error(system) is None


def test_changed_settings_redo_every_step(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    applier.apply(system, static_settings(), plan=SIMULATED[:3])
    ran = applier.apply(system, static_settings(**{"network.hostname": "gw-02"}), plan=SIMULATED)
    assert ran == [s.name for s in SIMULATED]
    assert (system.root / "etc/hostname").read_text() == "gw-02\n"


def test_dhcp_without_key_or_password_leaves_ssh_off(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    settings = build({"gateway.join_token": TOKEN})
    applier.apply(system, settings, plan=SIMULATED)
    assert not (system.root / "home/admin/.ssh").exists()
    assert not any("ssh.service" in " ".join(cmd) for cmd in system.recorded)
    assert (system.root / "etc/shadow").read_text().startswith("root:*")
    assert "admin:!:" in (system.root / "etc/shadow").read_text()
    conf = yaml.safe_load((system.root / "etc/gateway/gateway.yaml").read_text())
    assert "proxy_url" not in conf
    assert not (system.root / "etc/systemd/timesyncd.conf.d/50-firstboot.conf").exists()


def test_config_keeps_keys_others_added(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    conf = system.root / "etc/gateway/gateway.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("plane_url: https://old\nheartbeat_s: 7\nproxy_url: http://old:1\n")
    applier.apply(system, build({"gateway.join_token": TOKEN}), plan=SIMULATED)
    data = yaml.safe_load(conf.read_text())
    assert data["heartbeat_s"] == 7 and data["plane_url"] == "https://plane.example.com:8443"
    assert "proxy_url" not in data


def write_identity(state_dir: Path, plane_url: str) -> str:
    """A real, consistent identity (CA, key, cert with CN = gateway id), as registration leaves it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test plane CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    gid = str(uuid.uuid4())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gid)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    state_dir.mkdir(parents=True, mode=0o700)
    pem = serialization.Encoding.PEM
    (state_dir / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (state_dir / "cert.pem").write_bytes(cert.public_bytes(pem))
    (state_dir / "ca.pem").write_bytes(ca.public_bytes(pem))
    (state_dir / "identity.json").write_text(json.dumps({"gateway_id": gid, "plane_url": plane_url}))
    return gid


def test_existing_identity_is_not_registered_again(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    write_identity(system.path("/var/lib/gateway"), "https://plane.example.com:8443")
    # The real registration step: with a valid identity for this plane it never touches the network.
    applier.apply(system, build({"gateway.join_token": TOKEN}))
    assert applier.is_done(system)
    assert not any(cmd[:2] == ["chown", "-R"] for cmd in system.recorded)


def test_pure_renderers() -> None:
    dhcp = build({"gateway.join_token": TOKEN, "network.dns": "192.0.2.53"})
    assert render_network(dhcp).endswith("[Network]\nDHCP=yes\nDNS=192.0.2.53\n\n[DHCPv4]\nUseDNS=no\n")
    assert set_shadow_hash("a:x:1\nadmin:!:2::\n", "admin", "$6$h") == "a:x:1\nadmin:$6$h:2::\n"
    with pytest.raises(FirstbootError, match="no entry for user 'admin'"):
        set_shadow_hash("root:*:1\n", "admin", "$6$h")


def test_ssh_key_opens_port_22_and_turning_ssh_off_closes_it(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    applier.apply(system, static_settings(), plan=SIMULATED)
    rule = system.root / "etc/nftables.d/50-ssh.nft"
    assert rule.read_text().endswith("\ntcp dport 22 accept\n")
    cmds = system.recorded
    # Host keys are made before sshd starts; the rule set is checked before it is loaded.
    assert cmds.index(["ssh-keygen", "-A"]) < cmds.index(
        ["systemctl", "enable", "--now", "--no-block", "ssh.service"]
    )
    check = cmds.index(["nft", "-c", "-f", "/etc/nftables.conf"])
    assert cmds[check + 1] == ["systemctl", "reload-or-restart", "nftables.service"]

    # The same appliance, its settings changed to no key (a corrected seed or wizard answer).
    system.recorded.clear()
    applier.apply(system, static_settings(**{"admin.ssh_key": ""}), plan=SIMULATED)
    assert not rule.exists()
    assert not (system.root / "home/admin/.ssh/authorized_keys").exists()
    # sshd goes first, the port closes last (a power cut in between leaves the rule to retry).
    ssh_cmds = [
        c for c in system.recorded if "ssh" in " ".join(c) or c[0] == "nft" or "nftables" in " ".join(c)
    ]
    assert ssh_cmds == [
        ["systemctl", "disable", "--now", "ssh.service", "ssh.socket"],
        ["nft", "-c", "-f", "/etc/nftables.conf"],
        ["systemctl", "reload-or-restart", "nftables.service"],
    ]
    # Applied again without a key: nothing left to undo, nothing run.
    system.recorded.clear()
    (system.root / "var/lib/firstboot/state.json").unlink()
    applier.apply(system, static_settings(**{"admin.ssh_key": ""}), plan=SIMULATED)
    assert not [c for c in system.recorded if "ssh" in " ".join(c) or c[0] == "nft"]


def test_sudo_without_password_only_for_a_key_only_admin(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    sudoers = system.root / "etc/sudoers.d/50-firstboot-admin"
    applier.apply(system, static_settings(**{"admin.password_hash": ""}), plan=SIMULATED)
    assert sudoers.read_text().endswith("\nadmin ALL=(ALL:ALL) NOPASSWD: ALL\n")
    assert sudoers.stat().st_mode & 0o777 == 0o440
    # With a console password sudo asks for it (Debian's %sudo rule), so the drop-in goes.
    applier.apply(system, static_settings(), plan=SIMULATED)
    assert not sudoers.exists()

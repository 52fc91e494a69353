"""The appliance's rule set, as first boot leaves it with and without an SSH key, checked and loaded by nft.

nft runs in a network namespace of its own (`unshare --net`), so the host's firewall is never
read or touched. The shipped nftables.conf is used as it is, but for its include directory,
which points into the test's root.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from firstboot.apply import access
from firstboot.errors import FirstbootError
from firstboot.settings import build
from firstboot.system import System
from tests.unit.test_firstboot_settings import SSH_KEY, make_token

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "image/mkosi.extra/etc/nftables.conf"
INCLUDE = 'include "/etc/nftables.d/*.nft"'
NFT_CONF = "/etc/nftables.conf"
SSH_RULE = "/etc/nftables.d/50-ssh.nft"


class NetnsSystem(System):
    """A --root tree whose nft checks really run (in a private network namespace, on the tree's files)."""

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if list(argv) == ["nft", "-c", "-f", NFT_CONF]:
            self.recorded.append(list(argv))
            return nft("-c", "-f", str(self.path(NFT_CONF)))
        return super().run(argv, **kwargs)


def nft(*args: str, then: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """nft in a fresh network namespace (and optionally a second nft command in the same one)."""
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.fail("nft or unshare is missing: run 'make setup' (scripts/setup-host.sh installs nftables)")
    script = 'nft "$@"' + (" && nft " + " ".join(then) if then else "")
    argv = ["unshare", "--net", "sh", "-c", script, "sh", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def appliance_root(tmp_path: Path) -> NetnsSystem:
    root = tmp_path / "root"
    (root / "etc/nftables.d").mkdir(parents=True)
    shipped = SHIPPED.read_text()
    assert shipped.count(INCLUDE) == 1
    (root / "etc/nftables.conf").write_text(
        shipped.replace(INCLUDE, f'include "{root}/etc/nftables.d/*.nft"')
    )
    return NetnsSystem(root=root, record_only=True)


def settings(ssh_key: str | None) -> Any:
    values = {"gateway.join_token": make_token()}
    if ssh_key:
        values["admin.ssh_key"] = ssh_key
    return build(values)


def input_chain(system: System) -> str:
    proc = nft("-f", str(system.path(NFT_CONF)), then=["list", "chain", "inet", "appliance", "input"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_without_a_key_the_rule_set_loads_and_drops_ssh(tmp_path: Path) -> None:
    system = appliance_root(tmp_path)
    access.apply_ssh(system, settings(None))
    check = nft("-c", "-f", str(system.path(NFT_CONF)))
    assert check.returncode == 0, check.stderr
    chain = input_chain(system)
    assert "policy drop" in chain
    assert "dport 22" not in chain


def test_a_key_opens_port_22_and_turning_ssh_off_closes_it_again(tmp_path: Path) -> None:
    system = appliance_root(tmp_path)
    access.apply_ssh(system, settings(SSH_KEY))
    assert ["nft", "-c", "-f", NFT_CONF] in system.recorded  # the real check passed
    chain = input_chain(system)
    assert "tcp dport 22 accept" in chain and "policy drop" in chain

    access.apply_ssh(system, settings(None))
    assert not system.path(SSH_RULE).exists()
    assert "dport 22" not in input_chain(system)


def test_a_rule_nft_refuses_is_rolled_back(tmp_path: Path) -> None:
    from firstboot.apply import firewall

    system = appliance_root(tmp_path)
    access.apply_ssh(system, settings(SSH_KEY))
    good = system.path(SSH_RULE).read_text()
    with pytest.raises(
        FirstbootError, match=r"^/etc/nftables.conf: the rule set with .*50-ssh.nft does not load"
    ):
        firewall.set_rule(system, firewall.SSH_RULE, "tcp dport 22 acept\n")
    assert system.path(SSH_RULE).read_text() == good
    assert "tcp dport 22 accept" in input_chain(system)

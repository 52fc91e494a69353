"""The inbound firewall's openings: rule files in the include directory of the shipped nftables.conf.

/etc/nftables.conf (shipped with the image, never rewritten) drops all inbound traffic and
includes /etc/nftables.d/*.nft inside its input chain. First boot adds or removes one file per
opening, checks the whole rule set with `nft -c` before loading it, and puts the previous file back
when the check fails, so a bad rule never replaces a working firewall. The directory is on the root
filesystem, beside the rest of first boot's configuration (the .network file, sshd's enablement):
nftables.service runs before local filesystems such as /var are mounted, so a rule there would not
survive a reboot.
"""

from __future__ import annotations

from firstboot.errors import FirstbootError
from firstboot.system import System, atomic_write, remove

NFT_CONF = "/etc/nftables.conf"
SSH_RULE = "/etc/nftables.d/50-ssh.nft"


def render_ssh_rule(enabled: bool) -> str | None:
    """The rule file that opens port 22, or None when SSH is off (pure)."""
    if not enabled:
        return None
    return (
        "# Written by firstboot: SSH is on because admin.ssh_key is set; removed when it is not.\n"
        "tcp dport 22 accept\n"
    )


def set_rule(system: System, path: str, text: str | None) -> bool:
    """Write (or remove) one rule file and load the rule set; returns whether anything changed."""
    target = system.path(path)
    try:
        previous: bytes | None = target.read_bytes()
    except FileNotFoundError:
        previous = None
    changed = remove(target) if text is None else atomic_write(target, text)
    if not changed:
        return False
    check = system.run(["nft", "-c", "-f", NFT_CONF], check=False, why="check the firewall rules")
    if check.returncode != 0:
        if previous is None:
            remove(target)
        else:
            atomic_write(target, previous)
        detail = (check.stderr or check.stdout).strip().splitlines()
        raise FirstbootError(
            f"{NFT_CONF}: the rule set with {path} does not load: {detail[-1] if detail else 'no output'}"
        )
    system.run(["systemctl", "reload-or-restart", "nftables.service"], why="load the firewall rules")
    return True

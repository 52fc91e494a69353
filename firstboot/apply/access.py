"""Admin access: SSH (on only with a key; port 22 opened with it), the console password, sudo."""

from __future__ import annotations

import os

from firstboot.apply import firewall
from firstboot.apply.lines import one_line, token
from firstboot.errors import FirstbootError
from firstboot.settings import Settings
from firstboot.system import System, atomic_write, remove

ADMIN = "admin"
HOME = "/home/admin"
AUTHORIZED_KEYS = f"{HOME}/.ssh/authorized_keys"
SUDOERS = "/etc/sudoers.d/50-firstboot-admin"


def render_authorized_keys(settings: Settings) -> str | None:
    """authorized_keys with the one admin key, or None when SSH is off (pure)."""
    if not settings.ssh_key:
        return None
    return one_line("admin.ssh_key", settings.ssh_key) + "\n"


def apply_ssh(system: System, settings: Settings) -> None:
    """With a key: the key, this appliance's own host keys, port 22 open, sshd on. Without: all undone."""
    keys = render_authorized_keys(settings)
    if keys is None:
        _ssh_off(system)
        return
    ssh_dir = system.path(f"{HOME}/.ssh")
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    atomic_write(system.path(AUTHORIZED_KEYS), keys, mode=0o600)
    system.run(["chown", "-R", f"{ADMIN}:{ADMIN}", f"{HOME}/.ssh"], why="give the admin user its SSH key")
    # The image ships without host keys: each appliance makes its own (only the missing ones).
    system.run(["ssh-keygen", "-A"], why="make this appliance's SSH host keys")
    firewall.set_rule(system, firewall.SSH_RULE, firewall.render_ssh_rule(True))
    system.run(["systemctl", "enable", "--now", "--no-block", "ssh.service"], why="enable SSH")


def _ssh_off(system: System) -> None:
    """Undo an earlier run's SSH (a changed seed or wizard answer); nothing to do on a fresh image."""
    if not system.path(firewall.SSH_RULE).exists() and not system.path(AUTHORIZED_KEYS).exists():
        return
    # sshd first and the port last: a power cut in between leaves the rule file, so the next run
    # comes here again.
    system.run(["systemctl", "disable", "--now", "ssh.service", "ssh.socket"], why="turn SSH off")
    remove(system.path(AUTHORIZED_KEYS))
    firewall.set_rule(system, firewall.SSH_RULE, None)


def set_shadow_hash(shadow_text: str, user: str, crypt_hash: str) -> str:
    """Return the shadow file with the user's hash replaced (pure)."""
    token("admin.password_hash", crypt_hash, forbidden=":")
    out = []
    found = False
    for line in shadow_text.splitlines():
        fields = line.split(":")
        if fields[0] == user and len(fields) >= 2:
            fields[1] = crypt_hash
            line = ":".join(fields)
            found = True
        out.append(line)
    if not found:
        raise FirstbootError(f"/etc/shadow: no entry for user {user!r} (the image creates it)")
    return "\n".join(out) + "\n"


def render_sudoers(settings: Settings) -> str | None:
    """A sudoers drop-in for an admin who has an SSH key and no password, else None (pure).

    sudo asks for the admin's password (Debian's %sudo rule). Without one, an admin who logs in
    with a key could never become root, so for that admin sudo asks for nothing: the key is the
    credential. Once a console password is set, the drop-in goes and sudo asks for it again.
    """
    if not settings.ssh_key or settings.password_hash:
        return None
    return (
        "# Written by firstboot: admin has an SSH key and no password, so sudo has none to ask for.\n"
        f"{ADMIN} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    )


def apply_password(system: System, settings: Settings) -> None:
    """Set the admin console password hash (usermod -p live; the shadow file under --root); sudo's rule."""
    sudoers = render_sudoers(settings)
    if sudoers is None:
        remove(system.path(SUDOERS))
    else:
        atomic_write(system.path(SUDOERS), sudoers, mode=0o440)
    if not settings.password_hash:
        return
    password_hash = token("admin.password_hash", settings.password_hash, forbidden=":")
    if system.live:
        system.run(["usermod", "-p", password_hash, ADMIN], why="set the admin password")
        return
    shadow = system.path("/etc/shadow")
    try:
        text = shadow.read_text()
    except FileNotFoundError:
        raise FirstbootError(f"{shadow}: missing (the image creates it with the admin user)") from None
    mode = shadow.stat().st_mode & 0o777
    atomic_write(shadow, set_shadow_hash(text, ADMIN, password_hash), mode=mode)

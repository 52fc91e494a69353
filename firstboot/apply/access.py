"""Admin access: SSH key (SSH is enabled only with one) and the console password hash."""

from __future__ import annotations

import os

from firstboot.apply.lines import one_line, token
from firstboot.errors import FirstbootError
from firstboot.settings import Settings
from firstboot.system import System, atomic_write

ADMIN = "admin"
HOME = "/home/admin"


def render_authorized_keys(settings: Settings) -> str | None:
    """authorized_keys with the one admin key, or None when SSH is off (pure)."""
    if not settings.ssh_key:
        return None
    return one_line("admin.ssh_key", settings.ssh_key) + "\n"


def apply_ssh(system: System, settings: Settings) -> None:
    """Install the admin's authorized_keys and enable sshd; without a key SSH stays off."""
    keys = render_authorized_keys(settings)
    if keys is None:
        return
    ssh_dir = system.path(f"{HOME}/.ssh")
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    atomic_write(ssh_dir / "authorized_keys", keys, mode=0o600)
    system.run(["chown", "-R", f"{ADMIN}:{ADMIN}", f"{HOME}/.ssh"], why="give the admin user its SSH key")
    system.run(["systemctl", "enable", "--now", "--no-block", "ssh.service"], why="enable SSH")


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


def apply_password(system: System, settings: Settings) -> None:
    """Set the admin console password hash (usermod -p live; the shadow file under --root)."""
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

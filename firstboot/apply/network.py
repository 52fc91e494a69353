"""Network, hostname and NTP: systemd-networkd, /etc/hostname and a timesyncd drop-in."""

from __future__ import annotations

import logging

from firstboot.apply.lines import token
from firstboot.settings import Settings
from firstboot.system import System, atomic_write, remove
from gwcore.deploy import NetworkMode

log = logging.getLogger(__name__)

NETWORK_FILE = "/etc/systemd/network/10-firstboot.network"
TIMESYNCD_DROPIN = "/etc/systemd/timesyncd.conf.d/50-firstboot.conf"
WAIT_ONLINE = "/usr/lib/systemd/systemd-networkd-wait-online"
# Sorted before the image's default DHCP file, so it is the one networkd picks for these links.
MATCH = "Name=en* eth*"


def render_network(settings: Settings) -> str:
    """The .network file for the settings (pure)."""
    lines = ["# Written by firstboot; reconfigure from the console menu.", "[Match]", MATCH, "", "[Network]"]
    if settings.mode == NetworkMode.STATIC:
        address = token("network.address", settings.address or "", forbidden="%")
        gateway = token("network.gateway", settings.gateway or "", forbidden="%")
        lines += ["DHCP=no", f"Address={address}", f"Gateway={gateway}"]
    else:
        lines += ["DHCP=yes"]
    lines += [f"DNS={token('network.dns', dns, forbidden='%')}" for dns in settings.dns]
    lines += [f"NTP={token('network.ntp', ntp, forbidden='%')}" for ntp in settings.ntp]
    if settings.mode == NetworkMode.DHCP and (settings.dns or settings.ntp):
        # Explicit servers replace what the DHCP server offers rather than being mixed with it.
        lines += ["", "[DHCPv4]"]
        lines += ["UseDNS=no"] if settings.dns else []
        lines += ["UseNTP=no"] if settings.ntp else []
    return "\n".join(lines) + "\n"


def render_timesyncd(settings: Settings) -> str | None:
    """The timesyncd drop-in, or None when no NTP servers are set (pure)."""
    if not settings.ntp:
        return None
    servers = [token("network.ntp", ntp, forbidden="%") for ntp in settings.ntp]
    return "# Written by firstboot.\n[Time]\nNTP=" + " ".join(servers) + "\n"


def snapshot(system: System) -> bytes | None:
    """The current network file, to roll back to."""
    try:
        return system.path(NETWORK_FILE).read_bytes()
    except FileNotFoundError:
        return None


def reload(system: System) -> None:
    """Make networkd pick up changed .network files."""
    system.run(["networkctl", "reload"], why="apply the network settings")


def restore(system: System, previous: bytes | None) -> None:
    """Roll back to a snapshot taken before a change."""
    path = system.path(NETWORK_FILE)
    if previous is None:
        remove(path)
    else:
        atomic_write(path, previous)
    reload(system)


def apply_network(system: System, settings: Settings) -> None:
    """Write the .network file, reload networkd and wait (bounded) for a link to come online."""
    atomic_write(system.path(NETWORK_FILE), render_network(settings))
    reload(system)
    # Best effort: registration reports the real problem if the link never comes up.
    system.run([WAIT_ONLINE, "--any", "--timeout=60"], check=False, timeout=90)


def apply_hostname(system: System, settings: Settings) -> None:
    """Set /etc/hostname (and the live hostname), plus the Debian 127.0.1.1 line in /etc/hosts."""
    if not settings.hostname:
        return
    hostname = token("network.hostname", settings.hostname)
    atomic_write(system.path("/etc/hostname"), hostname + "\n")
    hosts = system.path("/etc/hosts")
    try:
        old = hosts.read_text().splitlines()
    except FileNotFoundError:
        old = ["127.0.0.1\tlocalhost"]
    new = [line for line in old if not line.startswith("127.0.1.1")]
    new.insert(1 if new else 0, f"127.0.1.1\t{hostname}")
    atomic_write(hosts, "\n".join(new) + "\n")
    system.run(["hostnamectl", "set-hostname", hostname], why="set the host name")


def apply_ntp(system: System, settings: Settings) -> None:
    """Write (or remove) the timesyncd drop-in and restart timesyncd if it runs."""
    text = render_timesyncd(settings)
    path = system.path(TIMESYNCD_DROPIN)
    changed = remove(path) if text is None else atomic_write(path, text)
    if changed:
        system.run(["systemctl", "try-restart", "systemd-timesyncd.service"], check=False)

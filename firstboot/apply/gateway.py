"""Registration, the gateway's config file and starting the gateway."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from firstboot.settings import Settings
from firstboot.system import System, atomic_write
from gwcore import paths
from gwcore.safeload import loads_yaml

log = logging.getLogger(__name__)

STATE_DIR = str(paths.STATE_DIR)
CONFIG = str(paths.CONFIG)
TARGETS = str(paths.TARGETS)
POLICY_DIRS = [str(paths.SHIPPED_POLICY_DIR), str(paths.LOCAL_POLICY_DIR)]
GATEWAY_USER = "gateway"


def apply_register(system: System, settings: Settings, *, simulate: bool = False) -> None:
    """Register with the plane unless an identity for this plane already exists."""
    from firstboot.register.client import load_identity  # aiohttp is slow to import; only this step needs it

    state_dir = system.path(STATE_DIR)
    ident = load_identity(state_dir)
    if ident is not None and ident.plane_url.rstrip("/") == settings.plane_url:
        log.info("already registered as %s with %s", ident.gateway_id, settings.plane_url)
        return
    if simulate:
        log.info("dry run: would register with %s", settings.plane_url)
        return
    register_into(system, settings, state_dir)


def register_into(system: System, settings: Settings, state_dir: Path, *, force: bool = False) -> str:
    """Run the enrolment (firstboot.register.client) into state_dir; returns the gateway id."""
    from firstboot.register.client import register

    hostname = settings.hostname or socket.gethostname()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = register(
        settings.join_token, state_dir, hostname=hostname, proxy_url=settings.proxy_url, force=force
    )
    state_dir.chmod(0o700)
    system.run(
        ["chown", "-R", f"{GATEWAY_USER}:{GATEWAY_USER}", STATE_DIR], why="hand the identity to the gateway"
    )
    log.info("registered as %s", identity.gateway_id)
    return identity.gateway_id


def render_config(settings: Settings, existing: dict[str, Any] | None = None) -> str:
    """gateway.yaml with our keys set; other keys an admin or the relay added are kept (pure)."""
    data: dict[str, Any] = dict(existing or {})
    data["plane_url"] = settings.plane_url
    data["state_dir"] = STATE_DIR
    if settings.proxy_url:
        data["proxy_url"] = settings.proxy_url
    else:
        data.pop("proxy_url", None)
    data.setdefault("targets", TARGETS)
    data.setdefault("policy_dirs", list(POLICY_DIRS))
    import yaml  # here: slow to import, and only needed once settings are applied

    return "# Written by firstboot.\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def apply_config(system: System, settings: Settings) -> None:
    """Write /etc/gateway/gateway.yaml (0640, it may hold proxy credentials) and an empty inventory."""
    path = system.path(CONFIG)
    existing: dict[str, Any] | None = None
    try:
        loaded = loads_yaml(path.read_text())
        existing = loaded if isinstance(loaded, dict) else None
    except FileNotFoundError:
        pass
    except ValueError as exc:  # ParseError, UnicodeDecodeError
        log.warning("%s: unreadable (%s); rewriting it", path, exc)
    atomic_write(path, render_config(settings, existing), mode=0o640)
    system.run(["chown", f"root:{GATEWAY_USER}", CONFIG], why="let the gateway read its config")
    targets = system.path(TARGETS)
    if not targets.exists():
        atomic_write(targets, "# Targets the gateway may reach; see docs.\ntargets: []\n", mode=0o644)


def apply_enable(system: System, settings: Settings) -> None:
    """Enable and start gateway.service without waiting (firstboot.service is ordered before it)."""
    del settings
    system.run(["systemctl", "enable", "--now", "--no-block", "gateway.service"], why="start the gateway")

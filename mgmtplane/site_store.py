"""The sites' admin settings on disk: `sites.json` in the state dir (priorities per gateway).

Written atomically under the state dir's lock by `mgmtplane site set-priority`; the running plane
reads it again when it changes (mgmtplane.site_routes), so a priority applies without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgmtplane.errors import PlaneError
from mgmtplane.registry import read_json, state_lock, write_json_atomic
from mgmtplane.sites import check_priority, check_site

SITES_FILE = "sites.json"

# site -> gateway id -> priority
Priorities = dict[str, dict[str, int]]


def _parse(path: Path, data: Any) -> Priorities:
    if not isinstance(data, dict) or not isinstance(data.get("sites", {}), dict):
        raise PlaneError(f"{path}: sites: expected an object")
    out: Priorities = {}
    for site, entry in data.get("sites", {}).items():
        where = f"{path}: sites.{site}"
        try:
            check_site(site)
        except PlaneError as exc:
            raise PlaneError(f"{where}: not a valid site name") from exc
        prios = entry.get("priorities", {}) if isinstance(entry, dict) else None
        if not isinstance(prios, dict):
            raise PlaneError(f"{where}: priorities: expected an object")
        out[site] = {str(gw): check_priority(n, f"{where}.priorities.{gw}") for gw, n in prios.items()}
    return out


def load_priorities(state_dir: Path) -> Priorities:
    """Every site's admin-set priorities (none set: {}); a malformed file is a one-line PlaneError."""
    path = state_dir / SITES_FILE
    return _parse(path, read_json(path, {"sites": {}}))


def set_priority(state_dir: Path, site: str, gateway_id: str, priority: int | None) -> None:
    """Set (or with None, clear) one gateway's priority in a site, atomically."""
    check_site(site)
    if priority is not None:
        check_priority(priority)
    with state_lock(state_dir):
        prios = load_priorities(state_dir)
        site_prios = prios.setdefault(site, {})
        if priority is None:
            site_prios.pop(gateway_id, None)
        else:
            site_prios[gateway_id] = priority
        data = {"sites": {name: {"priorities": p} for name, p in sorted(prios.items()) if p}}
        write_json_atomic(state_dir / SITES_FILE, data, mode=0o600)

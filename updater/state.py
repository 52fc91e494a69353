"""The updater's record on /var (it survives slot switches): an install in progress or awaiting its
first boot, and the outcome of the last one, which an update agent reports to the plane.

{"installing": {...}}   written before RAUC touches the other slot; still there at the next boot
                        means the install was cut off (power, a killed VM).
{"pending": {...}}      written once RAUC finished: the next boot of that slot is its trial.
{"trial_failure": "…"}  why the health check gave up on the trial, written before it reboots.
{"last": {...}}         the last outcome: installed, rolled-back or interrupted, with the reason.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gwcore.atomic import write_atomic

log = logging.getLogger(__name__)


def load(path: Path) -> dict[str, Any]:
    """The state, or an empty one if the file is missing or torn (never a reason to fail a boot)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); starting from an empty update state", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def save(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically (a power cut leaves the old or the new file, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

"""Apply settings as a table of idempotent steps; state.json records progress so a power cut resumes."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from firstboot.errors import FirstbootError, Reason
from firstboot.settings import Settings, build
from firstboot.system import System, atomic_write, remove
from gwcore.safeload import loads_json

log = logging.getLogger(__name__)

STATE_FILE = "/var/lib/firstboot/state.json"
DONE_FILE = "/var/lib/firstboot/done"
ERROR_FILE = "/var/lib/firstboot/last-error"


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[System, Settings], None]


def steps(*, simulate_register: bool = False) -> list[Step]:
    """The steps in order; every one is idempotent."""
    # Imported here: `firstboot run` without seeds, and the wizard until it applies, need none of
    # them, and under emulation each import is a noticeable part of the time to the console.
    from firstboot.apply import access, gateway, network

    def register(system: System, settings: Settings) -> None:
        gateway.apply_register(system, settings, simulate=simulate_register)

    return [
        Step("network", "Network", network.apply_network),
        Step("hostname", "Host name", network.apply_hostname),
        Step("ntp", "Time (NTP)", network.apply_ntp),
        Step("ssh", "Admin SSH key", access.apply_ssh),
        Step("password", "Console password", access.apply_password),
        Step("register", "Registration with the management plane", register),
        Step("config", "Gateway configuration", gateway.apply_config),
        Step("enable", "Start the gateway", gateway.apply_enable),
    ]


def digest(settings: Settings) -> str:
    """Identifies the settings a state file belongs to."""
    return hashlib.sha256(settings.digest_input().encode()).hexdigest()


def load_state(system: System) -> dict[str, Any]:
    """The state file, or an empty state if it is missing or torn (every step is idempotent anyway)."""
    try:
        data = loads_json(system.path(STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); redoing every step", STATE_FILE, exc)
        return {}
    return data if isinstance(data, dict) else {}


def saved_settings(system: System) -> Settings | None:
    """Settings of an unfinished earlier run (so the next boot finishes it even if the seed is gone)."""
    state = load_state(system)
    raw = state.get("settings")
    if not isinstance(raw, dict):
        return None
    try:
        return build({str(k): str(v) for k, v in raw.items()}, {str(k): "saved-state" for k in raw})
    except FirstbootError as exc:
        log.warning("%s: saved settings are no longer valid: %s", STATE_FILE, exc)
        return None


def _save(system: System, settings: Settings, completed: list[str]) -> None:
    state = {
        "digest": digest(settings),
        "completed": completed,
        "settings": settings.raw(),
        "updated": time.time(),
    }
    # 0600: the settings include the (single-use) join token.
    atomic_write(system.path(STATE_FILE), json.dumps(state, indent=2) + "\n", mode=0o600)


def is_done(system: System) -> bool:
    """Whether first boot has completed."""
    return system.path(DONE_FILE).exists()


def _error_lines(system: System) -> list[str]:
    try:
        return system.path(ERROR_FILE).read_text().strip().splitlines()
    except OSError:
        return []


def last_error(system: System) -> str | None:
    """The last recorded failure, if any."""
    lines = _error_lines(system)
    return lines[0] if lines else None


def last_reason(system: System) -> Reason:
    """The reason code of the last recorded failure (OTHER when none was recorded)."""
    for line in _error_lines(system)[1:]:
        key, _, value = line.partition(": ")
        if key == "reason" and value in Reason.__members__.values():
            return Reason(value)
    return Reason.OTHER


Progress = Callable[[Step, str], None]  # (step, "start"|"done"|"skip"|"fail")


def apply(
    system: System,
    settings: Settings,
    *,
    plan: Sequence[Step] | None = None,
    progress: Progress | None = None,
    mark_done: bool = True,
) -> list[str]:
    """Run the steps not yet recorded for these settings; returns the names of steps run now."""
    plan = list(plan) if plan is not None else steps()
    state = load_state(system)
    completed: list[str] = list(state.get("completed", [])) if state.get("digest") == digest(settings) else []
    ran: list[str] = []
    _save(system, settings, completed)
    for step in plan:
        if step.name in completed:
            if progress:
                progress(step, "skip")
            continue
        if progress:
            progress(step, "start")
        started = time.monotonic()
        try:
            step.run(system, settings)
        except FirstbootError as exc:
            # The reason code rides along on a second line, for the console's explanation.
            atomic_write(system.path(ERROR_FILE), f"{step.title}: {exc}\nreason: {exc.reason}\n")
            if progress:
                progress(step, "fail")
            raise FirstbootError(f"{step.title}: {exc.message}", exc.hint, exc.reason) from exc
        log.info("step %s done in %.1f s", step.name, time.monotonic() - started)
        completed.append(step.name)
        ran.append(step.name)
        _save(system, settings, completed)
        if progress:
            progress(step, "done")
    if mark_done and all(step.name in completed for step in steps()):
        atomic_write(system.path(DONE_FILE), time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        remove(system.path(ERROR_FILE))
    return ran


def forget(system: System, step_name: str) -> None:
    """Drop a step from the completed list (after a rollback), so the next apply runs it again."""
    state = load_state(system)
    completed = state.get("completed")
    if isinstance(completed, list) and step_name in completed:
        state["completed"] = [s for s in completed if s != step_name]
        atomic_write(system.path(STATE_FILE), json.dumps(state, indent=2) + "\n", mode=0o600)


def remember(system: System, settings: Settings) -> None:
    """Record changed settings after first boot (e.g. a network reconfiguration) as fully applied."""
    _save(system, settings, [step.name for step in steps()])

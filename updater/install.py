"""Install a bundle into the other slot: refuse what must not be installed, in one line, first.

Refused before anything is written: a bundle RAUC cannot verify against the image's keyring (bad
signature, another vendor's key, a damaged signature), one for another product, and a version that
is not newer than the running one unless the caller allows a downgrade (the plane marks a release
as one). A bundle whose payload is damaged passes these checks and fails inside RAUC, which reads
it through dm-verity: the other slot is then left marked bad and the running slot untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from updater import state
from updater.errors import UpdateError
from updater.rauc import Rauc
from updater.system import Appliance, other_slot
from updater.version import Version

log = logging.getLogger(__name__)

# Boot attempts a newly installed slot has used before its first boot: grub allows 3, so it gets one.
TRIAL_TRY = "2"


@dataclass(frozen=True)
class Installed:
    """What an install did."""

    version: str
    slot: str
    seconds: float


def check_version(current: str, offered: str, allow_downgrade: bool) -> None:
    """Refuse a bundle that is not newer than the running version unless downgrades are allowed."""
    new, cur = Version(offered), Version(current)
    if allow_downgrade or new > cur:
        return
    if new == cur:
        raise UpdateError(
            f"refused: version {offered} is already running (--allow-downgrade installs it again)"
        )
    raise UpdateError(
        f"refused: {offered} is older than the running {current} (a downgrade needs --allow-downgrade)"
    )


def install(app: Appliance, rauc: Rauc, bundle: Path, *, allow_downgrade: bool = False) -> Installed:
    """Check the bundle, install it into the other slot, and make the next boot its one trial."""
    if not bundle.is_file():
        raise UpdateError(f"{bundle}: no such bundle file")
    booted = app.booted_slot()
    if booted is None:
        raise UpdateError("no rauc.slot= on the kernel command line: not booted by the slot chooser")
    target = other_slot(booted)
    conf = app.rauc()
    info = rauc.info(bundle)
    if info.compatible != conf.compatible:
        raise UpdateError(
            f"{bundle}: refused: the bundle is for {info.compatible!r}, this appliance is {conf.compatible!r}"
        )
    current = app.version()
    try:
        check_version(current, info.version, allow_downgrade)
    except UpdateError as exc:
        raise UpdateError(f"{bundle}: {exc.message}") from None

    record = state.load(app.state_file)
    record.pop("pending", None)
    record.pop("trial_failure", None)
    step = {"version": info.version, "slot": target, "from_version": current, "from_slot": booted}
    record["installing"] = {**step, "started": state.now()}
    state.save(app.state_file, record)
    log.info("installing %s into slot %s (running %s in slot %s)", info.version, target, current, booted)
    started = time.monotonic()
    try:
        rauc.install(bundle)
        # RAUC made the new slot primary with no attempts used; leave it one.
        rauc.grubenv_set(conf.grubenv, **{f"{target}_TRY": TRIAL_TRY})
    except UpdateError as exc:
        record.pop("installing", None)
        record["last"] = {**step, "result": "failed", "reason": exc.message, "at": state.now()}
        state.save(app.state_file, record)
        raise UpdateError(
            f"{bundle}: install of {info.version} into slot {target} failed: {exc.message}"
        ) from None
    seconds = time.monotonic() - started
    record.pop("installing", None)
    record["pending"] = {**step, "installed": state.now(), "install_seconds": round(seconds, 1)}
    state.save(app.state_file, record)
    return Installed(version=info.version, slot=target, seconds=seconds)

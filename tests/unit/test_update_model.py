"""The update agent's pure parts: the updater's record as an update-status, version and slot, ranges."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.update.model import (
    Outcome,
    booted_slot,
    bundle_name,
    content_range_start,
    gave_up_on,
    image_version,
    outcome,
    progress_due,
)
from gwcore.update import UpdateOffer, UpdateState

pytestmark = pytest.mark.unit

S = UpdateState


def _status(**state: Any) -> dict[str, Any]:
    return {"booted": "B", "version": "0.1.1", "state": state}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, Outcome(S.IDLE, None)),
        (_status(), Outcome(S.IDLE, None)),
        ({"state": "torn"}, Outcome(S.IDLE, None)),
        (_status(installing={"version": "0.1.2", "slot": "A"}), Outcome(S.INSTALLING, "0.1.2")),
        (_status(pending={"version": "0.1.2", "slot": "A"}), Outcome(S.INSTALLED, "0.1.2")),
        (
            _status(pending={"version": "0.1.1", "slot": "B"}),
            Outcome(S.INSTALLED, "0.1.1", "on trial: marked good once healthy", settled=False),
        ),
        (
            _status(last={"version": "0.1.1", "result": "installed", "reason": "ok"}),
            Outcome(S.HEALTHY, "0.1.1"),
        ),
        # Installed once, then switched back by hand: nothing to report about the running version.
        (_status(last={"version": "0.1.2", "result": "installed"}), Outcome(S.IDLE, None)),
        (
            _status(last={"version": "0.1.2", "result": "rolled-back", "reason": "gateway failed\nto start"}),
            Outcome(S.ROLLED_BACK, "0.1.2", "gateway failed to start"),
        ),
        (
            _status(last={"version": "0.1.2", "result": "interrupted", "reason": "cut off"}),
            Outcome(S.FAILED, "0.1.2", "interrupted: cut off"),
        ),
        (
            _status(last={"version": "0.1.2", "result": "failed", "reason": "install failed: x"}),
            Outcome(S.FAILED, "0.1.2", "install failed: x"),
        ),
        (
            _status(last={"version": "../../x", "result": "failed"}),
            Outcome(S.FAILED, None, "the install failed"),
        ),
        (_status(last={"version": "0.1.2", "result": "exploded"}), Outcome(S.IDLE, None)),
    ],
)
def test_the_updaters_record_as_a_status(status: dict[str, Any], expected: Outcome) -> None:
    assert outcome(status, "0.1.1", "B") == expected


def test_version_and_slot_of_the_running_appliance() -> None:
    assert image_version('NAME="Debian"\nIMAGE_VERSION="0.1.1"\n') == "0.1.1"
    assert image_version("IMAGE_VERSION=0.2.0~rc1") == "0.2.0~rc1"
    assert image_version("NAME=x") == "unknown"
    assert image_version("IMAGE_VERSION=../etc") == "unknown"
    assert booted_slot("ro rauc.slot=B quiet") == "B"
    assert booted_slot("rauc.slot=C") == booted_slot("") == booted_slot("rauc.slot") == "unknown"
    assert bundle_name("0.1.1") == "0.1.1.raucb"


def test_content_range_and_progress() -> None:
    assert content_range_start("bytes 1048583-3145850/3145851") == 1048583
    for bad in (None, "", "bytes */100", "items 1-2/3", "bytes -5/10", "bytes x-1/2"):
        assert content_range_start(bad) is None
    assert progress_due(11, 100, 0) and not progress_due(19, 100, 11) and progress_due(20, 100, 19)
    assert not progress_due(5, 0, 0)


def test_a_release_that_rolled_back_is_not_retried_in_the_same_rollout() -> None:
    offer = UpdateOffer("0.1.2", "a" * 64, 10, "https://p/b", True, True, False, False, "r-1")
    rolled = Outcome(S.ROLLED_BACK, "0.1.2", "why")
    assert gave_up_on(offer, rolled, "r-1")
    assert not gave_up_on(offer, rolled, "r-0")  # a new rollout of it is the operator's decision
    assert not gave_up_on(offer, Outcome(S.ROLLED_BACK, "0.1.3"), "r-1")
    assert not gave_up_on(offer, Outcome(S.FAILED, "0.1.2"), "r-1")

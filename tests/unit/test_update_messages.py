"""The update control messages (gwcore.update, protocol §13.5): built by one end, checked by the other."""

from __future__ import annotations

import pytest

from gwcore import update as um

SHA = "ab" * 32
OFFER = um.UpdateOffer(
    version="0.2.0",
    sha256=SHA,
    size=1234,
    url="https://plane.example:8443/v1/releases/0.2.0/bundle",
    install=True,
    reboot=False,
    downgrade=False,
    urgent=True,
    rollout="r-20261206-ab12",
)
STATUS = um.UpdateStatus(
    running="0.1.0",
    slot="A",
    target="0.2.0",
    rollout="r-20261206-ab12",
    state=um.UpdateState.DOWNLOADING,
    progress=0.5,
    reason=None,
    at=1.7e9,
)


def test_round_trips_and_unknown_fields_are_ignored() -> None:
    assert um.parse_update_offer(OFFER.message()) == OFFER
    assert um.parse_update_status(STATUS.message()) == STATUS
    assert um.parse_update_offer({**OFFER.message(), "later": [1]}) == OFFER
    status = {**STATUS.message(), "target": None, "rollout": None, "progress": None, "state": "idle"}
    del status["v"]  # a missing v reads as 1
    assert um.parse_update_status(status).target is None
    assert um.update_status_ack() == {"type": "update-status-ack", "v": 1}
    assert STATUS.record()["state"] == "downloading" and "type" not in STATUS.record()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sha256": "AB" * 32}, "sha256"),
        ({"sha256": "ab" * 31}, "sha256"),
        ({"size": 0}, "size"),
        ({"size": True}, "size"),
        ({"size": "12"}, "size"),
        ({"url": "http://plane/v1/releases/0.2.0/bundle"}, "url"),
        ({"url": "https://plane/\n"}, "url"),
        ({"version": "../etc/passwd"}, "version"),
        ({"version": "0..1"}, "version"),
        ({"version": ""}, "version"),
        ({"version": 2}, "version"),
        ({"install": "yes"}, "install"),
        ({"reboot": 1}, "reboot"),
        ({"rollout": None}, "rollout"),
        ({"rollout": "a/b"}, "rollout"),
        ({"v": "1"}, "v"),
    ],
)
def test_a_bad_offer_field_is_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(um.MessageError) as info:
        um.parse_update_offer({**OFFER.message(), **change})
    assert info.value.code == "bad-request"
    assert f"update-offer: {field} " in str(info.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"running": None}, "running"),
        ({"slot": "C"}, "slot"),
        ({"state": "done"}, "state"),
        ({"state": None}, "state"),
        ({"progress": 1.5}, "progress"),
        ({"progress": float("nan")}, "progress"),
        ({"at": None}, "at"),
        ({"at": "now"}, "at"),
        ({"reason": 5}, "reason"),
        ({"target": "x y"}, "target"),
        ({"rollout": 7}, "rollout"),
    ],
)
def test_a_bad_status_field_is_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(um.MessageError) as info:
        um.parse_update_status({**STATUS.message(), **change})
    assert info.value.code == "bad-request"
    assert f"update-status: {field} " in str(info.value)


def test_another_version_is_refused_with_its_own_code() -> None:
    with pytest.raises(um.MessageError) as info:
        um.parse_update_status({**STATUS.message(), "v": 2})
    assert info.value.code == "unsupported-version"


def test_a_reason_is_kept_to_one_printable_line() -> None:
    reason = "bad\nsig\x1b[31m " + "x" * 5000
    status = um.parse_update_status({**STATUS.message(), "state": "failed", "reason": reason})
    assert status.reason is not None
    assert status.reason.startswith("bad sig [31m") and len(status.reason) == um.MAX_REASON

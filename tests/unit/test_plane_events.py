"""The plane's event rules: each one raises and resolves once, with hysteresis, and never flaps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mgmtplane import events
from mgmtplane.errors import PlaneError
from mgmtplane.webhook import WebhookConfig, WebhookSender, load_webhook_config, signature, verify

NOW = 1_700_000_000.0
GW = "gw-1"


def rec(at: float, targets: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"v": 1, "at": at, "interval": 30.0}
    out["targets"] = [{"name": n, "state": s} for n, s in (targets or {}).items()]
    out.update(extra)
    return out


def feed(state: events.GatewayState, readings: list[dict[str, Any]], start: float = NOW) -> list[list[str]]:
    """The events each record raises, as 'type state' strings (records 30 s apart)."""
    out = []
    for i, record in enumerate(readings):
        now = start + 30 * i
        record = {**record, "at": record["at"] + now}
        out.append([f"{e.type} {e.state}" for e in events.on_record(GW, state, record, now)])
    return out


def test_a_target_goes_down_after_two_records_and_comes_back_after_two() -> None:
    state = events.GatewayState()
    seen = feed(
        state, [rec(0, {"nova": s}) for s in ("up", "down", "up", "down", "down", "down", "up", "up")]
    )
    assert seen == [[], [], [], [], ["target-down raised"], [], [], ["target-down resolved"]]
    assert [h["state"] for h in state.history] == ["raised", "resolved"]


def test_a_flapping_target_never_raises() -> None:
    state = events.GatewayState()
    seen = feed(state, [rec(0, {"nova": "down" if i % 2 else "up"}) for i in range(20)])
    assert seen == [[]] * 20


def test_clock_skew_has_a_band_between_raise_and_clear() -> None:
    state = events.GatewayState()
    offsets = [40, 40, 20, 35, 20, 5, 5]  # raise at the 2nd; 20 s is between the thresholds: no change
    seen = feed(state, [rec(o) for o in offsets])
    assert seen == [[], ["clock-skew raised"], [], [], [], [], ["clock-skew resolved"]]
    assert state.history[0]["detail"]["offset_s"] == pytest.approx(40)


def test_certificate_expiry_and_disk_full_with_margins() -> None:
    state = events.GatewayState()
    day = 86400.0
    cert = [20, 13, 16, 13, 30]  # days left; 16 is inside the margin
    disk = [80.0, 91.0, 88.0, 92.0, 84.0]
    readings = [
        rec(0, certificate={"not_after": NOW + 30 * i + d * day}, system={"var_percent": v})
        for i, (d, v) in enumerate(zip(cert, disk, strict=True))
    ]
    seen = feed(state, readings)
    assert seen == [
        [],
        ["certificate-expiry raised", "disk-full raised"],
        [],
        [],
        ["certificate-expiry resolved", "disk-full resolved"],
    ]


def test_a_changed_target_certificate_is_a_notice_and_untrusted_says_so() -> None:
    state = events.GatewayState()

    def tls(fp: str, trusted: bool) -> dict[str, Any]:
        return rec(0, targets=None) | {
            "targets": [{"name": "bmc", "state": "up", "tls": {"fingerprint": fp, "trusted": trusted}}]
        }

    found = [events.on_record(GW, state, {**r, "at": NOW}, NOW) for r in (tls("a", True), tls("a", True))]
    assert found == [[], []]
    (changed,) = events.on_record(GW, state, {**tls("b", False), "at": NOW}, NOW)
    assert changed.type == "target-certificate-changed" and changed.state == "notice"
    assert changed.detail == {"target": "bmc", "previous": "a", "fingerprint": "b", "trusted": False}
    assert "refuses" in changed.summary


def test_appliance_down_after_its_grace_and_up_with_the_next_record() -> None:
    state = events.GatewayState()
    events.on_record(GW, state, rec(NOW), NOW)
    assert events.on_silence(GW, state, NOW + 89, NOW) == []  # grace: max(3 x 30 s, 90 s)
    (down,) = events.on_silence(GW, state, NOW + 91, NOW)
    assert down.type == "appliance-down" and down.state == "raised"
    assert events.on_silence(GW, state, NOW + 200, NOW) == []  # raised once
    (up,) = events.on_record(GW, state, rec(NOW + 300), NOW + 300)
    assert up.type == "appliance-down" and up.state == "resolved"


def test_a_target_that_leaves_the_inventory_is_no_longer_down() -> None:
    state = events.GatewayState()
    feed(state, [rec(0, {"nova": "down"}), rec(0, {"nova": "down"})])
    assert "target-down:nova" in state.conditions
    (gone,) = events.on_record(GW, state, rec(NOW + 90), NOW + 90)
    assert gone.state == "resolved" and state.conditions == {}


def test_state_survives_json_and_bad_stored_state_starts_afresh() -> None:
    state = events.GatewayState()
    feed(state, [rec(0, {"nova": "down"}), rec(0, {"nova": "down"})])
    again = events.GatewayState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
    assert events.GatewayState.from_json({"conditions": [1], "streaks": {"x": "y"}, "history": "no"}) == (
        events.GatewayState()
    )


def test_history_is_bounded() -> None:
    state = events.GatewayState()
    feed(state, [rec(0, {"t": "down" if (i // 2) % 2 else "up"}) for i in range(2000)])
    assert len(state.history) == events.HISTORY


def test_webhook_signatures_verify_and_expire() -> None:
    secret = b"0123456789abcdef-secret"
    body = b'{"id": "e1"}'
    header = signature(secret, int(NOW), body)
    assert verify(secret, header, body, NOW + 10)
    assert not verify(secret, header, body + b" ", NOW + 10)  # another body
    assert not verify(b"another-secret-0123", header, body, NOW + 10)
    assert not verify(secret, header, body, NOW + 3600)  # a replay an hour later
    assert not verify(secret, "t=abc,v1=00", body, NOW)


def test_the_outbox_is_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    config = WebhookConfig("http://127.0.0.1:9/hook", b"0123456789abcdef-secret")
    sender = WebhookSender(config, tmp_path, max_queue=10, clock=lambda: NOW)
    sender.enqueue([{"id": f"e{i}", "type": "target-down"} for i in range(13)])
    assert sender.dropped == 3 and [e["id"] for e in sender.queue] == [f"e{i}" for i in range(3, 13)]
    stored = json.loads((tmp_path / "events/outbox.json").read_text())
    assert [e["id"] for e in stored] == [f"e{i}" for i in range(3, 13)]
    assert (tmp_path / "events/outbox.json").stat().st_mode & 0o777 == 0o600
    again = WebhookSender(config, tmp_path, clock=lambda: NOW)  # a plane restart
    assert [e["id"] for e in again.queue] == [f"e{i}" for i in range(3, 13)]


@pytest.mark.parametrize(
    ("url", "secret", "problem"),
    [
        ("ftp://x/hook", "s" * 20, "must be an http:// or https:// URL"),
        ("https://x/hook", None, "needs --webhook-secret-file"),
        ("https://x/hook", "short", "at least 16 bytes"),
    ],
)
def test_webhook_options_are_checked(tmp_path: Path, url: str, secret: str | None, problem: str) -> None:
    secret_file = None
    if secret is not None:
        secret_file = tmp_path / "secret"
        secret_file.write_text(secret + "\n")
    with pytest.raises(PlaneError, match=problem):
        load_webhook_config(url, secret_file, None)

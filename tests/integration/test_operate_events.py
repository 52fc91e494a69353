"""Events from the real plane to a real webhook receiver on loopback: a target that goes down (the
receiver failing at first), a target whose certificate changes, an appliance that goes silent,
and a clock skew explained on the appliance (libfaketime) before TLS fails over it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trustme

from tests.integration.operate_support import (
    LIBFAKETIME,
    REDFISH_ROOT,
    JsonServer,
    TargetSpec,
    WebhookReceiver,
    operate,
    tls_context,
    wait_until,
)
from tests.integration.test_operate_health import console_once, fingerprint

pytestmark = pytest.mark.timeout(180)


def test_a_target_that_goes_down_is_delivered_signed_with_retries(tmp_path: Path) -> None:
    receiver = WebhookReceiver(fail_first=2)
    bmc = JsonServer({"/redfish/v1": REDFISH_ROOT})
    try:
        with operate(tmp_path / "op", [TargetSpec("bmc", f"http://127.0.0.1:{bmc.port}", "redfish")],
                     webhook=receiver) as op:  # fmt: skip
            wait_until(lambda: op.record_after(0)["targets"][0]["state"] == "up", 20, "the target up")
            bmc.stop()
            stopped = time.monotonic()
            down = wait_until(
                lambda: receiver.events("target-down", accepted_only=True), 60, "target-down delivered"
            )
            took = time.monotonic() - stopped
            (event,) = down
            assert event["state"] == "raised" and event["gateway_id"] == op.gateway_id
            assert event["detail"]["target"] == "bmc" and event["detail"]["state"] == "down"
            tries = [d for d in receiver.deliveries if d["body"]["id"] == event["id"]]
            assert len(tries) == 3 and all(d["signed"] for d in tries)  # 500, 500, then 200: the same event
            assert tries[0]["headers"]["X-Mgmtplane-Event"] == "target-down"
            assert tries[0]["headers"]["X-Mgmtplane-Delivery"] == event["id"]
            print(f"\ntarget stopped -> target-down accepted by the webhook after {took:.1f} s (3 attempts)")

            bmc.start()
            up = wait_until(
                lambda: [e for e in receiver.events("target-down", True) if e["state"] == "resolved"],
                60,
                "resolved",
            )
            assert up[0]["detail"]["target"] == "bmc"
            history = [(h["type"], h["state"]) for h in op.history()]
            assert history == [("target-down", "raised"), ("target-down", "resolved")]
            assert (op.plane.state_dir / "health" / f"{op.gateway_id}.json").is_file()  # kept across restarts
    finally:
        bmc.stop()
        receiver.stop()


def test_a_changed_target_certificate_is_reported_not_silently_refused(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    ca = trustme.CA()
    first, first_der = tls_context(ca)
    bmc = JsonServer({"/redfish/v1": REDFISH_ROOT}, tls=first)
    pin = fingerprint(first_der)
    target = TargetSpec("bmc", f"https://127.0.0.1:{bmc.port}", "redfish", {"fingerprint": pin})
    try:
        with operate(tmp_path / "op", [target], webhook=receiver) as op:
            wait_until(lambda: op.record_after(0)["targets"][0]["state"] == "up", 20, "the pinned target up")
            # The BMC gets a new certificate (same CA, same name): the pin no longer matches.
            bmc.stop()
            second, second_der = tls_context(ca)
            bmc.start(tls=second)
            notice = wait_until(
                lambda: receiver.events("target-certificate-changed"), 30, "the change reported"
            )
            assert notice[0]["detail"] == {
                "target": "bmc",
                "previous": pin,
                "fingerprint": fingerprint(second_der),
                "trusted": False,
            }
            record = op.health()["record"]["targets"][0]
            assert record["state"] == "tls-error" and "fingerprint does not match the pin" in record["error"]
            wait_until(lambda: receiver.events("target-down"), 30, "target-down for the refused certificate")
            # The appliance's own console says so too.
            wait_until(lambda: op.status()["target_states"][0]["state"] == "tls-error", 10, "status file")
            assert "bmc: tls-error (tls-verify-failed)" in console_once(tmp_path, op.status_file)
    finally:
        bmc.stop()
        receiver.stop()


def test_an_appliance_that_goes_silent_is_down_then_up(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    with operate(tmp_path / "op", [], webhook=receiver, health_interval=1.5) as op:
        # The plane's shortest grace is an option (90 s by default); the rule is 3 intervals or it.
        secret = str(op.root / "webhook-secret")
        op.restart_plane(
            "--webhook-url", receiver.url, "--webhook-secret-file", secret, "--appliance-down-after", "5"
        )
        op.wait_connected()
        op.record_after(0)
        op.stop_gateway()
        silent = time.monotonic()
        down = wait_until(lambda: receiver.events("appliance-down"), 40, "appliance-down")
        assert down[0]["state"] == "raised" and 4.5 <= time.monotonic() - silent < 30
        assert op.health()["stale"] is True and op.health()["summary"]["status"] == "down"
        op.start_gateway()
        up = wait_until(
            lambda: [e for e in receiver.events("appliance-down") if e["state"] == "resolved"], 40, "up"
        )
        assert up[0]["summary"] == "the appliance reports again"
    receiver.stop()


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is missing: run 'make setup'")
def test_a_clock_five_minutes_behind_is_explained_while_tls_still_works(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    skewed = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "-5m", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with operate(tmp_path / "op", [], webhook=receiver, gateway_env=skewed) as op:
        # The certificates' 10-minute margin keeps TLS working; the skew is said before it is not.
        status = wait_until(
            lambda: op.status().get("clock_problem") and op.status(), 30, "the skew explained"
        )
        assert status["state"] == "connected"
        assert -310 < status["clock_offset"] < -290
        assert status["clock_problem"].startswith("the clock is 5 min behind the plane's")
        assert "network.ntp" in status["clock_problem"]
        skew = wait_until(lambda: receiver.events("clock-skew"), 30, "clock-skew delivered")
        assert skew[0]["state"] == "raised" and -310 < skew[0]["detail"]["offset_s"] < -290
        # The console runs on the same appliance, with the same clock.
        console = console_once(tmp_path, op.status_file, env=skewed)
        assert "Clock:        PROBLEM: the clock is 5 min behind the plane's" in console
    receiver.stop()

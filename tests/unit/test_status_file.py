"""The status file's schema: what the daemon writes is what the console reads, whatever it finds."""

from __future__ import annotations

import json

import pytest

from gwcore.status_file import (
    SCHEMA,
    TunnelReport,
    decode,
    encode,
    format_age,
    staleness,
)

NOW = 1_700_000_000.0


def full_report(**changes: object) -> TunnelReport:
    values: dict[str, object] = {
        "state": "backoff",
        "since": NOW - 300,
        "plane_url": "https://plane.example.com:8443",
        "connects": 3,
        "attempts": 17,
        "next_attempt_at": NOW + 12,
        "last_error": "the plane closed the connection without answering (17 in a row)",
        "streams_open": 0,
        "relayed": 1234,
        "targets": 5,
        "version": "0.1.0",
        "pid": 4242,
        "updated_at": NOW - 1,
        "interval": 15.0,
    }
    values.update(changes)
    return TunnelReport(**values)  # type: ignore[arg-type]


def test_round_trip_and_the_bytes_on_disk() -> None:
    identity = {"stop_code": "revoked", "identity": "revoked", "cert_not_after": NOW + 86400,
                "renew_at": NOW + 3600, "renewals": 3, "renew_error": "busy"}  # fmt: skip
    report = full_report(stop_reason="why", action="what to do", **identity)
    data = encode(report)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    parsed = json.loads(data)
    assert parsed["schema"] == SCHEMA and parsed["state"] == "backoff" and parsed["pid"] == 4242
    assert decode(parsed) == report


def test_an_older_or_partial_file_reads_with_defaults() -> None:
    old = decode({"state": "connected", "last_error": None, "targets": 2})
    assert old == TunnelReport(state="connected", targets=2)
    assert old is not None and staleness(old, NOW) is None  # no time in it: cannot judge its age


def test_a_newer_file_keeps_what_this_reader_knows() -> None:
    newer = json.loads(encode(full_report()))
    newer.update(schema=SCHEMA + 1, state="quarantined", hot_new_field={"x": 1})
    report = decode(newer)
    assert report is not None and report.state == "quarantined" and report.schema == SCHEMA + 1
    assert report.relayed == 1234


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("connects", -1),
        ("connects", "3"),
        ("connects", True),
        ("attempts", 1.5),
        ("since", "yesterday"),
        ("since", float("nan")),
        ("updated_at", [1]),
        ("interval", 0),
        ("interval", -5),
        ("pid", "4242"),
        ("last_error", 7),
        ("plane_url", None),
        ("targets", {"n": 1}),
        ("stop_code", 3),
        ("identity", ["revoked"]),
        ("cert_not_after", "2026-12-01"),
        ("renew_at", float("inf")),
        ("renewals", -2),
        ("renew_error", {"why": 1}),
    ],
)
def test_a_mistyped_field_takes_its_default_and_hides_nothing_else(field: str, bad: object) -> None:
    data = json.loads(encode(full_report()))
    data[field] = bad
    report = decode(data)
    assert report is not None
    assert getattr(report, field) == getattr(TunnelReport(), field)
    assert report.state == "backoff" and report.relayed == 1234


@pytest.mark.parametrize("data", [None, [], "connected", 3, {}, {"state": 5}, {"last_error": "x"}])
def test_not_a_report(data: object) -> None:
    assert decode(data) is None


def test_staleness() -> None:
    fresh = full_report(updated_at=NOW - 40)  # under 3 intervals of 15 s
    assert staleness(fresh, NOW) is None
    assert staleness(fresh, NOW, pid_alive=True) is None
    assert staleness(fresh, NOW, pid_alive=False) == "the gateway process 4242 is gone"
    old = full_report(updated_at=NOW - 600)
    assert staleness(old, NOW) == "last report 10 min ago"
    # A daemon that stopped on purpose said its last word: not stale, however old.
    for final in ("stopped", "rejected"):
        assert staleness(full_report(state=final, updated_at=NOW - 86400), NOW, pid_alive=False) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0 s"), (0, "0 s"), (89, "89 s"), (90, "1 min"), (3599, "59 min"), (5400, "1 h 30 min"),
     (7200, "2 h"), (86400 * 2, "2 d"), (86400 * 3 + 3600 * 5, "3 d 5 h")],
)  # fmt: skip
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text

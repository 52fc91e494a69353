"""The health record's contract (gwcore.health) and the gateway's pure parts: certificate dates,
facts parsers, the clock's explanation, the record's size bound."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from gateway.health import clock, facts, record
from gwcore import health
from gwcore.certs import cert_info, pem_to_der
from gwcore.status_file import TunnelReport, decode, encode

NOW = 1_700_000_000.0


def a_record(targets: int = 3, **changes: object) -> dict[str, object]:
    entries = [
        {
            "name": f"t{i}",
            "kind": "redfish",
            "state": "up" if i else "down",
            "error": None if i else "refused: Connection refused",
            "checked_at": NOW,
            "latency_ms": {"tcp": 0.4, "tls": 3.1, "http": 6.2, "total": 10.0},
            "http_status": 200,
            "tls": {"not_before": NOW - 86400, "not_after": NOW + 86400 * 300,
                    "fingerprint": "sha256:" + "ab" * 32, "trusted": True},
            "version": {"RedfishVersion": "1.6.0"},
        }
        for i in range(targets)
    ]  # fmt: skip
    built = record.build(
        at=NOW,
        seq=7,
        interval=30.0,
        appliance={"image_version": "0.1.0", "slot": "A", "package_version": "0.1.0", "uptime_s": 50.0,
                   "daemon_uptime_s": 40.0},
        certificate={"not_before": NOW - 3600, "not_after": NOW + 86400 * 89},
        clock={"ntp_synced": True, "ntp_offset_s": 0.001, "plane_offset_s": -0.02, "problem": None},
        system={"load1": 0.1, "cpu_percent": 2.5, "mem_total": 2 * 2**30, "mem_available": 2**30,
                "var_total": 10, "var_used": 1, "var_percent": 10.0, "gateway_rss": 40 * 2**20,
                "gateway_cpu_s": 1.5},
        failed_units=[],
        tunnel={"connects": 1, "connected_since": NOW - 60, "failures": 0, "streams_open": 0, "relayed": 5,
                "last_error": None, "rtt_ms": 1.2},
        filter_counts=record.filter_section({"redfish": (5, 1, 12)}, "sha256:" + "cd" * 32),
        targets=entries,
    )  # fmt: skip
    built.update(changes)
    return built


def test_a_gateway_record_passes_the_plane_check_whole() -> None:
    rec = a_record()
    parsed = health.parse_record(json.loads(json.dumps(rec)))
    assert parsed == {k: v for k, v in rec.items() if k != "type"}
    assert parsed["filter"] == {
        "policy_hash": "sha256:" + "cd" * 32,
        "allowed": 5,
        "denied": 1,
        "removed": 12,
        "audit_dropped": None,
        "policies": {"redfish": {"allowed": 5, "denied": 1, "removed": 12}},
    }


def test_unknown_fields_are_dropped_and_nulls_allowed() -> None:
    rec = a_record(hot_new_field={"x": 1}, system=None)
    rec["appliance"]["extra"] = "from a newer gateway"  # type: ignore[index]
    parsed = health.parse_record(rec)
    assert "hot_new_field" not in parsed and "extra" not in parsed["appliance"] and parsed["system"] is None


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("at",), None, "at: missing"),
        (("at",), "yesterday", "at: expected a number"),
        (("at",), math.inf, "at: expected a finite number"),
        (("seq",), -1, "seq: expected a non-negative integer"),
        (("seq",), True, "seq: expected a integer"),
        (("appliance", "slot"), "A\nB", "appliance.slot: expected printable text"),
        (("appliance", "slot"), "x" * 300, "appliance.slot: expected printable text of at most 256"),
        (("targets",), [{"name": 7}], "targets[0].name: expected printable text"),
        (("targets",), [{}] * 1001, "targets: more than 1000 items"),
        (("filter", "policies"), {"k\x1b": {}}, "filter.policies: a key is not a short printable name"),
        (("clock", "ntp_synced"), "yes", "clock.ntp_synced: expected true or false"),
        (("failed_units",), "a.service", "failed_units: expected a list"),
    ],
)
def test_a_bad_field_is_refused_by_its_path(path: tuple[str, ...], value: object, problem: str) -> None:
    rec = a_record()
    where: dict[str, object] = rec
    for step in path[:-1]:
        where = where[step]  # type: ignore[assignment]
    where[path[-1]] = value
    with pytest.raises(health.RecordError, match="^" + problem.replace("[", r"\[").replace("]", r"\]")):
        health.parse_record(rec)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@given(JSON)
def test_the_check_raises_only_record_errors(junk: object) -> None:
    message = {"v": 1, "at": NOW, "targets": junk, "system": junk, "filter": {"policies": junk}}
    with contextlib.suppress(health.RecordError):
        health.parse_record(message)


def test_a_large_inventory_is_cut_to_fit_keeping_the_targets_that_are_down() -> None:
    rec = a_record(targets=600)
    assert record.encoded_size(rec) > 64 * 1024
    fitted = a_record(targets=0)
    fitted["targets"] = rec["targets"]
    record._fit(fitted, 60 * 1024)
    assert record.encoded_size(fitted) <= 60 * 1024
    assert fitted["targets_omitted"] == 600 - len(fitted["targets"])  # type: ignore[arg-type]
    assert fitted["targets"][0]["name"] == "t0"  # type: ignore[index]  # the one that is down stays


def test_the_record_and_the_status_file_tell_the_same_facts() -> None:
    rec = a_record()
    fields = record.status_fields(rec, acked_at=NOW + 0.05)
    report = decode(json.loads(encode(TunnelReport(state="connected", **fields))))
    assert report is not None
    assert report.slot == "A" and report.image_version == "0.1.0"
    assert (
        report.cert_not_after == NOW + 86400 * 89
        and report.clock_offset == -0.02
        and report.ntp_synced is True
    )
    assert [(t.name, t.state, t.error) for t in report.target_states] == [
        ("t0", "down", "refused: Connection refused"),
        ("t1", "up", None),
        ("t2", "up", None),
    ]
    assert (report.filter_allowed, report.filter_denied, report.filter_removed) == (5, 1, 12)
    assert report.health_acked_at == NOW + 0.05


# --- certificates ---------------------------------------------------------------------------------


def test_certificate_dates_match_cryptographys_reading() -> None:
    ca = trustme.CA()
    dates = (dt.datetime(2030, 6, 1, 12, 30, 5, tzinfo=dt.UTC), dt.datetime(2051, 1, 1, tzinfo=dt.UTC))
    for not_after in dates:
        pem = ca.issue_cert("host.example", not_after=not_after).cert_chain_pems[0].bytes()
        der = pem_to_der(pem)
        ours = cert_info(der)
        theirs = x509.load_der_x509_certificate(der)
        assert ours.not_before == theirs.not_valid_before_utc.timestamp()
        assert ours.not_after == theirs.not_valid_after_utc.timestamp() == not_after.timestamp()
        assert ours.fingerprint.startswith("sha256:") and len(ours.fingerprint) == 71


@given(st.binary(max_size=400))
def test_certificate_parsing_raises_only_value_errors(junk: bytes) -> None:
    with contextlib.suppress(ValueError):
        cert_info(junk)


def test_truncated_certificates_are_refused() -> None:
    der = pem_to_der(trustme.CA().cert_pem.bytes())
    for cut in range(0, len(der), 7):
        with pytest.raises(ValueError):
            cert_info(der[:cut])


# --- facts ----------------------------------------------------------------------------------------


def test_fact_parsers() -> None:
    assert facts.image_version('NAME="Debian"\nIMAGE_VERSION="0.2.1"\n') == "0.2.1"
    assert facts.image_version("VERSION_ID=13\n") == "13"
    assert facts.booted_slot("BOOT_IMAGE=/vmlinuz root=/dev/sda2 rauc.slot=B quiet") == "B"
    assert facts.booted_slot("root=LABEL=root-a ro quiet") == "unknown"
    assert facts.booted_slot("rauc.slot=$(reboot)") == "unknown"
    meminfo = "MemTotal: 2000 kB\nMemFree: 5 kB\nMemAvailable: 1000 kB\n"
    assert facts.parse_meminfo(meminfo) == (2048000, 1024000)
    assert facts.cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 ...") == (150, 1000)
    timesync = "       Server: 192.0.2.1\n       Offset: -1.234ms\n"
    assert facts.parse_ntp_offset(timesync) == pytest.approx(-0.001234)
    assert facts.parse_ntp_offset("  Offset: -2min 3.100s\n") == pytest.approx(-123.1)
    assert facts.parse_ntp_offset("  Offset: n/a\n") is None
    assert facts.parse_ntp_offset("  Offset: +12.5s\n") == 12.5
    assert facts.parse_failed_units("foo.service loaded failed failed Foo\nbar@x.timer loaded failed\n") == [
        "foo.service",
        "bar@x.timer",
    ]


# --- the clock ------------------------------------------------------------------------------------


def test_the_plane_offset_is_measured_at_the_round_trips_midpoint() -> None:
    assert clock.plane_offset(sent=100.0, received=100.2, plane_time=400.1) == pytest.approx(-300.0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"offset": 0.2, "ntp_synced": True}, None),
        ({"offset": -300.0, "ntp_synced": False},
         "the clock is 5 min behind the plane's (NTP not synchronised); TLS fails once the skew passes"),
        ({"offset": 7200.0, "ntp_synced": None}, "the clock is 2 h ahead of the plane's; TLS fails"),
        ({"offset": None, "ntp_synced": False, "cert_not_before": NOW + 3600},
         "the clock is at least 60 min behind: it is before the start of this gateway's certificate"),
        ({"offset": None, "ntp_synced": None, "cert_not_after": NOW - 86400 * 3},
         "this gateway's certificate expired 3 d ago by this clock"),
    ],
)  # fmt: skip
def test_the_clock_is_explained(kwargs: dict[str, object], expected: str | None) -> None:
    args: dict[str, object] = {"cert_not_before": None, "cert_not_after": None, **kwargs}
    said = clock.explain(NOW, **args)  # type: ignore[arg-type]
    if expected is None:
        assert said is None
    else:
        assert said is not None and said.startswith(expected) and "network.ntp" in said


def test_no_inventory_name_can_be_a_reserved_one() -> None:
    """'@support' and its kind are the gateway's own: targets.yaml can never name one."""
    from gateway.errors import GatewayError
    from gateway.relay.targets import parse_targets

    for name in (health.SUPPORT_TARGET, "@anything"):
        doc = {"targets": [{"name": name, "url": "http://192.0.2.1", "kind": "http"}]}
        with pytest.raises(GatewayError, match=r"^t: targets\[0\]\.name: expected a name"):
            parse_targets(doc, "t")


def test_filter_decisions_are_counted_per_kind_as_the_audit_log_sees_them(tmp_path: Path) -> None:
    from gateway.filter import audit
    from gateway.filter.metadata_filter import FilterRequest, FilterResponse, check_request, filter_response
    from gateway.filter.policy import load_policies

    (tmp_path / "p.yaml").write_text(
        "kind: http\nrules:\n  - name: things\n    path: /things\n    json: ['[].id']\n"
        "  - name: raw\n    path: /raw\n    passthrough: true\n"
    )
    policies = load_policies([tmp_path])
    counts = audit.DecisionCounts()
    req = FilterRequest("GET", "/things", {})
    counts.count("http", check_request(policies, "http", req))  # filtered: counted at its response
    body = b'[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]'
    counts.count("http", filter_response(policies, "http", req, FilterResponse(200, {"content-type":
                 "application/json"}, body)))  # fmt: skip
    counts.count("http", check_request(policies, "http", FilterRequest("GET", "/raw", {})))  # passthrough
    counts.count("http", check_request(policies, "http", FilterRequest("DELETE", "/things", {})))
    counts.count("redfish", check_request(policies, "redfish", req))  # no policy: denied
    assert counts.snapshot() == {"http": (2, 1, 2), "redfish": (0, 1, 0)}
    assert record.filter_section(counts.snapshot(), "sha256:x") == {
        "policy_hash": "sha256:x",
        "allowed": 2,
        "denied": 2,
        "removed": 2,
        "audit_dropped": None,
        "policies": {
            "http": {"allowed": 2, "denied": 1, "removed": 2},
            "redfish": {"allowed": 0, "denied": 1, "removed": 0},
        },
    }
    # The audit file's lost lines travel in the record and survive the plane's schema check.
    section = record.filter_section(counts.snapshot(), "sha256:x", audit_dropped=7)
    assert health.parse_record({"v": 1, "at": 1.0, "filter": section})["filter"]["audit_dropped"] == 7

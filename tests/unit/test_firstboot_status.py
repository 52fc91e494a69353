"""Status gathering and rendering, the support bundle's redaction, and the wizard's pure pieces."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import yaml

from firstboot import apply as applier
from firstboot.errors import FirstbootError, Reason
from firstboot.settings import build
from firstboot.status.model import gather, render
from firstboot.support import create_bundle
from firstboot.system import System
from firstboot.wizard.cli import want_line_mode
from firstboot.wizard.flow import explain, explain_error
from firstboot.wizard.model import BY_NAME, PASSWORD, PASSWORD2, WizardModel, load_answers
from gwcore.redact import redact, redact_text
from tests.unit.test_firstboot_apply import make_root
from tests.unit.test_firstboot_settings import SHA512, make_token


def configured(tmp_path: Path) -> System:
    system = make_root(tmp_path)
    (system.root / "etc/os-release").write_text('PRETTY_NAME="Debian"\nIMAGE_VERSION=1.4.2\n')
    settings = build(
        {
            "gateway.join_token": make_token("https://plane.example.com:8443"),
            "network.hostname": "gw-st",
            "proxy.url": "http://bob:hunter2@proxy.example.com:3128",
            "admin.password_hash": SHA512,
        }
    )
    applier.apply(system, settings, plan=applier.steps(simulate_register=True))
    return system


def test_status_without_gateway_report(tmp_path: Path) -> None:
    system = configured(tmp_path)
    info = gather(system)
    assert render(info) == [
        "Gateway appliance 1.4.2",
        "",
        "Host name:    gw-st",
        "Address:      (none)",
        "Plane:        https://plane.example.com:8443",
        "Gateway id:   (none)",
        "Service:      unknown",
        "Tunnel:       unknown (the gateway has not reported)",
        "Targets:      ?",
        "Last error:   none",
    ]
    assert info.configured


def test_status_with_gateway_report_and_torn_file(tmp_path: Path) -> None:
    system = configured(tmp_path)
    status = system.root / "run/gateway/status.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"state": "connected", "last_error": "proxy said 502", "targets": 4}))
    lines = render(gather(system))
    assert "Tunnel:       connected" in lines and "Targets:      4" in lines
    assert "Last error:   proxy said 502" in lines
    status.write_text('{"state": "conn')
    assert "Tunnel:       unknown (the gateway has not reported)" in render(gather(system))


def test_status_before_first_boot_finished_shows_its_error(tmp_path: Path) -> None:
    system = make_root(tmp_path)
    (system.root / "var/lib/firstboot").mkdir(parents=True)
    (system.root / "var/lib/firstboot/last-error").write_text("Registration: plane unreachable\n")
    lines = render(gather(system))
    assert "Last error:   Registration: plane unreachable" in lines
    assert lines[-1] == "First boot has not completed: use the wizard or re-register."


def test_support_bundle_is_private_and_redacted(tmp_path: Path) -> None:
    system = configured(tmp_path)
    (system.root / "var/lib/gateway").mkdir(parents=True)
    (system.root / "var/lib/gateway/key.pem").write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    (system.root / "var/lib/gateway/identity.json").write_text(
        '{"gateway_id": "g-1", "plane_url": "https://p"}'
    )
    path = create_bundle(system)
    assert path.parent == system.root / "var/lib/gateway-support"
    assert path.stat().st_mode & 0o777 == 0o600
    with tarfile.open(path) as tar:
        names = tar.getnames()
        blobs = {n: tar.extractfile(n).read().decode() for n in names}  # type: ignore[union-attr]
    assert "bundle/etc/gateway/gateway.yaml" in names and "bundle/journal.txt" in names
    assert not any("key.pem" in n for n in names)
    everything = "\n".join(blobs.values())
    for secret in ("hunter2", SHA512, make_token("https://plane.example.com:8443")[5:40]):
        assert secret not in everything
    conf = yaml.safe_load(blobs["bundle/etc/gateway/gateway.yaml"])
    assert conf["proxy_url"] == "http://bob:<redacted>@proxy.example.com:3128"
    state = json.loads(blobs["bundle/var/lib/firstboot/state.json"])
    assert state["settings"]["gateway.join_token"] == "<redacted>"
    assert state["settings"]["admin.password_hash"] == "<redacted>"
    assert json.loads(blobs["bundle/var/lib/gateway/identity.json"])["gateway_id"] == "g-1"
    assert ["journalctl", "-b", "--no-pager", "-o", "short-iso", "-n", "20000"] in system.recorded


def test_the_console_keeps_only_the_newest_bundles(tmp_path: Path) -> None:
    system = configured(tmp_path)
    out = system.root / "var/lib/gateway-support"
    out.mkdir(parents=True)
    for day in range(1, 9):  # eight older bundles, as years of pressing the menu item would leave
        (out / f"support-2024010{day}-120000.tar.gz").write_bytes(b"old")
    (out / "notes.txt").write_text("not a bundle: kept")
    newest = create_bundle(system)
    left = sorted(p.name for p in out.iterdir())
    assert left == [
        "notes.txt",
        "support-20240105-120000.tar.gz",
        "support-20240106-120000.tar.gz",
        "support-20240107-120000.tar.gz",
        "support-20240108-120000.tar.gz",
        newest.name,
    ]


def test_redaction_is_pure_and_recursive() -> None:
    data = {"a": [{"password": "x", "url": "https://u:p@h/"}], "token": "", "keep": 3}
    assert redact(data) == {
        "a": [{"password": "<redacted>", "url": "https://u:<redacted>@h/"}],
        "token": "",
        "keep": 3,
    }
    assert data["a"][0]["password"] == "x"
    assert redact_text("join GWJ1.abc-_9 now") == "join GWJ1.<redacted> now"


@pytest.mark.parametrize(
    ("message", "reason", "screen", "refuse"),
    [
        (
            "plane CA hash mismatch at https://p: possible interception, refusing to register",
            Reason.INTERCEPTED,
            "plane",
            True,
        ),
        ("join token has expired; create a new one", Reason.TOKEN, "plane", False),
        ("join token was already used; create a new one", Reason.TOKEN, "plane", False),
        ("proxy http://p:3128 requires authentication (HTTP 407)", Reason.PROXY_AUTH, "proxy", False),
        ("cannot reach proxy http://p:3128: Connection refused", Reason.PROXY, "proxy", False),
        ("cannot resolve the plane host in https://p/v1/ca (DNS failure)", Reason.DNS, "network", False),
        ("plane unreachable at https://p/v1/ca: Connection refused", Reason.UNREACHABLE, "network", False),
        ("Console password: /etc/shadow: no entry for user 'admin'", Reason.OTHER, "review", False),
    ],
)
def test_failures_in_words(message: str, reason: Reason, screen: str, refuse: bool) -> None:
    why = explain(message, reason)
    assert (why.screen, why.refuse) == (screen, refuse)
    assert why.what_next
    # The same by way of the error the step raises, whose reason code travels with it.
    assert explain_error(FirstbootError(message, reason=reason)) == why


def test_the_explanation_follows_the_code_not_the_words() -> None:
    """A message that happens to say proxy, DNS or 407 is not taken for one without its code."""
    why = explain("the plane's DNS-named proxy said 407 and unreachable", Reason.OTHER)
    assert (why.screen, why.refuse) == ("review", False)
    assert explain("anything", Reason.INTERCEPTED).refuse


@pytest.mark.parametrize(
    ("term", "console", "tty", "line"),
    [
        ("xterm-256color", "tty1", True, False),
        ("linux", "tty1", True, False),
        ("vt220", "ttyS0", True, True),
        ("xterm-256color", "ttyS0", True, False),
        ("dumb", None, True, True),
        ("", None, True, True),
        ("xterm", None, False, True),
    ],
)
def test_line_mode_selection(term: str, console: str | None, tty: bool, line: bool) -> None:
    assert want_line_mode(term, console, tty) is line


def test_wizard_model_validates_screens() -> None:
    model = WizardModel()
    network = BY_NAME["network"]
    # DHCP ignores leftover static fields instead of failing on them.
    assert model.validate(network, {"network.mode": "dhcp", "network.address": "junk"}) == {
        "network.address": "network.address: expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, "
        "got 'junk'"
    }
    model.store(network, {"network.mode": "dhcp", "network.address": "192.0.2.10/24"})
    assert model.values == {"network.mode": "dhcp"} and model.sources == {"network.mode": "wizard"}
    admin = BY_NAME["admin"]
    assert model.validate(admin, {PASSWORD: "longenough", PASSWORD2: "different"}) == {
        PASSWORD2: "admin.password: the two passwords differ"
    }
    plane = BY_NAME["plane"]
    errors = model.validate(
        plane, {"gateway.join_token": make_token(), "gateway.plane_url": "https://elsewhere.example.com"}
    )
    assert errors["gateway.plane_url"].startswith(
        "gateway.plane_url: https://elsewhere.example.com does not match"
    )


def test_answers_file(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("network.mode: static\nconfirm_network: false\nadmin.password: pw123456\n")
    answers = load_answers(path)
    assert dict(answers.values) == {"network.mode": "static", "admin.password": "pw123456"}
    assert answers.confirm_network is False
    path.write_text("network.bogus: 1\n")
    with pytest.raises(
        FirstbootError, match=r"a.yaml: network.bogus: unknown key \(known: gateway.plane_url, "
    ):
        load_answers(path)
    path.write_text("confirm_network: maybe\n")
    with pytest.raises(FirstbootError, match=r"confirm_network: expected true or false, got 'maybe'$"):
        load_answers(path)
    path.write_text("- a\n")
    with pytest.raises(FirstbootError, match=r"expected a mapping of setting keys to values$"):
        load_answers(path)


def test_plane_summary_warns_about_expired_tokens() -> None:
    from firstboot.wizard.model import plane_summary

    token = make_token("https://plane.example.com:8443", expires=2_000_000_000)
    assert plane_summary(token, now=1_900_000_000) == (
        True,
        "Plane: https://plane.example.com:8443   CA sha256:abababababababab...   "
        "valid until 2033-05-18 03:33 UTC",
    )
    ok, line = plane_summary(token, now=2_100_000_000)
    assert not ok and line.endswith("EXPIRED by this appliance's clock (check the time)")
    assert plane_summary("GWJ1.nope") == (False, "Plane: (paste the join token from the management plane)")


def write_report(system: System, **fields: object) -> None:
    from gwcore.status_file import TunnelReport, encode

    path = system.root / "run/gateway/status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(TunnelReport(**fields)))  # type: ignore[arg-type]


NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def tunnel_lines(system: System, now: float = NOW) -> list[str]:
    lines = render(gather(system, now=now))
    start = next(i for i, line in enumerate(lines) if line.startswith("Tunnel:"))
    return lines[start:]


def test_status_shows_a_connected_tunnel_from_the_daemons_report(tmp_path: Path) -> None:
    system = configured(tmp_path)
    write_report(system, state="connected", since=NOW - 3600, connects=2, relayed=57, streams_open=3,
                 targets=4, pid=99, updated_at=NOW - 2, interval=15)  # fmt: skip
    assert tunnel_lines(system) == [
        "Tunnel:       connected since 2023-11-14 21:13:20 UTC (connection 2)",
        "Targets:      4",
        "Relayed:      57 calls since the gateway started, 3 open",
        "Last error:   none",
    ]


def test_status_shows_an_outage_being_retried(tmp_path: Path) -> None:
    system = configured(tmp_path)
    write_report(system, state="backoff", since=NOW - 300, attempts=41, next_attempt_at=NOW + 12,
                 last_error="the plane closed the connection without answering (9 in a row)",
                 action="if the plane is up, check its log", targets=4, updated_at=NOW - 1)  # fmt: skip
    lines = tunnel_lines(system)
    assert (
        lines[0]
        == "Tunnel:       down since 2023-11-14 22:08:20 UTC: retrying (41 failed attempts, next in 12 s)"
    )
    assert "Last error:   the plane closed the connection without answering (9 in a row)" in lines
    assert lines[-1] == "What to do: if the plane is up, check its log"


def test_status_shows_why_the_gateway_stopped_and_what_to_do(tmp_path: Path) -> None:
    system = configured(tmp_path)
    reason = "the plane refused this gateway: HTTP 403 gateway-unknown: gateway g is not registered"
    write_report(system, state="rejected", since=NOW - 86400, stop_reason=reason, last_error=reason,
                 action="re-register the gateway with a new join token", updated_at=NOW - 86400)  # fmt: skip
    lines = tunnel_lines(system)
    # A day old, and still the truth: the daemon said it as it exited.
    assert lines[0] == f"Tunnel:       STOPPED: {reason}"
    assert "Last error:   the reason it stopped, above" in lines  # not the same long line twice
    assert lines[-1] == "What to do: re-register the gateway with a new join token"


def test_status_says_when_the_report_is_stale(tmp_path: Path) -> None:
    system = configured(tmp_path)
    write_report(system, state="connected", since=NOW - 7200, connects=1, updated_at=NOW - 900,
                 interval=15, action="stale advice is not shown")  # fmt: skip
    lines = tunnel_lines(system)
    assert lines[0] == "Tunnel:       unknown: last report 15 min ago (it said: connected)"
    assert not any(line.startswith("What to do:") for line in lines)


def identity_line(system: System) -> str | None:
    return next((line for line in render(gather(system, now=NOW)) if line.startswith("Identity:")), None)


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({}, None),  # a gateway from before renewal says nothing: no line
        (
            {"identity": "valid", "cert_not_after": NOW + 90 * 86400, "renew_at": NOW + 60 * 86400},
            "Identity:     certificate valid until 2024-02-12 22:13:20 UTC,"
            " renews from 2024-01-13 22:13:20 UTC",
        ),
        (
            {
                "identity": "renewal-failing",
                "cert_not_after": NOW + 86400,
                "renew_error": "the plane answered busy",
            },
            "Identity:     certificate valid until 2023-11-15 22:13:20 UTC; renewal failing, retrying:"
            " the plane answered busy",
        ),
        (
            {"identity": "renewal-unavailable", "cert_not_after": NOW + 86400, "renew_error": "no control.1"},
            "Identity:     certificate valid until 2023-11-15 22:13:20 UTC; NOT renewed (no control.1):"
            " re-register before then",
        ),
        (
            {"identity": "revoked", "state": "rejected", "cert_not_after": NOW + 86400},
            "Identity:     REVOKED by the plane: enrol again with a new join token (menu: Re-register)",
        ),
        (
            {"identity": "expired", "state": "rejected", "cert_not_after": NOW - 86400},
            "Identity:     EXPIRED: the certificate ran out on 2023-11-13 22:13:20 UTC (menu: Re-register)",
        ),
    ],
)
def test_status_shows_the_identity(tmp_path: Path, fields: dict[str, object], line: str | None) -> None:
    system = configured(tmp_path)
    write_report(system, **{"state": "connected", "updated_at": NOW - 1, **fields})
    assert identity_line(system) == line


def test_status_shows_the_health_records_facts_in_short_lines(tmp_path: Path) -> None:
    system = configured(tmp_path)
    write_report(system, state="connected", since=NOW - 60, connects=1, targets=2, updated_at=NOW - 1,
                 interval=15, health_at=NOW - 5, health_acked_at=NOW - 4, cert_not_after=NOW + 40 * 86400,
                 clock_offset=-301.0, ntp_synced=False, load1=0.5, mem_available=2**30, mem_total=2 * 2**30,
                 var_percent=91.4, failed_units=["a.service", "b.service", "c.service"], filter_allowed=7,
                 filter_denied=1, filter_removed=30,
                 clock_problem="the clock is 5 min behind the plane's (NTP not synchronised); check NTP",
                 target_states=[{"name": "bmc", "state": "tls-error", "error": "tls-verify-failed: x",
                                 "cert_changed": True}, {"name": "vc", "state": "up"}])  # fmt: skip
    lines = tunnel_lines(system)
    assert lines == [
        "Tunnel:       connected since 2023-11-14 22:12:20 UTC (connection 1)",
        "Targets:      2: 1 up; 1 not (bmc: tls-error (tls-verify-failed)); new TLS certificate: bmc",
        "Relayed:      0 calls since the gateway started, 0 open",
        "Clock:        PROBLEM: the clock is 5 min behind the plane's (NTP not synchronised); check NTP",
        "Certificate:  valid until 2023-12-24 (40 days)",
        "System:       load 0.50, 1.0/2.0 GiB free, /var 91%",
        "Failed units: a.service, b.service (and 1 more)",
        "Filter:       7 allowed, 1 denied, 30 fields removed",
        "Health:       last taken by the plane 4 s ago",
        "Last error:   none",
    ]


def test_support_bundle_carries_the_audit_logs_tail_from_a_whole_line(tmp_path: Path) -> None:
    system = configured(tmp_path)
    logs = system.root / "var/log/gateway"
    logs.mkdir(parents=True)
    # ~3.4 MiB of decisions: only the newest 2 MiB travel, starting at a line, never mid-line.
    lines = [
        f"2026-12-06T22:00:00.000Z filter allowed target=t{i:07d} rule=r status=200\n" for i in range(50_000)
    ]
    (logs / "audit.log").write_text("".join(lines))
    with tarfile.open(create_bundle(system)) as tar:
        shipped = tar.extractfile("bundle/var/log/gateway/audit.log").read().decode()  # type: ignore[union-attr]
    assert len(shipped.encode()) <= 2 * 1024 * 1024
    assert shipped.endswith(lines[-1]) and shipped.splitlines(keepends=True)[0] in lines
    assert len(shipped) > 2 * 1024 * 1024 - len(lines[0])

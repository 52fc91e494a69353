"""The rollout planner (mgmtplane.rollout_plan): windows, time zones, canaries, max-parallel, halt, urgent."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from gwcore.update import UpdateState as S
from mgmtplane.errors import PlaneError
from mgmtplane.rollout_plan import (
    Facts,
    Offer,
    Phase,
    Rollout,
    Step,
    Window,
    parse_window,
    plan,
    resume,
)

UTC = dt.UTC
V = "0.2.0"
OLD = "0.1.0"
INSTALL = Offer(install=True, reboot=True)
STAGE = Offer(install=False, reboot=False)


def at(text: str) -> dt.datetime:
    """A UTC instant from 'YYYY-MM-DD HH:MM'."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def win(text: str) -> Window:
    return parse_window(f"x={text}")[1]


# --- windows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        ("2026-12-07 21:59", False),  # Monday, before the window
        ("2026-12-07 22:00", True),  # Monday's window opens
        ("2026-12-08 03:59", True),  # ... and runs into Tuesday morning
        ("2026-12-08 04:00", False),
        ("2026-12-07 02:00", False),  # Monday morning belongs to Sunday's window: Sunday has none
        ("2026-12-11 23:30", True),  # Friday evening
        ("2026-12-12 03:00", True),  # Saturday morning: still Friday's window
        ("2026-12-12 23:00", False),  # Saturday evening: no window opens on Saturday
        ("2026-12-14 01:00", False),  # Monday 01:00: Sunday's (absent) window
    ],
)
def test_a_window_across_midnight_belongs_to_the_day_it_opens(when: str, inside: bool) -> None:
    assert win("UTC,Mon-Fri,22:00-04:00").contains(at(when)) is inside


def test_a_window_within_a_day_and_a_whole_day() -> None:
    w = win("UTC,Sat+Sun,09:00-17:00")
    assert w.contains(at("2026-12-12 09:00")) and not w.contains(at("2026-12-12 17:00"))
    assert not w.contains(at("2026-12-11 12:00"))  # Friday
    day = win("UTC,Wed,00:00-00:00")
    assert day.contains(at("2026-12-09 00:00")) and day.contains(at("2026-12-09 23:59"))
    assert not day.contains(at("2026-12-10 00:00")) and not day.contains(at("2026-12-08 23:59"))


@pytest.mark.parametrize(
    ("when", "auckland", "los_angeles"),
    [
        ("2026-12-08 06:00", False, True),  # Auckland Tue 19:00 (NZDT); Los Angeles Mon 22:00 (PST)
        ("2026-12-08 10:00", True, True),  # Tue 23:00; Tue 02:00
        ("2026-12-08 12:00", True, False),  # Wed 01:00; Tue 04:00
        ("2026-12-12 10:00", False, True),  # Auckland Sat 23:00 (no window); LA Sat 02:00, Friday's window
    ],
)
def test_the_same_instant_is_inside_one_sites_window_and_outside_anothers(
    when: str, auckland: bool, los_angeles: bool
) -> None:
    assert win("Pacific/Auckland,Mon-Fri,22:00-04:00").contains(at(when)) is auckland
    assert win("America/Los_Angeles,Mon-Fri,22:00-04:00").contains(at(when)) is los_angeles


def test_dst_days_follow_the_wall_clock() -> None:
    # Los Angeles, 2026-03-08: 02:00 PST jumps to 03:00 PDT. A 01:00-03:00 window lasts one hour.
    spring = win("America/Los_Angeles,Sun,01:00-03:00")
    assert not spring.contains(at("2026-03-08 08:59"))
    assert spring.contains(at("2026-03-08 09:00")) and spring.contains(at("2026-03-08 09:59"))
    assert not spring.contains(at("2026-03-08 10:00"))  # 03:00 PDT
    # A window inside the skipped hour does not open that day.
    skipped = win("America/Los_Angeles,Sun,02:00-02:30")
    assert not any(
        skipped.contains(at(f"2026-03-08 {h:02d}:{m:02d}")) for h in range(24) for m in (0, 15, 45)
    )
    # 2026-11-01: 02:00 PDT falls back to 01:00 PST. A 01:00-02:00 window lasts two hours.
    autumn = win("America/Los_Angeles,Sun,01:00-02:00")
    assert not autumn.contains(at("2026-11-01 07:59"))
    assert autumn.contains(at("2026-11-01 08:00")) and autumn.contains(at("2026-11-01 09:59"))
    assert not autumn.contains(at("2026-11-01 10:00"))
    # Auckland, 2026-04-05: 03:00 NZDT falls back to 02:00 NZST; 02:00-03:00 happens twice.
    nz = win("Pacific/Auckland,Sun,02:00-03:00")
    assert nz.contains(at("2026-04-04 13:00")) and nz.contains(at("2026-04-04 14:59"))
    assert not nz.contains(at("2026-04-04 15:00")) and not nz.contains(at("2026-04-04 12:59"))


def test_windows_parse_and_bad_ones_are_named() -> None:
    site, w = parse_window("lab-1=Europe/Berlin,Fri-Mon,22:00-04:00")
    assert site == "lab-1" and w.weekdays == frozenset({4, 5, 6, 0}) and w.tz == "Europe/Berlin"
    assert parse_window("*=UTC,*,00:00-00:00")[1].weekdays == frozenset(range(7))
    assert parse_window("a=UTC,Mon,Wed,1:00-2:00")[1].weekdays == frozenset({0, 2})
    assert w.text() == "Europe/Berlin,Mon,Fri,Sat,Sun,22:00-04:00"
    for bad, words in [
        ("Europe/Berlin,Mon,22:00-04:00", "expected SITE="),
        ("a=Mars/Base,Mon,22:00-04:00", "unknown time zone 'Mars/Base'"),
        ("a=UTC,Someday,22:00-04:00", "'Someday': weekdays are Mon..Sun"),
        ("a=UTC,Mon,25:00-04:00", "'25:00' is not a time of day"),
        ("a=UTC,Mon,22:00", "expected HH:MM-HH:MM"),
        ("a=UTC,22:00-23:00", "expected SITE=TZ,DAYS"),
        ("a/b=UTC,Mon,22:00-23:00", "expected SITE="),
    ]:
        with pytest.raises(PlaneError, match=words) as info:
            parse_window(bad)
        assert "\n" not in str(info.value) and f"--window '{bad}'" in str(info.value)


# --- the rollout ------------------------------------------------------------------------------------


def fleet(*ids: str, site: str | None = None) -> list[Facts]:
    return [Facts(id=g, site=site, connected=True, running=OLD, state=S.IDLE, at=1.0) for g in ids]


def report(facts: list[Facts], gid: str, **change: object) -> list[Facts]:
    """The fleet after `gid` sent an update-status for rollout r1."""
    base = {"target": V, "rollout": "r1"}
    return [dataclasses.replace(f, **{**base, **change}) if f.id == gid else f for f in facts]  # type: ignore[arg-type]


def healthy(facts: list[Facts], gid: str) -> list[Facts]:
    return report(facts, gid, running=V, state=S.HEALTHY, at=50.0)


NOON = at("2026-12-07 12:00")


def test_canaries_go_first_and_alone_until_all_are_healthy() -> None:
    r = Rollout("r1", V, "all", canaries=("c2", "c1"), max_parallel=5)
    gws = fleet("a", "b", "c1", "c2")
    p = plan(r, gws, NOON)
    assert p.phase is Phase.CANARY
    assert p.rollout.admitted == ("c2", "c1")  # the operator's order
    assert {g: p.gateways[g].offer for g in ("c1", "c2")} == {"c1": INSTALL, "c2": INSTALL}
    assert p.gateways["a"].step is Step.WAIT_CANARIES and p.gateways["a"].offer is None  # not even a download
    gws = healthy(gws, "c1")
    p = plan(p.rollout, gws, NOON)
    assert p.phase is Phase.CANARY and p.gateways["a"].offer is None and p.gateways["c1"].step is Step.DONE
    gws = healthy(gws, "c2")
    p = plan(p.rollout, gws, NOON)
    assert p.phase is Phase.RUNNING and p.gateways["a"].offer == INSTALL and p.gateways["b"].offer == INSTALL
    p = plan(p.rollout, healthy(healthy(gws, "a"), "b"), NOON)
    assert p.phase is Phase.DONE and p.counts() == {"done": 4}


def test_at_most_max_parallel_between_admission_and_healthy() -> None:
    r = Rollout("r1", V, "all", max_parallel=2)
    gws = fleet("a", "b", "c", "d", "e")
    p = plan(r, gws, NOON)
    assert p.rollout.admitted == ("a", "b")
    assert [p.gateways[g].step for g in "cde"] == [Step.WAIT_SLOT] * 3
    assert p.gateways["c"].offer == STAGE  # downloads ahead of its turn
    # "a" reboots: offline and still holding its slot.
    gws = report(gws, "a", state=S.REBOOTING, connected=False)
    gws = report(gws, "b", state=S.INSTALLING)
    p = plan(p.rollout, gws, NOON)
    assert p.rollout.admitted == ("a", "b") and p.gateways["c"].step is Step.WAIT_SLOT
    gws = healthy(gws, "a")
    p = plan(p.rollout, gws, NOON)
    assert p.rollout.admitted == ("b", "c") and p.gateways["c"].offer == INSTALL
    assert p.gateways["d"].step is Step.WAIT_SLOT


def test_an_offline_gateway_is_not_given_a_slot() -> None:
    gws = fleet("a", "b")
    gws[0] = dataclasses.replace(gws[0], connected=False)
    p = plan(Rollout("r1", V, "all", max_parallel=1), gws, NOON)
    assert p.gateways["a"].step is Step.OFFLINE and p.rollout.admitted == ("b",)


def test_install_and_reboot_only_inside_the_window_downloads_before() -> None:
    windows = {"lab": win("UTC,Mon-Fri,22:00-04:00")}
    r = Rollout("r1", V, "all", max_parallel=3, windows=windows)
    gws = fleet("a", "b", site="lab") + fleet("n")  # n has no site and there is no default window
    p = plan(r, gws, NOON)
    assert p.gateways["a"].step is Step.WAIT_WINDOW and p.gateways["a"].offer == STAGE
    assert p.gateways["n"].offer == INSTALL  # no window: any time
    p = plan(p.rollout, gws, at("2026-12-07 22:30"))
    assert p.gateways["a"].offer == INSTALL and set(p.rollout.admitted) == {"a", "b", "n"}
    # The window closes while "a" is still downloading: it keeps its slot, but may not install.
    gws = report(gws, "a", state=S.DOWNLOADING)
    p = plan(p.rollout, gws, at("2026-12-08 04:00"))
    assert p.gateways["a"].step is Step.ADMITTED and p.gateways["a"].offer == STAGE
    # A default window covers gateways without one of their own.
    r2 = dataclasses.replace(r, windows={**windows, "*": win("UTC,Sun,00:00-01:00")})
    assert plan(r2, gws, NOON).gateways["n"].step is Step.WAIT_WINDOW


def test_urgent_skips_the_windows() -> None:
    r = Rollout("r1", V, "all", max_parallel=5, windows={"*": win("UTC,Sun,00:00-01:00")}, urgent=True)
    p = plan(r, fleet("a", "b"), NOON)
    assert all(g.offer == INSTALL for g in p.gateways.values())


def test_the_first_failure_halts_and_stops_who_has_not_begun() -> None:
    r = Rollout("r1", V, "all", max_parallel=3)
    gws = fleet("a", "b", "c", "d")
    p = plan(r, gws, NOON)
    gws = report(gws, "a", state=S.ROLLED_BACK, reason="gateway did not connect in 15 min", at=60.0)
    gws = report(gws, "b", state=S.INSTALLED)
    gws = report(gws, "c", state=S.DOWNLOADING)
    p = plan(p.rollout, gws, NOON)
    assert p.phase is Phase.HALTED
    assert p.reason == "gateway a rolled-back: gateway did not connect in 15 min"
    assert p.gateways["a"].step is Step.FAILED and p.gateways["a"].offer is None
    assert p.gateways["b"].offer == INSTALL  # already installed: let it reboot into it
    assert p.gateways["c"].step is Step.HALTED and p.gateways["c"].offer == STAGE
    assert p.gateways["d"].step is Step.HALTED
    # Halting is remembered even if the gateway's report changes.
    gws = report(gws, "a", state=S.IDLE, at=70.0)
    assert plan(p.rollout, gws, NOON).phase is Phase.HALTED


def test_a_failure_that_names_no_rollout_or_another_does_not_halt_this_one() -> None:
    # An install by hand that was killed (no rollout id), or another rollout's attempt, reported
    # when the gateway connects after this rollout started: not this rollout's failure.
    r = Rollout("r1", V, "all", max_parallel=2)
    gws = report(fleet("a", "b"), "a", state=S.FAILED, reason="interrupted: killed", rollout=None, at=60.0)
    gws = report(gws, "b", state=S.ROLLED_BACK, reason="did not finish booting", rollout="r0", at=61.0)
    p = plan(r, gws, NOON)
    assert p.phase is Phase.RUNNING and set(p.rollout.admitted) == {"a", "b"}
    assert p.gateways["a"].offer == INSTALL and p.gateways["b"].offer == INSTALL


def test_resume_excuses_the_failures_so_far_and_a_new_one_halts_again() -> None:
    r = Rollout("r1", V, "all", max_parallel=1)
    gws = report(fleet("a", "b"), "a", state=S.FAILED, reason="sha256 mismatch", at=60.0)
    p = plan(dataclasses.replace(r, admitted=("a",)), gws, NOON)
    assert p.phase is Phase.HALTED and "sha256 mismatch" in (p.reason or "")
    resumed = resume(p.rollout, gws)
    p = plan(resumed, gws, NOON)
    assert p.phase is Phase.RUNNING and p.rollout.admitted == ("a",)  # "a" tries again
    gws = report(gws, "a", state=S.FAILED, reason="sha256 mismatch", at=90.0)
    assert plan(p.rollout, gws, NOON).phase is Phase.HALTED


def test_without_halt_a_failure_is_skipped_and_frees_its_slot() -> None:
    r = Rollout("r1", V, "all", max_parallel=1, halt_on_failure=False)
    gws = fleet("a", "b")
    p = plan(r, gws, NOON)
    gws = report(gws, "a", state=S.FAILED, reason="install of 0.2.0 into slot B failed: x")
    p = plan(p.rollout, gws, NOON)
    assert p.phase is Phase.RUNNING and p.rollout.admitted == ("b",)
    p = plan(p.rollout, healthy(gws, "b"), NOON)
    assert p.phase is Phase.DONE and p.counts() == {"failed": 1, "done": 1}


def test_a_failed_canary_halts_even_without_halt_on_failure() -> None:
    r = Rollout("r1", V, "all", canaries=("c",), halt_on_failure=False)
    gws = report(fleet("a", "c"), "c", state=S.ROLLED_BACK, reason="did not finish booting")
    p = plan(dataclasses.replace(r, admitted=("c",)), gws, NOON)
    assert p.phase is Phase.HALTED and p.reason == "canary c rolled-back: did not finish booting"
    assert p.gateways["a"].step is Step.HALTED


def test_failures_of_another_rollout_or_release_do_not_count() -> None:
    r = Rollout("r1", V, "all", max_parallel=5)
    gws = report(fleet("a", "b"), "a", state=S.FAILED, rollout="r0", target="0.1.9")
    gws = report(gws, "b", state=S.FAILED, rollout="r0")
    p = plan(r, gws, NOON)
    assert p.phase is Phase.RUNNING and p.rollout.admitted == ("a", "b")


def test_scope_a_site_or_a_list_and_canaries_always_in() -> None:
    gws = fleet("a1", "a2", site="amsterdam") + fleet("b1", site="boston") + fleet("n")
    p = plan(Rollout("r1", V, "site", site="amsterdam", canaries=("b1",), max_parallel=9), gws, NOON)
    assert set(p.gateways) == {"a1", "a2", "b1"}
    p = plan(Rollout("r1", V, "gateways", gateways=("n", "a2"), max_parallel=9), gws, NOON)
    assert set(p.gateways) == {"n", "a2"}
    p = plan(Rollout("r1", V, "all", max_parallel=9), gws, NOON)
    assert p.rollout.admitted == ("n", "a1", "a2", "b1")  # grouped by site, site-less first


def test_gateways_already_on_the_target_are_done_and_an_empty_scope_is_done() -> None:
    gws = [dataclasses.replace(f, running=V) for f in fleet("a", "b")]
    assert plan(Rollout("r1", V, "all"), gws, NOON).phase is Phase.DONE
    assert plan(Rollout("r1", V, "site", site="nowhere"), gws, NOON).phase is Phase.DONE


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        plan(Rollout("r1", V, "all"), [], dt.datetime(2026, 12, 7, 12, 0))


def test_a_gateway_on_the_target_that_works_towards_another_is_told_to_stay() -> None:
    # A rollback rollout to 0.1.0 after 0.2.0 was pre-staged: "a" still runs 0.1.0 with 0.2.0 staged.
    gws = report(fleet("a", "b"), "a", state=S.DOWNLOADED, target="0.2.0", rollout="r0")
    p = plan(Rollout("r1", OLD, "all", downgrade=True), gws, NOON)
    assert p.phase is Phase.DONE
    assert p.gateways["a"].step is Step.DONE and p.gateways["a"].offer == STAGE  # version 0.1.0 = stay
    assert p.gateways["b"].offer is None

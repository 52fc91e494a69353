"""Sites, pure parts: the site name rule, reachability, the chooser; and sites.json's store and
the tokens' site field on real files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mgmtplane.errors import PlaneError
from mgmtplane.front_wire import route, site_route
from mgmtplane.registry import GatewayRecord, Registry
from mgmtplane.site_store import load_priorities, set_priority
from mgmtplane.sites import (
    Candidate,
    Reach,
    check_priority,
    check_site,
    choose,
    no_gateway_reason,
    rank,
    reach,
    valid_site,
)
from mgmtplane.tokens import TokenStore


def cand(gid: str, **kw: object) -> Candidate:
    fields: dict[str, object] = {
        "connected": True,
        "draining": False,
        "priority": 0,
        "open_streams": 0,
        "reach": Reach.UNKNOWN,
    }
    fields.update(kw)
    return Candidate(gateway_id=gid, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a", "dc1", "paris-1", "x" * 63, "0-9"])
def test_valid_site_names(name: str) -> None:
    assert valid_site(name) and check_site(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "A", "dc_1", "dc 1", "x" * 64, "a/b", "..", "é", "a\n", "site:a"]
)
def test_invalid_site_names_are_one_line_errors(name: str) -> None:
    assert not valid_site(name)
    with pytest.raises(PlaneError) as err:
        check_site(name, "--site")
    assert str(err.value).startswith("--site: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("value", [True, "1", 1.5, 1001, -1001, None])
def test_bad_priorities(value: object) -> None:
    with pytest.raises(PlaneError):
        check_priority(value)


def test_reach_from_probe_then_outcome() -> None:
    assert reach(None) is Reach.UNKNOWN
    assert reach("up", 10.0) is Reach.YES
    assert reach("degraded", 10.0) is Reach.YES
    for state in ("down", "tls-error", "forbidden", ""):  # "" a fresh record without the target
        assert reach(state, 10.0) is Reach.NO
    assert reach(None, 0.0, True, 5.0) is Reach.YES
    assert reach(None, 0.0, False, 5.0) is Reach.NO


def test_the_newer_fact_wins() -> None:
    assert reach("up", 10.0, False, 11.0) is Reach.NO  # a call failed after the record came
    assert reach("up", 10.0, False, 9.0) is Reach.YES  # the record came after the failure
    assert reach("down", 10.0, True, 12.0) is Reach.YES
    assert reach("down", 10.0, True, 9.0) is Reach.NO


def test_reachable_beats_priority_and_priority_beats_load() -> None:
    a = cand("a", priority=10, reach=Reach.NO)
    b = cand("b", priority=0, reach=Reach.YES, open_streams=50)
    c = cand("c", priority=0, reach=Reach.YES, open_streams=3)
    d = cand("d", priority=5, reach=Reach.UNKNOWN)
    assert [x.gateway_id for x in rank([a, b, c, d])] == ["c", "b", "d", "a"]
    e = cand("e", priority=1, reach=Reach.YES, open_streams=99)
    assert choose([a, b, c, d, e]) == e


def test_offline_and_draining_gateways_get_no_calls() -> None:
    a = cand("a", connected=False, reach=Reach.YES, priority=100)
    b = cand("b", draining=True, reach=Reach.YES, priority=100)
    c = cand("c", reach=Reach.NO)
    assert choose([a, b, c]) == c  # unreachable is a last resort, offline and draining are not
    assert choose([a, b]) is None
    assert choose([c], exclude=["c"]) is None


def test_ties_are_stable() -> None:
    cands = [cand(g) for g in ("m", "b", "z")]
    assert [c.gateway_id for c in rank(cands)] == ["b", "m", "z"]


def test_no_gateway_reason_names_each_state() -> None:
    assert no_gateway_reason("dc1", []) == "site dc1 has no registered gateway"
    msg = no_gateway_reason(
        "dc1",
        [cand("aaaaaaaa-1", connected=False), cand("bbbbbbbb-2", draining=True), cand("cccccccc-3")],
        ["cccccccc-3"],
    )
    assert (
        msg
        == "no gateway of site dc1 can take the call (aaaaaaaa offline, bbbbbbbb draining, cccccccc tried)"
    )


@given(
    st.lists(
        st.builds(
            cand,
            st.text("abcdef", min_size=1, max_size=4),
            connected=st.booleans(),
            draining=st.booleans(),
            priority=st.integers(-5, 5),
            open_streams=st.integers(0, 9),
            reach=st.sampled_from(list(Reach)),
        ),
        max_size=8,
    )
)
def test_choice_properties(cands: list[Candidate]) -> None:
    chosen = choose(cands)
    eligible = [c for c in cands if c.connected and not c.draining]
    if not eligible:
        assert chosen is None
        return
    assert chosen is not None and chosen.eligible
    best = max(c.reach for c in eligible)
    assert chosen.reach == best
    top = max(c.priority for c in eligible if c.reach == best)
    assert chosen.priority == top
    assert chosen.open_streams == min(
        c.open_streams for c in eligible if c.reach == best and c.priority == top
    )


# --- on disk --------------------------------------------------------------------------------------


def test_priorities_round_trip_atomic_0600(tmp_path: Path) -> None:
    assert load_priorities(tmp_path) == {}
    set_priority(tmp_path, "dc1", "gw-a", 10)
    set_priority(tmp_path, "dc1", "gw-b", -3)
    set_priority(tmp_path, "dc2", "gw-c", 0)
    assert load_priorities(tmp_path) == {"dc1": {"gw-a": 10, "gw-b": -3}, "dc2": {"gw-c": 0}}
    set_priority(tmp_path, "dc1", "gw-a", None)
    set_priority(tmp_path, "dc2", "gw-c", None)
    assert load_priorities(tmp_path) == {"dc1": {"gw-b": -3}}
    assert stat.S_IMODE((tmp_path / "sites.json").stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([], "sites: expected an object"),
        ({"sites": {"BAD": {"priorities": {}}}}, "sites.BAD: not a valid site name"),
        ({"sites": {"dc1": {"priorities": []}}}, "sites.dc1: priorities: expected an object"),
        ({"sites": {"dc1": {"priorities": {"g": "high"}}}}, "sites.dc1.priorities.g: expected an integer"),
    ],
)
def test_malformed_sites_file_is_one_line(tmp_path: Path, doc: object, where: str) -> None:
    (tmp_path / "sites.json").write_text(json.dumps(doc))
    with pytest.raises(PlaneError) as err:
        load_priorities(tmp_path)
    assert where in str(err.value) and str(tmp_path / "sites.json") in str(err.value)
    with pytest.raises(PlaneError):
        set_priority(tmp_path, "dc1", "g", 1)  # never written over a file it cannot read
    assert json.loads((tmp_path / "sites.json").read_text()) == doc


def test_token_carries_its_site_to_the_redemption(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    secret, _ = store.create(60, site="dc1")
    assert store.peek(secret) is not None and store.peek(secret).site == "dc1"  # type: ignore[union-attr]
    first = store.redeem(secret, "sha256:k", "gw-1")
    assert first.site == "dc1" and not first.replay
    again = store.redeem(secret, "sha256:k", "gw-2")  # the same key finishing an interrupted enrolment
    assert again.replay and again.site == "dc1" and again.gateway_id == "gw-1"
    plain, _ = store.create(60)
    assert store.redeem(plain, "sha256:j", "gw-3").site is None


def test_gateway_record_keeps_its_site(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.add(GatewayRecord("gw-1", "h1", "2026-01-01T00:00:00+00:00", "ab", "sha256:00", site="dc1"))
    registry.add(GatewayRecord("gw-2", "h2", "2026-01-01T00:00:00+00:00", "cd", "sha256:01"))
    assert registry.get("gw-1").site == "dc1"  # type: ignore[union-attr]
    assert registry.get("gw-2").site == ""  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("target", "found"),
    [
        ("/v1/sites/dc1/targets/bmc/redfish/v1", ("dc1", "bmc")),
        ("/v1/sites/dc1/targets/bmc/", ("dc1", "bmc")),
        ("/v1/sites/dc1/targets/b%2Fm/x?y=/z", ("dc1", "b%2Fm")),
        ("/v1/sites/dc1/targets/bmc", None),  # no path part: not the route (as aiohttp's router)
        ("/v1/sites//targets/bmc/x", None),
        ("/v1/sites/dc1/target/bmc/x", None),
        ("/v1/sites/dc1", None),
        ("/v1/gateways/g/targets/bmc/x", None),
    ],
)
def test_site_route_of_a_request_target(target: str, found: tuple[str, str] | None) -> None:
    assert site_route(target) == found
    assert route(target) is None or found is None  # never both routes at once


def test_remembered_outcomes_are_bounded(tmp_path: Path) -> None:
    from mgmtplane.hub import Hub
    from mgmtplane.site_routes import MAX_OUTCOMES, SiteRouter

    now = [1000.0]
    router = SiteRouter(tmp_path, Hub(), Registry(tmp_path), None, clock=lambda: now[0])
    router.note("gw", "kept", True)
    for i in range(3 * MAX_OUTCOMES):  # callers may name any target: each unknown one fails
        now[0] += 0.001
        router.note("gw", f"t{i}", False)
    assert len(router.outcomes) <= MAX_OUTCOMES
    assert router.outcome("gw", f"t{3 * MAX_OUTCOMES - 1}") == (False, now[0])  # the newest are kept
    now[0] += 61
    assert router.outcome("gw", f"t{3 * MAX_OUTCOMES - 1}") == (None, 0.0)  # and age out

"""The filter's rule lookup cache answers exactly as the uncached lookup (issue 14).

The cache keys on a path's shape: a segment no rule names at its position becomes one marker, so
`/servers/<id>` shares an entry for every id. Random rule sets (deny and allow, literals in any
case, `*`, `{x}`, `**`) and random request sequences (so later requests hit what earlier ones
cached) must get the same rule, or the same denial, or none, from both lookups.
"""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.filter import metadata_filter as mf
from gateway.filter.metadata_filter import FilterRequest, check_request, select_rule, select_rule_cached
from gateway.filter.policy import KNOWN_METHODS, Kind, PathPattern, PolicySet, Rule

_LITERALS = ["servers", "Servers", "detail", "v2.1", "a", "A", "sdk", "os-keypairs"]
_PATTERN_SEGMENTS = st.sampled_from([*_LITERALS, "*", "{id}"])
_METHODS = sorted(KNOWN_METHODS)


@st.composite
def rules(draw: st.DrawFn, n: int) -> Rule:
    segs = draw(st.lists(_PATTERN_SEGMENTS, max_size=4))
    if draw(st.booleans()):
        segs.append("**")
    deny = draw(st.booleans())
    methods = frozenset(draw(st.lists(st.sampled_from([*_METHODS, *(["*"] if deny else [])]), min_size=1)))
    return Rule(
        name=f"r{n}",
        kind=Kind.HTTP,
        methods=methods,
        path=PathPattern("/" + "/".join(segs), tuple(segs)),
        source="test:1",
        deny=deny,
        reason=draw(st.sampled_from(["", "no"])),
    )


@st.composite
def policy_sets(draw: st.DrawFn) -> PolicySet:
    items = [draw(rules(n)) for n in range(draw(st.integers(0, 8)))]
    ordered = tuple([r for r in items if r.deny] + [r for r in items if not r.deny])
    return PolicySet(MappingProxyType({Kind.HTTP: ordered}), ())


_REQUEST_SEGMENTS = st.one_of(
    st.sampled_from(_LITERALS),
    st.sampled_from(_LITERALS).map(str.upper),
    st.sampled_from(_LITERALS).map(str.swapcase),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x17F), min_size=1, max_size=5),
)
_REQUESTS = st.tuples(st.sampled_from(_METHODS), st.lists(_REQUEST_SEGMENTS, max_size=6))


@settings(max_examples=500, deadline=None)
@given(policies=policy_sets(), requests=st.lists(_REQUESTS, min_size=1, max_size=25))
def test_cached_lookup_is_the_uncached_lookup(
    policies: PolicySet, requests: list[tuple[str, list[str]]]
) -> None:
    for method, segments in requests * 2:  # the second pass answers from the cache
        for kind in ("http", "vsphere"):
            assert select_rule_cached(policies, kind, method, segments) == select_rule(
                policies, kind, method, segments
            )


def test_ids_share_one_entry_and_the_cache_stays_bounded() -> None:
    rule = Rule("r", Kind.HTTP, frozenset({"GET"}), PathPattern("/servers/{id}", ("servers", "{id}")), "t:1")
    policies = PolicySet(MappingProxyType({Kind.HTTP: (rule,)}), ())
    for n in range(10_000):
        req = FilterRequest("GET", f"/servers/{n:08x}", {})
        assert check_request(policies, "http", req) == rule
    assert len(policies.memo) == 2  # the literal table and one shape
    for n in range(1, 6000):  # one shape per path length: more than the cache keeps
        assert select_rule_cached(policies, "http", "GET", ["servers"] * n) == (rule if n == 2 else None)
        assert len(policies.memo) <= 4096


def test_path_character_checks_refuse_what_they_refused_before() -> None:
    from gateway.filter.metadata_filter import _PATH_UNSAFE, _SEGMENT_UNSAFE

    for c in map(chr, range(0x3000)):
        assert bool(_PATH_UNSAFE.search(c)) == (c < "!" or c > "~" or c in "\\;"), repr(c)
        assert bool(_SEGMENT_UNSAFE.search(c)) == (c in "/\\%;"), repr(c)


_PATH_PIECES = st.sampled_from(
    ["servers", "%2F", "..", ".", "", "a%20b", "%ff", "x#y", "?q=1", "\x7f", "d\u00e9tail"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_PATH_PIECES, max_size=5).map(lambda p: "/" + "/".join(p)), min_size=1, max_size=20))
def test_split_path_cache_answers_as_the_uncached_split(paths: list[str]) -> None:
    # Repeated paths come from the cache: the answer (segments or the denial) must not change.
    for path in [*paths, *paths]:
        assert mf._split_path(path) == mf._split_path_uncached(path)


def test_split_path_cache_is_bounded_and_skips_long_paths() -> None:
    mf._SPLIT_CACHE.clear()
    long_path = "/" + "a" * mf._SPLIT_CACHE_PATH
    assert mf._split_path(long_path) == (("a" * mf._SPLIT_CACHE_PATH,), "")
    assert long_path not in mf._SPLIT_CACHE
    for i in range(mf._SPLIT_CACHE_MAX + 10):
        mf._split_path(f"/servers/{i}")
    assert 0 < len(mf._SPLIT_CACHE) <= mf._SPLIT_CACHE_MAX

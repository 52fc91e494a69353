"""Join tokens: the text format (plane encodes, firstboot parses), TTLs, and the consume-once store."""

from __future__ import annotations

import base64
import json
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.enrol import InvalidToken, JoinToken, encode_token, parse_token
from mgmtplane.errors import PlaneError
from mgmtplane.tokens import TokenError, TokenStore, parse_ttl, secret_id

HASH = "sha256:" + "ab" * 32


def _raw(payload: object) -> str:
    return "GWJ1." + base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_round_trip() -> None:
    text = encode_token("https://plane.example.com:8443", HASH, "s3cret", 1_900_000_000)
    assert text.startswith("GWJ1.") and "=" not in text
    assert parse_token(text) == JoinToken("https://plane.example.com:8443", HASH, "s3cret", 1_900_000_000)


def test_compact_json_payload() -> None:
    text = encode_token("https://p:1", HASH, "x", 5)
    body = text[5:]
    decoded = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    assert decoded == '{"u":"https://p:1","h":"' + HASH + '","s":"x","e":5}'


@given(
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    port=st.integers(1, 65535),
    secret=st.text(min_size=1, max_size=80),
    expires=st.integers(1, 2**40),
)
def test_round_trip_property(host: str, port: int, secret: str, expires: int) -> None:
    url = f"https://{host}:{port}"
    token = parse_token("  " + encode_token(url, HASH, secret, expires) + "\n")
    assert (token.plane_url, token.ca_hash, token.secret, token.expires_at) == (url, HASH, secret, expires)


def test_trailing_slash_dropped() -> None:
    assert parse_token(encode_token("https://p:1/", HASH, "s", 9)).plane_url == "https://p:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must start with 'GWJ1.'"),
        ("GWJ2.abc", "must start with 'GWJ1.'"),
        ("GWJ1.!!!", "not valid base64url JSON"),
        ("GWJ1." + base64.urlsafe_b64encode(b"not json").decode(), "not valid base64url JSON"),
        (_raw([1, 2]), "not a JSON object"),
        (_raw({"h": HASH, "s": "x", "e": 5}), "u (plane URL) is missing"),
        (_raw({"u": "http://p:1", "h": HASH, "s": "x", "e": 5}), "must be https://"),
        (_raw({"u": "https://p:99999", "h": HASH, "s": "x", "e": 5}), "bad port"),
        (_raw({"u": "https://p:1", "h": "sha256:XYZ", "s": "x", "e": 5}), "h: CA hash"),
        (_raw({"u": "https://p:1", "h": "md5:" + "a" * 64, "s": "x", "e": 5}), "h: CA hash"),
        (_raw({"u": "https://p:1", "h": HASH, "s": "", "e": 5}), "s (secret) is missing"),
        (_raw({"u": "https://p:1", "h": HASH, "s": "x", "e": True}), "e (expiry)"),
        (_raw({"u": "https://p:1", "h": HASH, "s": "x", "e": "5"}), "e (expiry)"),
        (_raw({"u": "https://p:1", "h": HASH, "s": "x", "e": -1}), "e (expiry)"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidToken) as info:
        parse_token(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_expired_by_local_clock() -> None:
    token = JoinToken("https://p:1", HASH, "s", 100)
    assert token.expired(now=100) and not token.expired(now=99.5)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800), ("1.5m", 90)]
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"), [("soon", "not a duration"), ("0s", "shorter"), ("31d", "longer")]
)
def test_parse_ttl_errors(text: str, message: str) -> None:
    with pytest.raises(PlaneError, match=message):
        parse_ttl(text)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_store_consumes_once_and_survives_restart(tmp_path) -> None:
    clock = Clock(1000.0)
    secret, expires = TokenStore(tmp_path, clock).create(60)
    assert expires == 1060
    # A second store object reads the same file: the state is on disk, not in memory.
    first = TokenStore(tmp_path, clock).redeem(secret, "sha256:k1", "gw-1")
    assert (first.gateway_id, first.replay) == ("gw-1", False)
    with pytest.raises(TokenError) as info:
        TokenStore(tmp_path, clock).redeem(secret, "sha256:k2", "gw-2")
    assert (info.value.code, info.value.status) == ("token-used", 403)


def test_same_key_may_redeem_again(tmp_path) -> None:
    store = TokenStore(tmp_path, Clock(1000.0))
    secret, _ = store.create(60)
    store.redeem(secret, "sha256:k1", "gw-1")
    again = store.redeem(secret, "sha256:k1", "gw-other")
    assert (again.gateway_id, again.replay) == ("gw-1", True)


def test_expired_and_unknown(tmp_path) -> None:
    clock = Clock(1000.0)
    store = TokenStore(tmp_path, clock)
    secret, expires = store.create(1)
    clock.now = expires
    with pytest.raises(TokenError) as info:
        store.redeem(secret, "sha256:k", "gw")
    assert (info.value.code, info.value.status) == ("token-expired", 410)
    with pytest.raises(TokenError) as info:
        store.redeem("not-a-secret", "sha256:k", "gw")
    assert (info.value.code, info.value.status) == ("token-unknown", 401)


def test_fractional_clock_rounds_expiry_up(tmp_path) -> None:
    _, expires = TokenStore(tmp_path, Clock(1000.4)).create(1)
    assert expires == 1002


def test_file_holds_hashes_only_and_is_private(tmp_path) -> None:
    store = TokenStore(tmp_path, Clock(1000.0))
    secret, _ = store.create(60)
    text = store.path.read_text()
    assert secret not in text and secret_id(secret) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_old_records_pruned(tmp_path) -> None:
    clock = Clock(1000.0)
    store = TokenStore(tmp_path, clock)
    old, _ = store.create(60)
    clock.now += 8 * 86400
    store.create(60)
    assert secret_id(old) not in {r.token_id for r in store.all()}


def test_corrupt_file_is_one_line_error(tmp_path) -> None:
    (tmp_path / "tokens.json").write_text("{nope")
    with pytest.raises(PlaneError, match=r"tokens\.json: invalid JSON"):
        TokenStore(tmp_path).all()


def test_concurrent_redeem_exactly_one_wins(tmp_path) -> None:
    """Separate store objects (separate lock descriptors), as in separate processes: one winner."""
    secret, _ = TokenStore(tmp_path).create(60)
    barrier = threading.Barrier(8)

    def attempt(i: int) -> str:
        barrier.wait()
        try:
            return TokenStore(tmp_path).redeem(secret, f"sha256:k{i}", f"gw-{i}").gateway_id
        except TokenError as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    winners = [r for r in results if r.startswith("gw-")]
    assert len(winners) == 1 and results.count("token-used") == 7

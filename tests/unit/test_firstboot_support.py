"""The support bundle's redaction of URL passwords: hostile URLs, and no secret substring survives."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gwcore.deploy import mask_url, validate_proxy_url
from gwcore.redact import REDACTED, redact, redact_file, redact_text

R = REDACTED
TABLE = [
    # (text, expected)
    ("http://user:p@ss@proxy:3128", f"http://user:{R}@proxy:3128"),
    ("http://user:p@s@s@proxy:3128/", f"http://user:{R}@proxy:3128/"),
    ("http://user:p%40ss@proxy:3128", f"http://user:{R}@proxy:3128"),
    ("http://user:p%3Ass%2F@proxy:3128", f"http://user:{R}@proxy:3128"),
    ("http://us%40er:pw@proxy:3128", f"http://us%40er:{R}@proxy:3128"),
    ("http://user:pa:ss@proxy:3128", f"http://user:{R}@proxy:3128"),
    ("http://:pw@proxy:3128", f"http://:{R}@proxy:3128"),
    ("http://user:pw@[2001:db8::1]:3128", f"http://user:{R}@[2001:db8::1]:3128"),
    ("http://user:p@[ss@[2001:db8::1]:3128", f"http://user:{R}@[2001:db8::1]:3128"),
    ("https://user:p/w@proxy:3128", f"https://user:{R}@proxy:3128"),
    ("HTTP://user:pw@proxy:3128", f"HTTP://user:{R}@proxy:3128"),
    ("socks5h://user:pw@proxy:1080", f"socks5h://user:{R}@proxy:1080"),
    # No password: nothing to hide, nothing changed.
    ("http://proxy:3128", "http://proxy:3128"),
    ("http://user@proxy:3128", "http://user@proxy:3128"),
    ("http://[2001:db8::1]:3128/path", "http://[2001:db8::1]:3128/path"),
    ("https://plane.example.com:8443/v1/ca", "https://plane.example.com:8443/v1/ca"),
    ("mail admin@example.com about http://proxy:3128", "mail admin@example.com about http://proxy:3128"),
    # In free text: each URL on its own, the words around them kept.
    (
        'proxy_url="http://a:x@y@p1:1" then http://b:z@p2:2, done',
        f'proxy_url="http://a:{R}@p1:1" then http://b:{R}@p2:2, done',
    ),
    ("'http://u:p@ss@h:1'", f"'http://u:{R}@h:1'"),
    ("<http://u:p@ss@h:1>", f"<http://u:{R}@h:1>"),
]


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_hostile_urls_in_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("http://user:p@ss@proxy:3128", "p@ss"),
        ("http://user:p ss@proxy:3128", "p ss"),
        ("http://user:p/s?s#s@proxy:3128", "p/s?s#s"),
        ("http://user:p'\"ss@proxy:3128", "p'\"ss"),
    ],
)
def test_a_whole_url_value_is_redacted_up_to_its_last_at(value: str, secret: str) -> None:
    # A structured value (YAML/JSON) is known to be one URL: even characters a URL should have
    # percent-encoded cannot cut the redaction short.
    out = redact({"proxy_url": value})["proxy_url"]
    assert out == f"http://user:{R}@proxy:3128"
    assert secret not in out


def test_bundle_file_of_a_hostile_proxy_url() -> None:
    raw = b"plane_url: https://plane:8443\nproxy_url: http://bob:p@ss@proxy.example.com:3128\n"
    out = redact_file("/etc/gateway/gateway.yaml", raw).decode()
    assert "ss@proxy" not in out and f"http://bob:{R}@proxy.example.com:3128" in out
    torn = b"proxy_url: 'http://bob:p@ss@proxy.example.com:3128\n"  # not YAML: redacted as text
    assert b"p@ss" not in redact_file("/etc/gateway/gateway.yaml", torn)


def test_settings_mask_uses_the_same_rule() -> None:
    assert mask_url("http://bob:p@ss@proxy.example.com:3128") == "http://bob:********@proxy.example.com:3128"
    # The validator's error echoes the value masked, even when the URL does not parse.
    for bad in ("http://bob:p@ss/x@proxy.example.com:3128", "http://bob:se#cret@proxy"):
        with pytest.raises(ValueError) as err:
            validate_proxy_url(bad)
        assert "ss/x" not in str(err.value) and "cret" not in str(err.value)


# Passwords as an operator might type them: any printable ASCII but whitespace, raw or encoded.
PASSWORD_CHARS = "".join(c for c in string.printable if not c.isspace())
users = st.text(alphabet=string.ascii_letters + string.digits + "._-%", max_size=12)
passwords = st.text(alphabet=PASSWORD_CHARS, min_size=3, max_size=24)
hosts = st.sampled_from(["proxy", "proxy.example.com", "[2001:db8::1]", "192.0.2.3", "p@h"])
prose = st.text(alphabet=string.ascii_letters + " ,;:='\"<>()", max_size=20)


@settings(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "socks5"]),
    user=users,
    password=passwords,
    encode=st.booleans(),
    host=hosts,
    before=prose,
    after=prose,
)
@example(scheme="http", user="user", password="p@ss", encode=False, host="proxy", before="", after="")
def test_no_secret_substring_survives(
    scheme: str, user: str, password: str, encode: bool, host: str, before: str, after: str
) -> None:
    secret = quote(password, safe="") if encode else password
    url = f"{scheme}://{user}:{secret}@{host}:3128"
    # Exactly the password goes (and, for a host with an '@', the host up to it: the safe side).
    redacted = f"{scheme}://{user}:{R}@{host.rpartition('@')[2]}:3128"
    assert redact_text(url) == redacted
    assert redact_text(f"{before} {url} {after}") == f"{before} {redacted} {after}"
    assert redact_text(f"proxy_url: {url}") == f"proxy_url: {redacted}"
    assert redact({"proxy_url": url, "nested": [{"url": url}]}) == {
        "proxy_url": redacted,
        "nested": [{"url": redacted}],
    }
    assert mask_url(url) == redacted.replace(R, "********")

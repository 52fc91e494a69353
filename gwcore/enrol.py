"""The enrolment contract between the plane and the appliance, written once: the `GWJ1.` join
token, the plane URL it carries, the host name a gateway reports, and proxy URL credentials.

Pure and light (standard library only): the consoles validate tokens as they are typed and must
not load aiohttp or cryptography for it. The certificate side (the SPKI hash the token pins, the
same-key check) is in gwcore.pki.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from gwcore.errors import Invalid, UserError
from gwcore.redact import describe_char, first_unprintable
from gwcore.safeload import loads_json

TOKEN_PREFIX = "GWJ1."
CA_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# The host name a gateway reports at registration, checked by the gateway before it sends it and
# by the plane when it receives it (looser than a host name setting: it may be socket.gethostname()).
_REPORTED_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class InvalidToken(UserError):
    """A join token that cannot be parsed; the message starts with `join token: `."""


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token: where the plane is, its CA hash, the one-time secret and the expiry."""

    plane_url: str
    ca_hash: str
    secret: str
    expires_at: int

    def expired(self, now: float | None = None) -> bool:
        """True once the expiry has passed by the local clock (which may be wrong before NTP)."""
        return (time.time() if now is None else now) >= self.expires_at


def encode_token(plane_url: str, ca_hash: str, secret: str, expires_at: int) -> str:
    """The join token text: `GWJ1.` + base64url (no padding) of compact JSON {u, h, s, e}."""
    payload = json.dumps({"u": plane_url, "h": ca_hash, "s": secret, "e": expires_at}, separators=(",", ":"))
    return TOKEN_PREFIX + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def parse_token(text: str) -> JoinToken:
    """Parse and validate a `GWJ1.` join token; raises InvalidToken naming the problem."""
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise InvalidToken(f"join token: must start with {TOKEN_PREFIX!r}")
    body = text[len(TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = loads_json(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("join token: not valid base64url JSON (was it cut short when copied?)") from exc
    if not isinstance(data, dict):
        raise InvalidToken("join token: payload is not a JSON object")
    url, ca_hash, secret, expires = data.get("u"), data.get("h"), data.get("s"), data.get("e")
    if not isinstance(url, str) or not url:
        raise InvalidToken("join token: u (plane URL) is missing")
    # The URL is shown on the console for the operator to verify and used to register, so it must
    # be exactly https://host[:port], with no control characters (urlsplit silently drops tab and
    # newline, and keeps ESC).
    at = first_unprintable(url)
    if at is not None:
        raise InvalidToken(
            f"join token: u: control character {describe_char(url[at])} at position {at} "
            "(a value is one line of printable text)"
        )
    try:
        _ = urlsplit(url).port
    except ValueError as exc:
        raise InvalidToken(f"join token: u: bad port in {url!r}") from exc
    try:
        url = validate_plane_url(url)
    except Invalid:
        raise InvalidToken(f"join token: u: plane URL {url!r} must be https://host[:port]") from None
    if not isinstance(ca_hash, str) or not CA_HASH_RE.match(ca_hash):
        raise InvalidToken("join token: h: CA hash must be 'sha256:' and 64 lowercase hex digits")
    if not isinstance(secret, str) or not secret:
        raise InvalidToken("join token: s (secret) is missing")
    if isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0:
        raise InvalidToken("join token: e (expiry) must be a positive unix time")
    return JoinToken(plane_url=url, ca_hash=ca_hash, secret=secret, expires_at=expires)


# ---------------------------------------------------------------- URLs and host names


def ip_no_scope(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address without an IPv6 scope id; ValueError otherwise.

    Python accepts any text after '%' as a scope id, newlines included. The files first boot
    writes apply to the appliance's own link, so a scope id is never needed there.
    """
    if "%" in text:
        raise ValueError("scope id")
    return ipaddress.ip_address(text)


_URL_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def check_url_host(host: str) -> bool:
    """A URL's host: a name of letters, digits, '-', '_' and dots, or an IP address (IPv6 in brackets).

    Looser than a host name setting (a resolver may know names DNS would not): the point is that
    the host is shown to the operator and written to files as the one word it is.
    """
    if host.startswith("[") and host.endswith("]"):
        try:
            return ip_no_scope(host[1:-1]).version == 6
        except ValueError:
            return False
    try:
        ip_no_scope(host)
    except ValueError:
        return len(host) <= 253 and bool(_URL_NAME.fullmatch(host)) and not host.replace(".", "").isdigit()
    return True


def url_host(netloc: str) -> str:
    """The host part of a netloc, as typed (userinfo and port removed, brackets kept)."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def service_url(text: str, scheme: str, problem: str, *, port: bool, userinfo: bool) -> tuple[str, str]:
    """The one rule for a URL the appliance dials (the plane, a proxy): `scheme://host[:port]` and
    nothing after it but a slash; returns (netloc, the URL normalised), or raises Invalid(problem).

    `port`: a port is required; `userinfo`: user:password@ is allowed.
    """
    try:
        parts = urlsplit(text)
        has_port = parts.port is not None
    except ValueError:
        raise Invalid(problem) from None
    if (
        parts.scheme != scheme
        or not parts.hostname
        or (port and not has_port)
        or parts.path.strip("/")
        or parts.query
        or parts.fragment
        or (not userinfo and "@" in parts.netloc)
        or not check_url_host(url_host(parts.netloc))
    ):
        raise Invalid(problem)
    return parts.netloc, urlunsplit((scheme, parts.netloc, "", "", ""))


def validate_plane_url(text: str) -> str:
    """An https URL with a host and optional port, no path (trailing slash dropped); Invalid if not."""
    problem = f"expected an https:// URL like https://plane.example.com:8443, got {text!r}"
    return service_url(text, "https", problem, port=False, userinfo=False)[1]


def valid_reported_hostname(name: str) -> bool:
    """Whether `name` may be sent (gateway) and accepted (plane) as a registering host's name."""
    return _REPORTED_HOSTNAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class ProxyCredentials:
    """An outbound proxy URL split for a client: the URL without userinfo, and the decoded login."""

    url: str  # scheme://host:port, no userinfo
    user: str | None  # None: no userinfo in the URL (no Proxy-Authorization)
    password: str


def proxy_credentials(proxy_url: str) -> ProxyCredentials:
    """Split the userinfo out of a proxy URL (percent-decoded, as HTTP Basic auth sends it)."""
    parts = urlsplit(proxy_url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return ProxyCredentials(proxy_url, None, "")
    user, _, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return ProxyCredentials(bare, unquote(user), unquote(password))

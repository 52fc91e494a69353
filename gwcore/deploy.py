"""The deploy-time settings: every key an OVF property, a seed or the console wizard may set,
declared once in a table (key, label, validator, help, mask) with its validator.

A contract between two lanes: the build offers these keys as OVF properties and checks their
defaults with these validators (appliance.spec), and first boot reads, validates and applies them
(firstboot.settings). Pure and light: the consoles validate as the operator types.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from gwcore.enrol import (
    TOKEN_PREFIX,
    InvalidToken,
    JoinToken,
    parse_token,
    service_url,
    validate_plane_url,
)
from gwcore.errors import Invalid, UserError
from gwcore.redact import describe_char, first_unprintable, mask_url_value


class InvalidSetting(UserError):
    """A deploy-time value that fails its key's rule: `key: problem`, one line (never the secret)."""


class NetworkMode(StrEnum):
    DHCP = "dhcp"
    STATIC = "static"


# ---------------------------------------------------------------- per-field validators
# Each takes the raw string (already stripped, never empty) and returns the normalised value.

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CRYPT = re.compile(
    r"^(\$(1|5|6)\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22,86}"
    r"|\$(y|gy|7)\$[./A-Za-z0-9]+\$[./A-Za-z0-9]+\$[./A-Za-z0-9]{43}"
    r"|\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53})$"
)
_SSH_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _is_hostname(text: str) -> bool:
    # fullmatch: with match(), '$' would also accept a label that ends in a newline.
    return len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in text.rstrip(".").split("."))


def _no_scope(text: str) -> None:
    if "%" in text:
        raise Invalid(
            f"{text!r} has an IPv6 scope id; leave it out (the setting applies to the appliance's own link)"
        )


def validate_join_token(text: str) -> str:
    """A join token `GWJ1.…` as made by `mgmtplane token create`."""
    token_of(text)
    return text


def token_of(text: str) -> JoinToken:
    """The parsed join token (gwcore.enrol.parse_token, the one parser); Invalid if bad."""
    try:
        return parse_token(text)
    except InvalidToken as exc:
        raise Invalid(exc.message.removeprefix("join token: ")) from None


def validate_hostname(text: str) -> str:
    """An RFC 1123 host name (letters, digits and '-', labels of at most 63)."""
    if not _is_hostname(text) or text.replace(".", "").isdigit():
        raise Invalid(
            f"expected a host name of letters, digits and '-' (at most 63 per label) like gw-01, got {text!r}"
        )
    return text.lower().rstrip(".")


def validate_mode(text: str) -> str:
    """dhcp or static."""
    try:
        return NetworkMode(text.lower()).value
    except ValueError:
        raise Invalid(f"expected dhcp or static, got {text!r}") from None


def validate_address(text: str) -> str:
    """An interface address with prefix, like 192.0.2.10/24."""
    problem = f"expected an IPv4/IPv6 address with prefix like 192.0.2.10/24, got {text!r}"
    if "/" not in text:
        raise Invalid(problem)
    _no_scope(text)
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise Invalid(problem) from None
    net = iface.network
    if net.prefixlen < net.max_prefixlen - 1 and iface.ip in (net.network_address, net.broadcast_address):
        raise Invalid(f"{text!r} is the network or broadcast address of {net}; use a host address")
    return str(iface)


def validate_gateway(text: str) -> str:
    """A router IP address."""
    _no_scope(text)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Invalid(f"expected an IPv4/IPv6 address like 192.0.2.1, got {text!r}") from None


def validate_dns(text: str) -> str:
    """Comma-separated IP addresses."""
    out = []
    for item in split_list(text):
        _no_scope(item)
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise Invalid(
                f"expected comma-separated IP addresses like 192.0.2.53,192.0.2.54, got {item!r}"
            ) from None
    return ",".join(out)


def validate_ntp(text: str) -> str:
    """Comma-separated NTP server names or addresses."""
    out = []
    for item in split_list(text):
        _no_scope(item)
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            if not _is_hostname(item):
                raise Invalid(
                    f"expected comma-separated NTP server names or addresses like ntp.example.com, "
                    f"got {item!r}"
                ) from None
            out.append(item.lower())
    return ",".join(out)


def validate_proxy_url(text: str) -> str:
    """An http:// CONNECT proxy URL with a port, optionally with user:password@."""
    shown = mask_url(text)
    problem = f"expected an http:// proxy URL with a port like http://proxy.example.com:3128, got {shown!r}"
    netloc, url = service_url(text, "http", problem, port=True, userinfo=True)
    if " " in netloc:
        raise Invalid(f"{shown!r}: write a space in user or password as %20")
    return url


def validate_ssh_key(text: str) -> str:
    """One OpenSSH public key line: type, base64 blob, optional comment."""
    fields = text.split()
    problem = f"expected one OpenSSH public key like 'ssh-ed25519 AAAAC3Nza... admin@host', got {text[:40]!r}"
    if len(fields) < 2 or fields[0] not in _SSH_TYPES:
        raise Invalid(problem)
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(problem + " (the key data is not base64)") from None
    # The blob starts with the key type as a length-prefixed string: catches pasted-together keys.
    kind = fields[0].encode()
    if blob[4 : 4 + len(kind)] != kind or int.from_bytes(blob[:4], "big") != len(kind):
        raise Invalid(f"the key data does not match its type {fields[0]!r} (a truncated or mangled paste?)")
    return " ".join(fields)


def validate_password_hash(text: str) -> str:
    """A crypt(3) hash ($6$ sha512crypt, $y$ yescrypt, ...), never a plain password."""
    if not _CRYPT.fullmatch(text):
        # Never echo the value: it may be a plain password typed into the wrong field.
        raise Invalid(
            "expected a crypt(3) hash like $6$... or $y$... (make one with `mkpasswd -m yescrypt`), "
            "never a plain password"
        )
    return text


# ---------------------------------------------------------------- the table


def mask_all(text: str) -> str:
    """Mask a whole secret, keeping only its length class."""
    return "********" if text else ""


def mask_token(text: str) -> str:
    """Show the token's prefix only (and nothing of text that is not a token: it may be anything)."""
    if not text:
        return ""
    return f"{TOKEN_PREFIX}********" if text.startswith(TOKEN_PREFIX) else "********"


def mask_url(text: str) -> str:
    """Mask the password part of user:password@ in a URL (up to its last '@')."""
    return mask_url_value(text, "********")


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    validate: Callable[[str], str]
    help: str
    mask: Callable[[str], str] | None = None  # set for secrets
    blind: bool = False  # typed without echo and shown masked, like a password

    @property
    def secret(self) -> bool:
        return self.mask is not None

    @property
    def attr(self) -> str:
        return (
            self.key.replace(".", "_")
            .removeprefix("gateway_")
            .removeprefix("network_")
            .removeprefix("admin_")
        )


# In the order a deployer meets them (the OVF properties follow it): the plane first.
SETTINGS: tuple[Setting, ...] = (
    Setting("gateway.plane_url", "Plane URL", validate_plane_url, "empty = taken from the join token"),
    Setting(
        "gateway.join_token",
        "Join token",
        validate_join_token,
        "GWJ1.... from the management plane",
        mask_token,
        blind=True,
    ),
    Setting("network.hostname", "Host name", validate_hostname, "e.g. gw-01"),
    Setting("network.mode", "Network mode", validate_mode, "dhcp or static"),
    Setting("network.address", "Address/prefix", validate_address, "static only, e.g. 192.0.2.10/24"),
    Setting("network.gateway", "Gateway", validate_gateway, "static only, e.g. 192.0.2.1"),
    Setting("network.dns", "DNS servers", validate_dns, "comma-separated, e.g. 192.0.2.53"),
    Setting("network.ntp", "NTP servers", validate_ntp, "comma-separated; empty = DHCP/distribution default"),
    Setting(
        "proxy.url",
        "Outbound proxy",
        validate_proxy_url,
        "http://[user:pass@]host:port; empty = direct",
        mask_url,
    ),
    Setting(
        "admin.ssh_key", "Admin SSH key", validate_ssh_key, "enables SSH for user admin; empty = SSH off"
    ),
    Setting(
        "admin.password_hash", "Console password hash", validate_password_hash, "crypt(3) hash", mask_all
    ),
)
BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}
KEYS: tuple[str, ...] = tuple(s.key for s in SETTINGS)
REQUIRED: tuple[str, ...] = ("gateway.join_token",)


def check_printable(key: str, text: str) -> None:
    """Every value is one line of printable text: a control character could add a line to a file."""
    at = first_unprintable(text)
    if at is not None:
        # Only the character and its position: the value may be a secret.
        raise InvalidSetting(
            f"{key}: control character {describe_char(text[at])} at position {at} "
            "(a value is one line of printable text)"
        )


def validate_value(key: str, raw: str) -> str:
    """Validate one value; raises InvalidSetting('key: problem')."""
    text = raw.strip()
    check_printable(key, text)
    try:
        return BY_KEY[key].validate(text)
    except Invalid as exc:
        raise InvalidSetting(f"{key}: {exc}") from None


def split_list(text: str) -> list[str]:
    """The items of a comma-separated value, stripped, empty ones dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def masked(key: str, value: str) -> str:
    """The value as plan/review screens may show it."""
    mask = BY_KEY[key].mask
    return mask(value) if mask else value

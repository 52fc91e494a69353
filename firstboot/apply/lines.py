"""Defence in depth for the writers: a value goes into a config file only as the one token or line it is.

The settings layer already refuses control characters and scope ids (firstboot.settings); these
checks catch a Settings built some other way (a bug, a future caller) before a file gains a line,
a section or a field from a value.
"""

from __future__ import annotations

from firstboot.errors import FirstbootError
from gwcore.redact import describe_char, first_unprintable

# '\' ends a line with a continuation in systemd's files; '#' starts a comment in /etc/hosts.
_NOT_IN_TOKEN = "\\#"


def _refuse(key: str, what: str) -> FirstbootError:
    return FirstbootError(f"{key}: refusing to write a value with {what} into a config file")


def one_line(key: str, value: str) -> str:
    """The value if it is one line of printable text without a trailing continuation; else an error."""
    at = first_unprintable(value)
    if at is not None:
        raise _refuse(key, f"the control character {describe_char(value[at])}")
    if value.endswith("\\"):
        raise _refuse(key, "a trailing backslash")
    return value


def token(key: str, value: str, *, forbidden: str = "") -> str:
    """The value if it is one non-empty token (no spaces, no '\\' or '#', none of `forbidden`)."""
    one_line(key, value)
    if not value:
        raise _refuse(key, "nothing in it")
    for ch in value:
        if ch.isspace() or ch in _NOT_IN_TOKEN or ch in forbidden:
            raise _refuse(key, f"{ch!r}")
    return value

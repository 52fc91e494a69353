"""Pure text hygiene for settings, the wizard and the support bundle: URL passwords, control
characters, and the support bundle's structured redaction (secret keys, join tokens)."""

from __future__ import annotations

import re
import unicodedata

# scheme://user:PASSWORD@host. A password may hold '@', ':' and, typed unencoded, '/', '?' or '#':
# the userinfo therefore ends at the LAST '@', never the first. In free text a URL ends at
# whitespace; a value known to be one URL ends at the end of the string. The user part stops at
# ':' or '/', so "http://proxy:3128/a@b" is redacted too: over-redaction is the safe side.
_SCHEME_USER = r"([a-z][a-z0-9+.-]*://[^\s:/]*)"
_IN_TEXT = re.compile(_SCHEME_USER + r":\S*@", re.IGNORECASE)
_WHOLE = re.compile(r"^(\s*" + _SCHEME_USER + r"):.*@", re.IGNORECASE | re.DOTALL)


def mask_url_passwords(text: str, replacement: str) -> str:
    """Replace the password of every scheme://user:password@ URL in free text (pure)."""
    return _IN_TEXT.sub(lambda m: f"{m.group(1)}:{replacement}@", text)


def mask_url_value(value: str, replacement: str) -> str:
    """Like mask_url_passwords, for a value that is (or starts with) one URL, whitespace and all."""
    match = _WHOLE.match(value)
    if match is None:
        return mask_url_passwords(value, replacement)
    return f"{match.group(1)}:{replacement}@" + mask_url_passwords(value[match.end() :], replacement)


def first_unprintable(text: str) -> int | None:
    """Index of the first character that is not printable text (controls, line and paragraph
    separators, format characters such as bidi overrides, unassigned code points); None if clean.

    A plain space is printable; other spaces (NBSP, ...) are not, as they are easy to mistake.
    """
    for i, ch in enumerate(text):
        if ch != " " and not ch.isprintable():
            return i
    return None


def describe_char(ch: str) -> str:
    """A control character as an operator can read it: '\\n' or U+2028 (LINE SEPARATOR)."""
    shown = repr(ch)[1:-1]
    if shown != ch and shown.startswith("\\") and len(shown) <= 4:
        return f"'{shown}'"
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')})"


def printable(text: str) -> str:
    """The text with every unprintable character escaped, safe to put on a terminal or in one line."""
    if first_unprintable(text) is None:
        return text
    return "".join(ch if ch == " " or ch.isprintable() else repr(ch)[1:-1] for ch in text)


# --- structured redaction: the support bundle's one rule, shared by first boot's console and the
# gateway (docs/firstboot.md "support bundle"). Pure, like cloud-init's redact_sensitive_keys().

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(pass|secret|token|key|hash|authorization|cookie)", re.IGNORECASE)
_JOIN_TOKEN = re.compile(r"GWJ1\.[A-Za-z0-9_-]+")


def redact_text(text: str) -> str:
    """Redact URL passwords (up to the last '@' of each URL) and join tokens in free text."""
    return _JOIN_TOKEN.sub("GWJ1." + REDACTED, mask_url_passwords(text, REDACTED))


def redact_value(value: str) -> str:
    """Redact one structured value: a value that starts with a URL is that URL, spaces and all."""
    return _JOIN_TOKEN.sub("GWJ1." + REDACTED, mask_url_value(value, REDACTED))


def redact(data: object) -> object:
    """Redact values under secret-looking keys, recursively, and URL passwords and tokens in strings."""
    if isinstance(data, dict):
        return {
            k: REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, str):
        return redact_value(data)
    return data


def redact_file(name: str, raw: bytes) -> bytes:
    """Redact a file by its format: YAML and JSON structurally, everything else as text."""
    import json

    from gwcore.safeload import loads_json, loads_yaml  # the parsers only when a file is redacted

    text = raw.decode("utf-8", "replace")
    try:
        if name.endswith(".json"):
            return (json.dumps(redact(loads_json(text)), indent=2) + "\n").encode()
        if name.endswith((".yaml", ".yml")):
            import yaml  # here: the support bundle is rare, and PyYAML is slow to import

            return yaml.safe_dump(redact(loads_yaml(text)), sort_keys=False).encode()
    except (ValueError, RecursionError):  # ParseError; RecursionError: deeper than redact() goes
        pass
    return redact_text(text).encode()

"""The wizard's model (pure): screens, their fields, per-screen validation and the answers file."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firstboot.errors import FirstbootError, Reason
from firstboot.settings import Settings, build, check_cross
from gwcore.deploy import BY_KEY, KEYS, InvalidSetting, NetworkMode, masked, token_of, validate_value
from gwcore.redact import describe_char, first_unprintable
from gwcore.safeload import ParseError, loads_yaml

PASSWORD = "admin.password"  # typed at the console, turned into admin.password_hash
PASSWORD2 = "admin.password2"
MIN_PASSWORD = 8


@dataclass(frozen=True)
class Field:
    key: str
    label: str
    help: str
    secret_input: bool = False  # typed blind and never shown (passwords: each screen starts empty)
    masked: bool = False  # typed blind and shown masked, but the value is kept (the join token)

    @property
    def blind(self) -> bool:
        return self.secret_input or self.masked


def _f(key: str) -> Field:
    s = BY_KEY[key]
    return Field(key, s.label, s.help, masked=s.blind)


@dataclass(frozen=True)
class Screen:
    name: str
    title: str
    fields: tuple[Field, ...] = ()


SCREENS: tuple[Screen, ...] = (
    Screen("welcome", "Welcome"),
    Screen(
        "network",
        "Network",
        tuple(_f(k) for k in ("network.mode", "network.address", "network.gateway", "network.dns")),
    ),
    Screen("host", "Host name and time", (_f("network.hostname"), _f("network.ntp"))),
    Screen("proxy", "Outbound proxy", (_f("proxy.url"),)),
    Screen("plane", "Management plane", (_f("gateway.join_token"), _f("gateway.plane_url"))),
    Screen(
        "admin",
        "Admin access",
        (
            _f("admin.ssh_key"),
            Field(PASSWORD, "Console password", "at least 8 characters; empty = keep/none", True),
            Field(PASSWORD2, "Repeat password", "", True),
        ),
    ),
    Screen("review", "Review"),
    Screen("apply", "Apply"),
)
BY_NAME: Mapping[str, Screen] = {s.name: s for s in SCREENS}
ANSWER_EXTRAS = (PASSWORD, "confirm_network")


@dataclass
class WizardModel:
    """Values by key (raw strings) and where each came from (seed name or 'wizard')."""

    values: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    version: str = "unknown"
    last_error: str | None = None
    last_reason: Reason = Reason.OTHER

    def entries(self, screen: Screen) -> dict[str, str]:
        """Current values of a screen's fields (passwords always start empty)."""
        out = {f.key: self.values.get(f.key, "") for f in screen.fields}
        if "network.mode" in out and not out["network.mode"]:
            out["network.mode"] = NetworkMode.DHCP.value
        return out

    def validate(self, screen: Screen, entries: Mapping[str, str]) -> dict[str, str]:
        """Inline messages by field key; empty when the screen is good (validate_<field> + cross rules)."""
        errors: dict[str, str] = {}
        good: dict[str, str] = {}
        for f in screen.fields:
            raw = entries.get(f.key, "").strip()
            if f.key in BY_KEY and raw:
                try:
                    good[f.key] = validate_value(f.key, raw)
                except InvalidSetting as exc:
                    errors[f.key] = str(exc)
        if screen.name == "network" and not errors:
            if good.get("network.mode") != NetworkMode.STATIC:
                good.pop("network.address", None)
                good.pop("network.gateway", None)
            errors.update(_by_key(check_cross(good)))
        if screen.name == "plane" and not errors:
            if "gateway.join_token" not in good:
                errors["gateway.join_token"] = "gateway.join_token: required: paste the token from the plane"
            else:
                # A plane URL given alongside the token (seed or typed) must be the token's own.
                errors.update(_by_key(check_cross(good)))
        if screen.name == "admin":
            pw, pw2 = entries.get(PASSWORD, ""), entries.get(PASSWORD2, "")
            bad = first_unprintable(pw)
            if bad is not None:
                # openssl reads the password up to a line break: the hash would be of a prefix.
                errors[PASSWORD] = f"{PASSWORD}: control character {describe_char(pw[bad])} in the password"
            elif pw and len(pw) < MIN_PASSWORD:
                errors[PASSWORD] = f"{PASSWORD}: use at least {MIN_PASSWORD} characters"
            elif pw != pw2:
                errors[PASSWORD2] = f"{PASSWORD}: the two passwords differ"
        return errors

    def store(self, screen: Screen, entries: Mapping[str, str]) -> None:
        """Keep a validated screen's values (empty = unset); passwords are hashed by the flow, not here."""
        for f in screen.fields:
            if f.key not in BY_KEY:
                continue
            raw = entries.get(f.key, "").strip()
            static = entries.get("network.mode", "").strip().lower() == NetworkMode.STATIC
            if screen.name == "network" and f.key in ("network.address", "network.gateway") and not static:
                raw = ""
            old = self.values.get(f.key, "")
            if raw:
                self.values[f.key] = validate_value(f.key, raw)
            else:
                self.values.pop(f.key, None)
            if self.values.get(f.key, "") != old:
                self.sources[f.key] = "wizard"

    def settings(self) -> Settings:
        """The complete, cross-checked settings."""
        return build(self.values, self.sources)

    def review_rows(self) -> list[tuple[str, str, str]]:
        """(label, masked value, source) for the review screen."""
        settings = self.settings()
        raw = settings.raw()
        rows = []
        for key in KEYS:
            if key in raw:
                rows.append((BY_KEY[key].label, masked(key, raw[key]), settings.sources.get(key, "wizard")))
            if key == "gateway.plane_url":
                # What registration will pin, in full, for the operator to compare with the plane's.
                rows.append(("Plane CA (pinned)", token_of(settings.join_token).ca_hash, "join-token"))
        if "admin.ssh_key" not in raw:
            rows.append(("SSH", "off (no key)", ""))
        return rows


def plane_summary(token_text: str, now: float | None = None) -> tuple[bool, str]:
    """(ok, line) describing what a pasted token points at, for the plane screen (pure but for the clock)."""
    try:
        tok = token_of(token_text.strip())
    except ValueError:
        return False, "Plane: (paste the join token from the management plane)"
    line = f"Plane: {tok.plane_url}   CA {tok.ca_hash[:23]}..."
    when = time.time() if now is None else now
    if tok.expires_at <= when:
        # Only a warning: before NTP the clock may be wrong; the plane has the last word.
        return False, line + "   EXPIRED by this appliance's clock (check the time)"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(tok.expires_at))
    return True, f"{line}   valid until {stamp}"


def _by_key(problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for problem in problems:
        key = problem.split(":", 1)[0]
        out.setdefault(key, problem)
    return out


@dataclass(frozen=True)
class Answers:
    """An answers file: values for screens, plus confirm_network (try-and-revert) and admin.password."""

    values: Mapping[str, str]
    confirm_network: bool = True


def load_answers(path: Path) -> Answers:
    """Read an answers YAML (flat setting keys); unknown keys are errors."""
    try:
        data: Any = loads_yaml(path.read_text())
    except OSError as exc:
        raise FirstbootError(f"{path}: cannot read: {exc.strerror}") from None
    except ParseError as exc:
        where = f":{exc.line}" if exc.line is not None else ""
        raise FirstbootError(f"{path}{where}: not valid YAML: {exc.reason}") from None
    except UnicodeDecodeError:
        raise FirstbootError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise FirstbootError(f"{path}: expected a mapping of setting keys to values")
    values: dict[str, str] = {}
    confirm = True
    for key, value in data.items():
        if key == "confirm_network":
            if not isinstance(value, bool):
                raise FirstbootError(f"{path}: confirm_network: expected true or false, got {value!r}")
            confirm = value
        elif key in KEYS or key == PASSWORD:
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise FirstbootError(f"{path}: {key}: expected a string, got {value!r}")
            values[str(key)] = str(value)
        else:
            raise FirstbootError(f"{path}: {key}: unknown key (known: {', '.join((*KEYS, *ANSWER_EXTRAS))})")
    return Answers(values, confirm)

"""Settings declared once, in tables: the project's one settings and validation mechanism.

A table is a sequence of Setting entries (key, parser, default, help). `section(cls, table)` makes
the parser of a mapping whose keys are exactly the table's; it fills in defaults, refuses unknown
keys (with a did-you-mean) and builds a frozen dataclass. Parsers take (value, dotted path) and
raise InvalidAt(path, problem); the loader prefixes the file name, so every error is one line:
`file: key.path: problem`. The tables also drive help and summaries (appliance.spec). Used by
appliance.yaml (appliance.spec) and gateway.yaml (gateway.config). Pure: no I/O.

(pydantic v2 was measured for this role and not taken: docs/architecture.md.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar


class InvalidAt(Exception):
    """A problem at a dotted key path; the loader prefixes the file name."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


Parser = Callable[[object, str], Any]
StrParser = Callable[[object, str], str]
REQUIRED: Any = object()  # a Setting's default: the key must be given
CLASS_DEFAULT: Any = object()  # a Setting's default: the dataclass field's own default applies


def show(value: object) -> str:
    """A value as the user wrote it in YAML, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(lo: int, hi: int | None = None) -> Parser:
    def parse(value: object, path: str) -> int:
        # bool is an int in Python but `true` is never a sensible core count.
        in_range = isinstance(value, int) and value >= lo and (hi is None or value <= hi)
        if in_range and not isinstance(value, bool):
            return value  # type: ignore[return-value]
        want = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
        raise InvalidAt(path, f"expected {want}, got {show(value)}")

    return parse


def boolean(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidAt(path, f"expected true or false, got {show(value)}")


def string(pattern: str | None = None, what: str = "a string", max_len: int = 1024) -> StrParser:
    regex = re.compile(pattern) if pattern else None

    def parse(value: object, path: str) -> str:
        if isinstance(value, str) and len(value) <= max_len and (regex is None or regex.fullmatch(value)):
            return value
        if not isinstance(value, str) and what != "a string":
            # e.g. `version: 1.0` is read by YAML as a float: say how to fix it.
            raise InvalidAt(path, f"expected {what} (quote it), got {show(value)}")
        raise InvalidAt(path, f"expected {what}, got {show(value)}")

    return parse


E = TypeVar("E", bound=StrEnum)


def enum(cls: type[E]) -> Parser:
    def parse(value: object, path: str) -> E:
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        choices = ", ".join(member.value for member in cls)
        raise InvalidAt(path, f"expected one of {choices}, got {show(value)}")

    return parse


def list_of(item: Parser) -> Parser:
    def parse(value: object, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise InvalidAt(path, f"expected a list, got {show(value)}")
        return tuple(item(entry, f"{path}[{index}]") for index, entry in enumerate(value))

    return parse


@dataclass(frozen=True)
class Setting:
    """One setting: its key, parser, raw YAML default (`REQUIRED` if none, `CLASS_DEFAULT` for the
    dataclass's) and help text."""

    key: str
    parse: Parser
    default: Any
    help: str


def section(cls: Callable[..., Any], table: Sequence[Setting], noun: str = "key") -> Parser:
    """A parser for a mapping whose keys are exactly the table's (an unknown one is an `unknown <noun>`)."""

    def parse(value: object, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise InvalidAt(path or "(top level)", f"expected a mapping, got {show(value)}")
        known = {setting.key for setting in table}
        for key in value:
            if key not in known:
                name = str(key) if str(key).isprintable() and str(key).strip() else repr(key)
                where = f"{path}.{name}" if path else name
                import difflib  # only on this error path: 0.6 MiB the gateway would keep for ever

                near = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f", did you mean '{near[0]}'?" if near else f" (known: {', '.join(sorted(known))})"
                raise InvalidAt(where, f"unknown {noun}{hint}")
        values: dict[str, Any] = {}
        for setting in table:
            where = f"{path}.{setting.key}" if path else setting.key
            if setting.key in value:
                values[setting.key] = setting.parse(value[setting.key], where)
            elif setting.default is REQUIRED:
                raise InvalidAt(where, "missing (required)")
            elif setting.default is not CLASS_DEFAULT:
                values[setting.key] = setting.parse(setting.default, where)
        return cls(**values)

    return parse

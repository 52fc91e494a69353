"""Parsing JSON and YAML from outside: every failure is a ParseError (a ValueError) with a one-line reason.

`json` and PyYAML raise RecursionError on deeply nested input (a few thousand brackets are
enough). That escapes the usual `except ValueError` and `except yaml.YAMLError`, and a config
file, a join token or a request body would end in a traceback instead of an error message.
Pure: no I/O except `read_yaml_file`, which reads one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError

if TYPE_CHECKING:
    import yaml

TOO_DEEP = "nested too deeply"


class ParseError(ValueError):
    """Malformed input. str() is the one-line reason; `line` is 1-based, when it is known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def loads_json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise ParseError(TOO_DEEP) from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes
        lines = str(exc).splitlines()
        raise ParseError(lines[0] if lines else "invalid JSON") from None


def _yaml_error(exc: yaml.YAMLError) -> ParseError:
    mark = getattr(exc, "problem_mark", None)
    lines = (getattr(exc, "problem", None) or str(exc)).splitlines()
    return ParseError(lines[0] if lines else "invalid YAML", mark.line + 1 if mark is not None else None)


def loads_yaml(text: str) -> Any:
    """yaml.safe_load."""
    import yaml  # here: most users of this module read only JSON, and PyYAML is slow to import

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    except RecursionError:
        raise ParseError(TOO_DEEP) from None


def compose_yaml(text: str) -> yaml.Node | None:
    """yaml.compose with the safe loader: the node tree, with line numbers."""
    import yaml

    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    except RecursionError:
        raise ParseError(TOO_DEEP) from None
    return node


def read_yaml_file(path: Path, missing_hint: str | None = None) -> Any:
    """The parsed contents of a YAML file; a GatewayError `path[:line]: problem` otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GatewayError(f"{path}: file not found", missing_hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayError(f"{path}: cannot read: {exc}") from None
    try:
        return loads_yaml(text)
    except ParseError as exc:
        where = f":{exc.line}" if exc.line is not None else ""
        raise GatewayError(f"{path}{where}: {exc.reason}") from None

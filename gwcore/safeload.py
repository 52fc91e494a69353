"""Parsing JSON and YAML from outside: every failure is a ParseError (a ValueError) with a one-line reason.

Duplicate keys are refused in both, at every depth: `json` and PyYAML silently keep the last
one, so a second `plane_url:` in gateway.yaml or a repeated key in a target would override the
first without a word. This is the project's one loader; nothing else calls yaml.safe_load.

`json` and PyYAML raise RecursionError on deeply nested input (a few thousand brackets are
enough). That escapes the usual `except ValueError` and `except yaml.YAMLError`, and a config
file, a join token or a request body would end in a traceback instead of an error message.
Pure: no I/O except `read_yaml_file`, which reads one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gwcore.errors import UserError

if TYPE_CHECKING:
    import yaml

TOO_DEEP = "nested too deeply"


class ParseError(ValueError):
    """Malformed input. str() is the one-line reason; `line` is 1-based, when it is known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def loads_json(data: str | bytes) -> Any:
    """json.loads, refusing duplicate keys."""
    try:
        return json.loads(data, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        raise ParseError(f"duplicate key {exc.key!r}") from None
    except RecursionError:
        raise ParseError(TOO_DEEP) from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes
        lines = str(exc).splitlines()
        raise ParseError(lines[0] if lines else "invalid JSON") from None


def _yaml_error(exc: yaml.YAMLError) -> ParseError:
    mark = getattr(exc, "problem_mark", None)
    lines = (getattr(exc, "problem", None) or str(exc)).splitlines()
    return ParseError(lines[0] if lines else "invalid YAML", mark.line + 1 if mark is not None else None)


def _strict_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that refuses duplicate keys (made once, on first use: PyYAML loads lazily)."""
    global _STRICT_LOADER
    if _STRICT_LOADER is None:
        import yaml

        class StrictLoader(yaml.SafeLoader):
            pass

        def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _value in node.value:
                key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
                if key in seen:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                    )
                seen.add(key)
            return loader.construct_mapping(node)

        StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
        _STRICT_LOADER = StrictLoader
    return _STRICT_LOADER


_STRICT_LOADER: type[yaml.SafeLoader] | None = None


def loads_yaml(text: str) -> Any:
    """yaml.safe_load, refusing duplicate keys."""
    import yaml  # here: most users of this module read only JSON, and PyYAML is slow to import

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
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


def read_yaml_file(path: Path, missing_hint: str | None = None, error: type[UserError] = UserError) -> Any:
    """The parsed contents of a YAML file; `error` (the caller's package error) `path[:line]: problem`
    otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found", missing_hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from None
    try:
        return loads_yaml(text)
    except ParseError as exc:
        where = f":{exc.line}" if exc.line is not None else ""
        raise error(f"{path}{where}: {exc.reason}") from None

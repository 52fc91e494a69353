"""The allowlist path syntax (`servers[].id`, `*`, `**`) and its compiled trie, shared by JSON and XML."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A parsed step: a key name, WILD (any one key), ITEMS (every element of an array) or SUBTREE (all below).
WILD = "\x00*"
ITEMS = "\x00[]"
SUBTREE = "\x00**"


class PathSyntaxError(ValueError):
    """A path that does not follow the documented syntax."""


class Node:
    """One level of the compiled allowlist: which keys, array items and leaves are allowed here."""

    __slots__ = ("items", "keys", "leaf", "subtree", "wild")

    def __init__(self) -> None:
        self.keys: dict[str, Node] = {}
        self.wild: Node | None = None
        self.items: Node | None = None
        self.leaf = False
        self.subtree = False

    def child(self, key: str) -> Node | None:
        """The node for object key `key`, or None when the key is not allowed."""
        return self.keys.get(key, self.wild)

    def allows(self, steps: Sequence[str | int]) -> bool:
        """Whether the concrete path (keys as str, array indexes as int) reaches an allowed leaf."""
        node: Node | None = self
        for step in steps:
            if node is None:
                return False
            if node.subtree:
                return True
            node = node.items if isinstance(step, int) else node.child(step)
        return node is not None and (node.leaf or node.subtree)


def parse_json_path(text: str) -> list[str]:
    """Parse `a.b[].c`, `*`, `"odd.key"`, trailing `**` into steps; raise PathSyntaxError."""
    steps: list[str] = []
    i, n = 0, len(text)
    if not text or text != text.strip():
        raise PathSyntaxError("empty path or surrounding spaces")
    expect_segment = True
    while i < n:
        if not expect_segment:
            if text[i] != ".":
                raise PathSyntaxError(f"expected '.' at column {i + 1}")
            i += 1
            if i >= n:
                raise PathSyntaxError("path ends with '.'")
        expect_segment = False
        if text.startswith("**", i):
            steps.append(SUBTREE)
            i += 2
            if i != n:
                raise PathSyntaxError("'**' must be the last segment")
            break
        if text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0 or end == i + 1:
                raise PathSyntaxError(f"unterminated or empty quoted key at column {i + 1}")
            steps.append(text[i + 1 : end])
            i = end + 1
        elif text[i] == "*":
            steps.append(WILD)
            i += 1
        elif text[i] == "[":
            if steps:
                raise PathSyntaxError(f"'[]' must follow a key at column {i + 1}")
        else:
            start = i
            while i < n and text[i] not in '.[]"*' and not text[i].isspace():
                i += 1
            if i == start:
                raise PathSyntaxError(f"unexpected {text[i]!r} at column {i + 1}")
            steps.append(text[start:i])
        while text.startswith("[]", i):
            steps.append(ITEMS)
            i += 2
        if i < n and text[i] not in ".":
            raise PathSyntaxError(f"unexpected {text[i]!r} at column {i + 1}")
    return steps


def parse_slash_path(text: str) -> list[str]:
    """Parse an XML element path `Envelope/Body/*/returnval` (local names, `*`, trailing `**`)."""
    if not text or text != text.strip():
        raise PathSyntaxError("empty path or surrounding spaces")
    steps: list[str] = []
    parts = text.split("/")
    for pos, part in enumerate(parts):
        if part == "**":
            if pos != len(parts) - 1:
                raise PathSyntaxError("'**' must be the last segment")
            steps.append(SUBTREE)
        elif part == "*":
            steps.append(WILD)
        elif not part or any(c in part for c in ' *[]"<>&') or ":" in part:
            raise PathSyntaxError(f"bad element name {part!r} (use local names without prefixes)")
        else:
            steps.append(part)
    return steps


def _insert(root: Node, steps: Sequence[str]) -> None:
    node = root
    for step in steps:
        if step == SUBTREE:
            node.subtree = True
            return
        if step == ITEMS:
            node.items = node.items or Node()
            node = node.items
        elif step == WILD:
            node.wild = node.wild or Node()
            node = node.wild
        else:
            node = node.keys.setdefault(step, Node())
    node.leaf = True


def _merge_into(dst: Node, src: Node) -> None:
    dst.leaf = dst.leaf or src.leaf
    dst.subtree = dst.subtree or src.subtree
    for key, sub in src.keys.items():
        _merge_into(dst.keys.setdefault(key, Node()), sub)
    if src.wild is not None:
        dst.wild = dst.wild or Node()
        _merge_into(dst.wild, src.wild)
    if src.items is not None:
        dst.items = dst.items or Node()
        _merge_into(dst.items, src.items)


def _finalize(node: Node) -> None:
    # Fold the wildcard into every named sibling so a lookup is one dict.get, not a merge per value.
    if node.wild is not None:
        for sub in node.keys.values():
            _merge_into(sub, node.wild)
        _finalize(node.wild)
    for sub in node.keys.values():
        _finalize(sub)
    if node.items is not None:
        _finalize(node.items)


@dataclass(frozen=True)
class Allowlist:
    """A compiled set of allowed paths (the source strings are kept for display)."""

    paths: tuple[str, ...]
    root: Node


def compile_paths(paths: Iterable[str], *, slash: bool = False) -> Allowlist:
    """Compile path strings into an Allowlist; raise PathSyntaxError naming the bad path."""
    root = Node()
    kept: list[str] = []
    for text in paths:
        try:
            steps = parse_slash_path(text) if slash else parse_json_path(text)
        except PathSyntaxError as exc:
            raise PathSyntaxError(f"path {text!r}: {exc}") from None
        _insert(root, steps)
        kept.append(text)
    _finalize(root)
    return Allowlist(tuple(kept), root)

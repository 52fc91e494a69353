"""Appliance versions, as the spec writes them (0.1.0, 1.2, 1.0.0~rc1, 1.0.0-2), and their order.

Pure. Numeric parts compare as numbers, so 0.10.0 > 0.9.0 and 1.0 == 1.0.0. After them a suffix
decides: `~...` is a pre-release and sorts before the plain version (Debian's rule), `-...` or
`+...` is a later build of it and sorts after; two suffixes of one kind compare as text.
"""

from __future__ import annotations

import re
from functools import total_ordering

from updater.errors import UpdateError

_VERSION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)*)(?:([-+~])([0-9A-Za-z.+~]+))?")
# Rank of the suffix kinds: pre-release < release < later build.
_RANK = {"~": 0, "": 1, "-": 2, "+": 2}


@total_ordering
class Version:
    """A parsed appliance version; compares by the rules above."""

    def __init__(self, text: str) -> None:
        match = _VERSION_RE.fullmatch(text.strip())
        if not match:
            raise UpdateError(f"not a version: {text!r} (expected e.g. 0.2.0, 1.0.0~rc1 or 1.0.0-2)")
        numbers = [int(part) for part in match.group(1).split(".")]
        while len(numbers) > 1 and numbers[-1] == 0:
            numbers.pop()
        self.text = text.strip()
        self._key = (tuple(numbers), _RANK[match.group(2) or ""], match.group(3) or "")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key == other._key

    def __lt__(self, other: Version) -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

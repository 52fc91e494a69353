"""Nested, timed build steps, in the manner of mkosi's complete_step()."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
log = logging.getLogger("appliance")


def setup_logging(debug: bool) -> None:
    """Log build steps to stderr; debug also shows every command run."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


@contextmanager
def complete_step(text: str) -> Iterator[None]:
    """Log `text`, run the block indented one level deeper, then log how long it took."""
    global _depth
    indent = "  " * _depth
    log.info("%s‣ %s", indent, text)
    start = time.monotonic()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    log.info("%s  done in %.1fs", indent, time.monotonic() - start)

"""`firstboot wizard`: pick the view (urwid or line mode) and wire model, flow and system together."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    """Register `firstboot wizard`."""
    p = sub.add_parser("wizard", help="the console wizard")
    p.set_defaults(func=lambda args: 0)

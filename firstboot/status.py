"""The status console on tty1 after first boot."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    """Register `firstboot status`."""
    p = sub.add_parser("status", help="the status console")
    p.set_defaults(func=lambda args: 0)

"""The management plane package's one error base."""

from __future__ import annotations

from gwcore.errors import UserError


class PlaneError(UserError):
    """A plane failure a user can act on (message and hint, printed on one line)."""

"""The appliance package's one error base."""

from __future__ import annotations

from gwcore.errors import UserError


class ApplianceError(UserError):
    """A build failure a user can act on (message and hint, printed on one line)."""

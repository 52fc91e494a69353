"""The management plane package's one error base."""

from __future__ import annotations

from gateway.errors import GatewayError


class PlaneError(GatewayError):
    """A plane failure a user can act on (message and hint, printed on one line)."""

"""The one error base of the project: each package's own base (ApplianceError, GatewayError,
FirstbootError, PlaneError) subclasses it, so every CLI ends the same way (gwcore.cli)."""

from __future__ import annotations


class UserError(Exception):
    """A failure a user can act on: a message and an optional hint, printed on one line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class Invalid(ValueError):
    """A value that breaks a rule, said as the problem alone: the caller prefixes the key or field."""

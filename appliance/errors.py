"""The appliance package's one error base."""

from __future__ import annotations


class ApplianceError(Exception):
    """A failure a user can act on: a message and an optional hint, printed on one line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"

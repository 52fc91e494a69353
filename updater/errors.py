"""The updater's one error base."""

from __future__ import annotations


class UpdateError(Exception):
    """A refusal or failure, as one line that says what and why (the journal and the agent show it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

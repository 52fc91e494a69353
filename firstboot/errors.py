"""The firstboot package's one error base, and the reason codes the consoles explain."""

from __future__ import annotations

from enum import StrEnum

from gwcore.errors import UserError


class Reason(StrEnum):
    """Why a step (registration above all) failed, as a code: the consoles explain the code, never
    the English of the message (wizard.flow.explain)."""

    INTERCEPTED = "intercepted"  # the plane's CA does not match the token's pin, or TLS fails against it
    TOKEN = "token"  # the plane says the token is unknown, used or expired
    PROXY_AUTH = "proxy-auth"  # the proxy wants credentials (HTTP 407)
    PROXY = "proxy"  # the proxy is unreachable or refuses the connection (or the credentials, as 401)
    DNS = "dns"  # a host name does not resolve
    UNREACHABLE = "unreachable"  # no route, refused, or no answer in time
    OTHER = "other"


class FirstbootError(UserError):
    """A first-boot failure a user can act on (message and hint, printed on one line), with a reason code."""

    def __init__(self, message: str, hint: str | None = None, reason: Reason = Reason.OTHER) -> None:
        super().__init__(message, hint)
        self.reason = reason

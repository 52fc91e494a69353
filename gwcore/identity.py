"""The identity messages of the tunnel (docs/protocol.md §13.1), written once for both ends.

Certificate renewal (`renew` / `renewed`), CA rollover (`ca-update`) and revocation (`revoked`)
travel as CONTROL messages. This module builds and checks their JSON; it is pure and imports no
cryptography: certificates cross it as PEM text, and each end parses them with its own rules.
The hub's refusal codes for a gateway's certificate (`Tunnel-Error`, §1) are here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gwcore.errors import UserError

Message = dict[str, object]

VERSION = 1

# Message types.
RENEW = "renew"  # gateway -> plane, request
RENEWED = "renewed"  # its reply
CA_UPDATE = "ca-update"  # plane -> gateway, one-way
REVOKED = "revoked"  # plane -> gateway, one-way, just before the plane closes the tunnel

# Error codes of a `renew` request (besides control's own: unknown-type, busy, internal).
BAD_CSR = "bad-csr"
RATE_LIMITED = "rate-limited"
REVOKED_ERROR = "revoked"
UNSUPPORTED_VERSION = "unsupported-version"
BAD_MESSAGE = "bad-request"

# Why the plane revoked a gateway (`revoked.reason`).
REASON_REVOKED = "revoked"
REASON_DELETED = "deleted"
REASONS = frozenset({REASON_REVOKED, REASON_DELETED})

# The hub's 403 codes about a gateway's certificate (Tunnel-Error, docs/protocol.md §1).
GATEWAY_UNKNOWN = "gateway-unknown"
GATEWAY_REVOKED = "gateway-revoked"
GATEWAY_DELETED = "gateway-deleted"
CERTIFICATE_SUPERSEDED = "certificate-superseded"

# One PEM certificate or CSR is well under 4 KiB; the bounds keep a message far below the
# 64 KiB CONTROL limit whatever a peer sends.
MAX_PEM = 16 * 1024
MAX_CAS = 4
MAX_TEXT = 512
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----\r?\n[A-Za-z0-9+/=\r\n]+-----END \1-----\r?\n?")
_SPKI_HASH = re.compile(r"sha256:[0-9a-f]{64}")


class MessageError(UserError):
    """An identity message that does not follow §13.1; `code` is the error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _version(message: Message) -> None:
    v = message.get("v", VERSION)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MessageError(BAD_MESSAGE, f"{message.get('type')}: v must be an integer")
    if v != VERSION:
        raise MessageError(UNSUPPORTED_VERSION, f"{message.get('type')}: version {v} (this side speaks 1)")


def _pem(message: Message, key: str, kind: str) -> str:
    value = message.get(key)
    match = _PEM.fullmatch(value.strip() + "\n") if isinstance(value, str) and len(value) <= MAX_PEM else None
    if match is None or match.group(1) != kind:
        raise MessageError(BAD_MESSAGE, f"{message.get('type')}: {key} must be one PEM {kind}")
    return str(value)


def _pems(message: Message, key: str, *, required: bool) -> tuple[str, ...]:
    value = message.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_CAS or (required and not value):
        raise MessageError(BAD_MESSAGE, f"{message.get('type')}: {key} must be a list of 1 to {MAX_CAS} PEM")
    return tuple(_pem({"type": message.get("type"), key: v}, key, "CERTIFICATE") for v in value)


def _text(value: object, limit: int = MAX_TEXT) -> str:
    return value[:limit] if isinstance(value, str) else ""


# --- renew -----------------------------------------------------------------------------------------


def renew_request(csr_pem: str) -> Message:
    """The gateway's request for a new certificate (the channel adds the id)."""
    return {"type": RENEW, "v": VERSION, "csr": csr_pem}


def parse_renew_request(message: Message) -> str:
    """The CSR of a `renew` request; MessageError (bad-request, unsupported-version) otherwise."""
    _version(message)
    return _pem(message, "csr", "CERTIFICATE REQUEST")


def renewed_reply(cert_pem: str, not_after: float) -> Message:
    """The plane's answer to `renew`: the new certificate."""
    return {"type": RENEWED, "v": VERSION, "certificate": cert_pem, "not_after": int(not_after)}


def parse_renewed(message: Message) -> str:
    """The certificate of a `renewed` reply (its claims are checked against the certificate itself)."""
    if message.get("type") != RENEWED:
        raise MessageError(BAD_MESSAGE, f"expected a {RENEWED} reply, got {str(message.get('type'))[:40]!r}")
    _version(message)
    return _pem(message, "certificate", "CERTIFICATE")


# --- ca-update -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaUpdate:
    """The CAs the plane asks the gateway to trust from now on, and the proofs for new ones."""

    cas: tuple[str, ...]  # PEM, self-signed CA certificates: the whole trust set
    proofs: tuple[str, ...]  # PEM cross-certificates: a new CA's subject and key, issued by a trusted CA
    renew_from: str | None  # SPKI hash of the CA that signs renewals now


def ca_update(cas: list[str], proofs: list[str], renew_from: str) -> Message:
    """The plane's CA set for the gateway (sent on every tunnel and on every change of the set)."""
    return {"type": CA_UPDATE, "v": VERSION, "cas": cas, "proofs": proofs, "renew_from": renew_from}


def parse_ca_update(message: Message) -> CaUpdate:
    """A checked `ca-update`; MessageError otherwise (the receiver then keeps its trust as it is)."""
    _version(message)
    renew_from = message.get("renew_from")
    if renew_from is not None and (not isinstance(renew_from, str) or not _SPKI_HASH.fullmatch(renew_from)):
        raise MessageError(BAD_MESSAGE, "ca-update: renew_from must be sha256:<64 hex digits>")
    return CaUpdate(
        cas=_pems(message, "cas", required=True),
        proofs=_pems(message, "proofs", required=False),
        renew_from=renew_from,
    )


# --- revoked ---------------------------------------------------------------------------------------


def revoked_notice(reason: str, text: str) -> Message:
    """The plane's last word to a gateway it revoked or deleted."""
    return {"type": REVOKED, "v": VERSION, "reason": reason, "message": text[:MAX_TEXT]}


def parse_revoked(message: Message) -> tuple[str, str]:
    """(reason, message) of a `revoked` notice; an unknown reason reads as `revoked`."""
    _version(message)
    reason = message.get("reason")
    return (reason if isinstance(reason, str) and reason in REASONS else REASON_REVOKED), _text(
        message.get("message")
    )

"""A certificate's validity window and fingerprint, read from its DER bytes (pure).

The health record needs two dates per certificate (ours and each TLS target's). `ssl` gives them
only for a verified peer, and `cryptography` costs the daemon 7.6 MiB of memory to import; the
dates sit at a fixed place in the DER (RFC 5280 4.1: Certificate -> TBSCertificate -> Validity),
so a strict walk of a few TLV headers reads them. Anything unexpected is a ValueError.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import re
from dataclasses import dataclass

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _INTEGER, _EXPLICIT_0, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0x02, 0xA0, 0x17, 0x18


@dataclass(frozen=True)
class CertInfo:
    """What the health record says about a certificate."""

    not_before: float  # Unix seconds
    not_after: float
    fingerprint: str  # "sha256:<hex>" of the DER, as targets.yaml pins it


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at `pos`."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _time(tag: int, value: bytes) -> float:
    text = value.decode("ascii")
    if tag == _UTC_TIME and re.fullmatch(r"\d{12}Z", text):
        year = int(text[:2])
        year += 2000 if year < 50 else 1900  # RFC 5280 4.1.2.5.1
        rest = text[2:]
    elif tag == _GENERALIZED_TIME and re.fullmatch(r"\d{14}Z", text):
        year, rest = int(text[:4]), text[4:]
    else:
        raise ValueError("unsupported certificate time")
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError("invalid certificate time")
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def cert_info(der: bytes) -> CertInfo:
    """The validity window and SHA-256 fingerprint of a DER certificate (ValueError if malformed)."""
    tag, start, _end = _tlv(der, 0)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, pos, _tbs_end = _tlv(der, start)  # TBSCertificate
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, _s, end = _tlv(der, pos)
    if tag == _EXPLICIT_0:  # version
        tag, _s, end = _tlv(der, end)
    if tag != _INTEGER:  # serialNumber
        raise ValueError("not a certificate")
    for _ in range(2):  # signature AlgorithmIdentifier, issuer Name
        tag, _s, end = _tlv(der, end)
        if tag != _SEQUENCE:
            raise ValueError("not a certificate")
    tag, pos, _v_end = _tlv(der, end)  # Validity
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag1, s1, e1 = _tlv(der, pos)
    tag2, s2, e2 = _tlv(der, e1)
    return CertInfo(
        not_before=_time(tag1, der[s1:e1]),
        not_after=_time(tag2, der[s2:e2]),
        fingerprint="sha256:" + hashlib.sha256(der).hexdigest(),
    )


def pem_to_der(pem: bytes) -> bytes:
    """The first certificate of a PEM file, as DER (ValueError if there is none)."""
    match = _PEM.search(pem)
    if match is None:
        raise ValueError("no certificate in the PEM data")
    return base64.b64decode(b"".join(match.group(1).split()), validate=True)

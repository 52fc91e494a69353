"""What the gateway reads from a certificate between renewals, from its DER bytes (pure).

The health record needs two dates per certificate (ours and each TLS target's); the identity
manager the dates and CN of our certificate (to schedule renewal) and, for the `ca-update` every
tunnel hears when it connects, the CAs' fingerprints, key hashes and key identifiers. `ssl` gives
none of it for a certificate of our own, and `cryptography` costs the daemon 7-8 MiB of memory to
import (the gateway loads it only to renew and to check a changed CA set: docs/relay-performance.md
"Memory"). The fields sit at fixed places in the DER (RFC 5280 4.1: Certificate -> TBSCertificate
-> Validity, Subject, SubjectPublicKeyInfo, Extensions), so a strict walk of a few TLV headers
reads them. Anything unexpected is a ValueError. Nothing here verifies a signature.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import re
from dataclasses import dataclass

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _SET, _INTEGER, _OID, _EXPLICIT_0 = 0x30, 0x31, 0x02, 0x06, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_BOOLEAN, _OCTET_STRING, _EXPLICIT_3, _IMPLICIT_0 = 0x01, 0x04, 0xA3, 0x80
_COMMON_NAME = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_SUBJECT_KEY_ID, _AUTHORITY_KEY_ID = bytes([0x55, 0x1D, 0x0E]), bytes([0x55, 0x1D, 0x23])  # 2.5.29.14, .35
# The string types a DirectoryString may use (RFC 5280 4.1.2.4) and how each is encoded.
_STRINGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


@dataclass(frozen=True)
class CertInfo:
    """What the health record says about a certificate."""

    not_before: float  # Unix seconds
    not_after: float
    fingerprint: str  # "sha256:<hex>" of the DER, as targets.yaml pins it
    common_name: str  # the subject's first CN ("" without one)
    spki_sha256: str  # "sha256:<hex>" of the DER SubjectPublicKeyInfo, as gwcore.pki.spki_sha256
    subject_key_id: bytes | None  # the SubjectKeyIdentifier extension's key id
    authority_key_id: bytes | None  # the AuthorityKeyIdentifier extension's key id


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
    """The validity window, subject CN, fingerprint and key hashes of a DER certificate (ValueError
    if malformed)."""
    tag, start, _end = _tlv(der, 0)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, pos, tbs_end = _tlv(der, start)  # TBSCertificate
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
    tag, pos, v_end = _tlv(der, end)  # Validity
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag1, s1, e1 = _tlv(der, pos)
    tag2, s2, e2 = _tlv(der, e1)
    _tag, _s, subject_end = _tlv(der, v_end)
    tag, _s, spki_end = _tlv(der, subject_end)  # SubjectPublicKeyInfo
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    key_ids = _key_ids(der, spki_end, tbs_end)
    return CertInfo(
        not_before=_time(tag1, der[s1:e1]),
        not_after=_time(tag2, der[s2:e2]),
        fingerprint="sha256:" + hashlib.sha256(der).hexdigest(),
        common_name=_common_name(der, v_end),
        spki_sha256="sha256:" + hashlib.sha256(der[subject_end:spki_end]).hexdigest(),
        subject_key_id=key_ids.get(_SUBJECT_KEY_ID),
        authority_key_id=key_ids.get(_AUTHORITY_KEY_ID),
    )


def _key_ids(der: bytes, pos: int, tbs_end: int) -> dict[bytes, bytes]:
    """The key ids of the SubjectKeyIdentifier and AuthorityKeyIdentifier extensions, by OID; the
    TBSCertificate's optional unique ids and [3] extensions start at `pos` (RFC 5280 4.1, 4.2.1.1-2)."""
    found: dict[bytes, bytes] = {}
    while pos < tbs_end:
        tag, start, pos = _tlv(der, pos)
        if tag != _EXPLICIT_3:
            continue  # issuerUniqueID, subjectUniqueID
        tag, ext, exts_end = _tlv(der, start)
        if tag != _SEQUENCE:
            raise ValueError("not a certificate")
        while ext < exts_end:
            tag, inner, ext = _tlv(der, ext)  # Extension: SEQUENCE {OID, critical, OCTET STRING}
            tag_oid, s, e = _tlv(der, inner)
            if tag != _SEQUENCE or tag_oid != _OID:
                raise ValueError("not a certificate")
            oid = der[s:e]
            tag, s, e = _tlv(der, e)
            if tag == _BOOLEAN:
                tag, s, e = _tlv(der, e)
            if tag != _OCTET_STRING:
                raise ValueError("not a certificate")
            if oid == _SUBJECT_KEY_ID:
                tag, s, e = _tlv(der, s)  # KeyIdentifier ::= OCTET STRING
                if tag == _OCTET_STRING:
                    found[oid] = der[s:e]
            elif oid == _AUTHORITY_KEY_ID:
                tag, s, e = _tlv(der, s)  # SEQUENCE {[0] keyIdentifier OPTIONAL, ...}
                if tag == _SEQUENCE and s < e:
                    tag, s, e = _tlv(der, s)
                    if tag == _IMPLICIT_0:
                        found[oid] = der[s:e]
    return found


def _common_name(der: bytes, pos: int) -> str:
    """The first CN of the Name at `pos` (SEQUENCE OF SET OF SEQUENCE {OID, value}); "" without one."""
    tag, pos, name_end = _tlv(der, pos)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    while pos < name_end:
        tag, attr, rdn_end = _tlv(der, pos)  # RelativeDistinguishedName
        if tag != _SET:
            raise ValueError("not a certificate")
        while attr < rdn_end:
            tag, inner, attr = _tlv(der, attr)  # AttributeTypeAndValue
            if tag != _SEQUENCE:
                raise ValueError("not a certificate")
            tag, s, e = _tlv(der, inner)
            if tag != _OID:
                raise ValueError("not a certificate")
            if der[s:e] == _COMMON_NAME:
                tag, s, e = _tlv(der, e)
                if tag not in _STRINGS:
                    raise ValueError("unsupported CN string type")
                return der[s:e].decode(_STRINGS[tag])
        pos = rdn_end
    return ""


def pem_to_der(pem: bytes) -> bytes:
    """The first certificate of a PEM file, as DER (ValueError if there is none)."""
    return pem_bundle_to_der(pem)[0]


def pem_bundle_to_der(pem: bytes) -> list[bytes]:
    """Every certificate of a PEM file, as DER (ValueError if there is none)."""
    ders = [base64.b64decode(b"".join(m.group(1).split()), validate=True) for m in _PEM.finditer(pem)]
    if not ders:
        raise ValueError("no certificate in the PEM data")
    return ders

"""What the gateway accepts from the plane about its identity: a renewed certificate, a new CA set.

Pure: certificates and keys in, a verdict out (TrustError with a one-line reason). The channel
they arrive on is already the pinned, mutually authenticated tunnel; these checks make sure that
even so, a CA enters the trust set only with a proof from a CA already in it (a cross-certificate:
the new CA's name and key, issued by a trusted CA), and that a certificate is ours before it is
stored next to our key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import GatewayError
from gwcore.identity import CaUpdate
from gwcore.pki import same_public_key, spki_sha256


class TrustError(GatewayError):
    """A certificate or CA set from the plane that the gateway refuses."""


def load_pem(pem: str | bytes, what: str) -> x509.Certificate:
    """One PEM certificate; TrustError naming `what` otherwise."""
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        raise TrustError(f"{what}: not a PEM certificate") from None


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (ca.pem); TrustError if there are none."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TrustError("ca.pem: not a PEM certificate bundle") from None


def fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def common_name(cert: x509.Certificate) -> str:
    """The subject CN ("" without one)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def issued_by(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The CA of `cas` whose key signed `cert`, or None."""
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and issued_by(cert, [cert]) is not None


def _proven(
    ca: x509.Certificate, proofs: Sequence[x509.Certificate], trusted: Sequence[x509.Certificate]
) -> bool:
    """Whether a cross-certificate in `proofs` vouches for `ca`: same name and key, issued by a trusted CA."""
    key = spki_sha256(ca)
    for proof in proofs:
        same = proof.subject == ca.subject and spki_sha256(proof) == key and _is_ca(proof)
        if same and issued_by(proof, trusted) is not None:
            return True
    return False


def check_ca_update(update: CaUpdate, trusted: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The new trust set of a `ca-update`: each CA in it is trusted already, or proven by a trusted
    one; each is a self-signed CA certificate. TrustError names the first that is not."""
    known = {fingerprint(c) for c in trusted}
    proofs = [load_pem(p, "ca-update: proofs") for p in update.proofs]
    new_set: list[x509.Certificate] = []
    for pem in update.cas:
        ca = load_pem(pem, "ca-update: cas")
        name = ca.subject.rfc4514_string()[:120]
        if not _is_ca(ca) or not _self_signed(ca):
            raise TrustError(f"ca-update: {name} is not a self-signed CA certificate")
        if fingerprint(ca) not in known and not _proven(ca, proofs, trusted):
            raise TrustError(
                f"ca-update: {name} is new and no cross-certificate from a CA we trust vouches for it"
            )
        if fingerprint(ca) not in {fingerprint(c) for c in new_set}:
            new_set.append(ca)
    return new_set


def check_renewed(
    cert_pem: str,
    key: ec.EllipticCurvePrivateKey,
    gateway_id: str,
    trusted: Sequence[x509.Certificate],
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """The plane's renewed certificate, if it is ours: our new key, our id, a trusted issuer, a
    client certificate, and not already expired. TrustError otherwise."""
    cert = load_pem(cert_pem, "renewed certificate")
    if not same_public_key(key, cert):
        raise TrustError("renewed certificate: it is not for the key we sent")
    if common_name(cert) != gateway_id:
        raise TrustError(f"renewed certificate: CN {common_name(cert)[:80]!r} is not our id {gateway_id}")
    if issued_by(cert, trusted) is None:
        raise TrustError("renewed certificate: not issued by a CA we trust")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise TrustError("renewed certificate: not a TLS client certificate")
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= max(now, cert.not_valid_before_utc):
        raise TrustError(
            f"renewed certificate: already expired ({cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)"
        )
    return cert

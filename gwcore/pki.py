"""The certificate side of the enrolment contract: the SPKI hash a join token pins, the same-key check.

Imports cryptography: only code that registers (firstboot's register client) or signs (the plane)
loads this module.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_sha256(public: x509.Certificate | x509.CertificateSigningRequest | PublicKeyTypes) -> str:
    """`sha256:<hex>` of the DER SubjectPublicKeyInfo (what the token's `h` pins; a kubeadm-style
    discovery hash) of a certificate, a CSR or a public key."""
    key = (
        public.public_key()
        if isinstance(public, x509.Certificate | x509.CertificateSigningRequest)
        else public
    )
    return "sha256:" + hashlib.sha256(key.public_bytes(*_SPKI)).hexdigest()


def same_public_key(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """Whether `cert` certifies the public half of `key`."""
    return key.public_key().public_bytes(*_SPKI) == cert.public_key().public_bytes(*_SPKI)

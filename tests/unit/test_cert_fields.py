"""gwcore.certs against cryptography's reading of the same certificates: the subject CN, the SPKI
hash, the key identifiers and PEM bundles. The gateway reads these without cryptography between
renewals (docs/relay-performance.md "Memory"), so they must agree with it on every certificate
the plane makes and on the other shapes a CA may use."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type  # the DirectoryString types: only here in cryptography
from cryptography.x509.oid import NameOID

from gwcore.certs import cert_info, pem_bundle_to_der, pem_to_der
from gwcore.pki import spki_sha256
from mgmtplane.ca import new_ca


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _self_signed(subject: x509.Name, extensions: bool = False) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer-cn")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if extensions:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256())


def _key_ids(cert: x509.Certificate) -> tuple[bytes | None, bytes | None]:
    try:
        ski: bytes | None = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = None
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    return ski, aki


def test_common_name_in_each_string_type_as_cryptography_reads_it() -> None:
    cases = [
        (NameOID.COMMON_NAME, "0b3f6c1e-gw", _ASN1Type.UTF8String),
        (NameOID.COMMON_NAME, "printable-name", _ASN1Type.PrintableString),
        (NameOID.COMMON_NAME, "bmp-\u00e9\u4e2d", _ASN1Type.BMPString),
        (NameOID.COMMON_NAME, "universal-\u00e9", _ASN1Type.UniversalString),
        (NameOID.ORGANIZATION_NAME, "no CN at all", _ASN1Type.UTF8String),
    ]
    for oid, value, kind in cases:
        attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"), x509.NameAttribute(oid, value, kind)]
        if oid == NameOID.COMMON_NAME:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, "second-cn"))  # the first one counts
        cert = _self_signed(x509.Name(attrs), extensions=True)
        theirs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ours = cert_info(_der(cert))
        assert ours.common_name == (str(theirs[0].value) if theirs else "")
        assert ours.common_name == (value if oid == NameOID.COMMON_NAME else "")  # never the issuer's


def test_key_hash_and_key_ids_of_the_planes_certificates() -> None:
    """The plane's CA, a gateway certificate it signs, a cross-certificate, and certificates
    without key id extensions (EC and RSA keys)."""
    ca, other = new_ca(), new_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    gateway_id = str(uuid.uuid4())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .sign(key, hashes.SHA256())
    )
    signed = x509.load_pem_x509_certificate(
        ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), gateway_id)
    )
    cross = x509.load_pem_x509_certificate(ca.cross_sign(other))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    plain_rsa = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]))
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    trustme_leaf = x509.load_pem_x509_certificate(
        trustme.CA().issue_cert("h.example").cert_chain_pems[0].bytes()
    )
    certs = [ca.cert, other.cert, signed, cross, plain_rsa, trustme_leaf, _self_signed(x509.Name([]))]
    for cert in certs:
        ours = cert_info(_der(cert))
        assert ours.spki_sha256 == spki_sha256(cert)
        assert (ours.subject_key_id, ours.authority_key_id) == _key_ids(cert)
    assert cert_info(_der(signed)).authority_key_id == cert_info(_der(ca.cert)).subject_key_id is not None
    assert cert_info(_der(signed)).authority_key_id != cert_info(_der(other.cert)).subject_key_id
    assert cert_info(_der(signed)).common_name == gateway_id
    assert cert_info(_der(plain_rsa)).subject_key_id is None


def test_pem_bundle_reads_every_certificate() -> None:
    cas = [new_ca(), new_ca()]
    bundle = b"text before\n" + b"".join(ca.cert_pem for ca in cas)
    assert pem_bundle_to_der(bundle) == [_der(ca.cert) for ca in cas]
    assert pem_to_der(bundle) == _der(cas[0].cert)
    with pytest.raises(ValueError, match="no certificate"):
        pem_bundle_to_der(b"no certificate here")

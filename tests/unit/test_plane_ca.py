"""The plane CA: creation and reload, the discovery hash, CSR signing rules, the server certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import stat
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mgmtplane.ca import (
    CSRError,
    PlaneCA,
    ca_spki_sha256,
    ensure_server_cert,
    load_ca,
    load_or_create_ca,
)
from mgmtplane.errors import PlaneError


@pytest.fixture
def ca(tmp_path) -> PlaneCA:
    return load_or_create_ca(tmp_path)


def _csr(key, cn: str = "gw") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_created_once_with_private_key(tmp_path, ca: PlaneCA) -> None:
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600
    again = load_or_create_ca(tmp_path)
    assert again.cert == ca.cert and load_ca(tmp_path).spki_hash == ca.spki_hash
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert isinstance(ca.key.curve, ec.SECP256R1)


def test_state_dir_created_0700(tmp_path) -> None:
    load_or_create_ca(tmp_path / "new")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_spki_hash_matches_openssl_style_computation(ca: PlaneCA) -> None:
    der = ca.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert ca_spki_sha256(ca.cert) == expected == ca_spki_sha256(ca.cert_pem) == ca.spki_hash


def test_two_cas_differ(tmp_path) -> None:
    assert load_or_create_ca(tmp_path / "a").spki_hash != load_or_create_ca(tmp_path / "b").spki_hash


def test_sign_csr_makes_a_client_cert(ca: PlaneCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    gateway_id = str(uuid.uuid4())
    cert = x509.load_pem_x509_certificate(ca.sign_csr(_csr(key, cn="ignored"), gateway_id))
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gateway_id
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=90) < lifetime <= dt.timedelta(days=90, minutes=10)  # the default lifetime
    assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC)


def test_p384_csr_accepted(ca: PlaneCA) -> None:
    ca.sign_csr(_csr(ec.generate_private_key(ec.SECP384R1())), str(uuid.uuid4()))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "EC P-256 or P-384"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "EC P-256 or P-384"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "EC P-256 or P-384"),
    ],
)
def test_wrong_key_types_refused(ca: PlaneCA, key, message: str) -> None:
    with pytest.raises(CSRError, match=message):
        ca.sign_csr(_csr(key()), str(uuid.uuid4()))


def test_altered_csr_refused(ca: PlaneCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = _csr(key, cn="aaaaaaaa")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"aaaaaaaa", b"aaaaaaab")
    tampered_pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CSRError, match="signature does not verify"):
        ca.sign_csr(tampered_pem, str(uuid.uuid4()))


@pytest.mark.parametrize(
    "junk", [b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"]
)
def test_garbage_csr_refused(ca: PlaneCA, junk: bytes) -> None:
    with pytest.raises(CSRError, match="csr:"):
        ca.sign_csr(junk, str(uuid.uuid4()))


def test_gateway_id_must_be_uuid(ca: PlaneCA) -> None:
    with pytest.raises(CSRError, match="not a UUID"):
        ca.sign_csr(_csr(ec.generate_private_key(ec.SECP256R1())), "../etc")


def _sans(path) -> set[object]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_server_cert_defaults_and_reuse(tmp_path, ca: PlaneCA) -> None:
    cert_path, key_path = ensure_server_cert(ca, tmp_path, ["plane.example.com"])
    sans = _sans(cert_path)
    for ip in ("127.0.0.1", "::1", "10.0.2.2"):
        assert x509.IPAddress(ipaddress.ip_address(ip)) in sans
    assert {x509.DNSName("localhost"), x509.DNSName("plane.example.com")} <= sans
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    before = cert_path.read_bytes()
    ensure_server_cert(ca, tmp_path, ["plane.example.com"])
    assert cert_path.read_bytes() == before  # covered: not reissued
    ensure_server_cert(ca, tmp_path, ["192.0.2.7"])
    assert x509.IPAddress(ipaddress.ip_address("192.0.2.7")) in _sans(cert_path)


def test_server_cert_reissued_for_new_ca(tmp_path) -> None:
    first = load_or_create_ca(tmp_path / "a")
    cert_path, _ = ensure_server_cert(first, tmp_path / "a", [])
    other = load_or_create_ca(tmp_path / "b")
    ensure_server_cert(other, tmp_path / "a", [])
    x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(other.cert)


def test_key_not_matching_cert_is_one_line_error(tmp_path) -> None:
    load_or_create_ca(tmp_path / "a")
    load_or_create_ca(tmp_path / "b")
    (tmp_path / "a" / "ca-key.pem").write_bytes((tmp_path / "b" / "ca-key.pem").read_bytes())
    with pytest.raises(PlaneError, match=r"ca-key\.pem: does not match"):
        load_or_create_ca(tmp_path / "a")


def test_missing_ca_names_the_dir(tmp_path) -> None:
    with pytest.raises(PlaneError, match="no plane CA here"):
        load_ca(tmp_path)


def test_loose_key_mode_tightened(tmp_path) -> None:
    load_or_create_ca(tmp_path)
    (tmp_path / "ca-key.pem").chmod(0o644)
    load_or_create_ca(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600

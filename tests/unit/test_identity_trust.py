"""What the gateway accepts from the plane (gateway.identity.trust): a renewed certificate, and a
new CA set only with a cross-certificate from a CA it already trusts. The plane's own rollover
(mgmtplane.rollover) produces what the gateway's check accepts: the join, tested here."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.identity.trust import TrustError, check_ca_update, check_renewed
from gwcore import identity as idm
from mgmtplane import rollover
from mgmtplane.ca import PlaneCA, new_ca

NOW = dt.datetime.now(dt.UTC)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue(
    issuer: PlaneCA,
    subject: x509.Name,
    key: ec.EllipticCurvePublicKey,
    *,
    ca: bool,
    eku: list[x509.ObjectIdentifier] | None = None,
    days: float = 30,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def update(cas: list[PlaneCA | x509.Certificate], proofs: list[str] = ()) -> idm.CaUpdate:  # type: ignore[assignment]
    certs = [c.cert if isinstance(c, PlaneCA) else c for c in cas]
    return idm.CaUpdate(cas=tuple(pem(c) for c in certs), proofs=tuple(proofs), renew_from=None)


@pytest.fixture(scope="module")
def cas() -> tuple[PlaneCA, PlaneCA, PlaneCA]:
    return new_ca(), new_ca(), new_ca()  # old (trusted), new, an unrelated one


def test_the_same_set_and_a_shrunk_set_are_accepted(cas: tuple[PlaneCA, PlaneCA, PlaneCA]) -> None:
    old, new, _ = cas
    assert check_ca_update(update([old]), [old.cert]) == [old.cert]
    assert check_ca_update(update([new]), [old.cert, new.cert]) == [new.cert]  # the old CA retired


def test_a_new_ca_needs_a_cross_certificate_from_a_trusted_one(cas: tuple[PlaneCA, PlaneCA, PlaneCA]) -> None:
    old, new, other = cas
    proof = old.cross_sign(new).decode()
    assert check_ca_update(update([old, new], [proof]), [old.cert]) == [old.cert, new.cert]
    assert check_ca_update(update([new], [proof]), [old.cert]) == [new.cert]
    with pytest.raises(TrustError, match="no cross-certificate from a CA we trust"):
        check_ca_update(update([old, new]), [old.cert])
    with pytest.raises(TrustError, match="no cross-certificate"):  # vouched for by a stranger
        check_ca_update(update([old, new], [other.cross_sign(new).decode()]), [old.cert])
    with pytest.raises(TrustError, match="no cross-certificate"):  # a proof for another CA
        check_ca_update(update([old, new], [old.cross_sign(other).decode()]), [old.cert])


def test_a_proof_must_carry_the_new_cas_own_name_and_key(cas: tuple[PlaneCA, PlaneCA, PlaneCA]) -> None:
    old, new, other = cas
    same_name_other_key = issue(old, new.cert.subject, other.key.public_key(), ca=True)
    other_name_same_key = issue(old, other.cert.subject, new.key.public_key(), ca=True)
    not_a_ca = issue(old, new.cert.subject, new.key.public_key(), ca=False)
    for proof in (same_name_other_key, other_name_same_key, not_a_ca):
        with pytest.raises(TrustError, match="no cross-certificate"):
            check_ca_update(update([old, new], [pem(proof)]), [old.cert])


def test_only_self_signed_ca_certificates_enter_the_trust_set(cas: tuple[PlaneCA, PlaneCA, PlaneCA]) -> None:
    old, new, _ = cas
    cross = x509.load_pem_x509_certificate(old.cross_sign(new))
    leaf = issue(
        old, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]), new.key.public_key(), ca=False
    )
    for bad in (cross, leaf):  # issued by a trusted CA, yet not a root to pin
        with pytest.raises(TrustError, match="not a self-signed CA certificate"):
            check_ca_update(update([old, bad], [pem(cross)]), [old.cert])
    with pytest.raises(TrustError, match="not a PEM certificate"):
        check_ca_update(idm.CaUpdate(cas=(pem(old.cert),), proofs=("junk",), renew_from=None), [old.cert])


def test_the_planes_rollover_files_pass_the_gateways_check(tmp_path: Path) -> None:
    """The join: what `mgmtplane ca rollover start` writes is what a gateway accepts."""
    before = rollover.load_ca_set(tmp_path)
    during = rollover.start(tmp_path)
    message = idm.ca_update(
        [c.cert_pem.decode() for c in during.trusted],
        [p.decode() for p in during.proofs],
        during.signing.spki_hash,
    )
    accepted = check_ca_update(idm.parse_ca_update(message), [before.server.cert])
    assert [c.public_bytes(serialization.Encoding.PEM) for c in accepted] == [
        c.cert_pem for c in during.trusted
    ]


def _csr_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _signed(ca: PlaneCA, key: ec.EllipticCurvePrivateKey, gid: str, lifetime: dt.timedelta) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gid)]))
        .sign(key, hashes.SHA256())
    )
    return ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), gid, lifetime).decode()


def test_a_renewed_certificate_must_be_ours(cas: tuple[PlaneCA, PlaneCA, PlaneCA]) -> None:
    old, _new, other = cas
    gid = str(uuid.uuid4())
    key = _csr_key()
    good = _signed(old, key, gid, dt.timedelta(days=90))
    assert check_renewed(good, key, gid, [old.cert]).subject.rfc4514_string() == f"CN={gid}"
    with pytest.raises(TrustError, match="not for the key we sent"):
        check_renewed(good, _csr_key(), gid, [old.cert])
    with pytest.raises(TrustError, match="is not our id"):
        check_renewed(_signed(old, key, str(uuid.uuid4()), dt.timedelta(days=1)), key, gid, [old.cert])
    with pytest.raises(TrustError, match="not issued by a CA we trust"):
        check_renewed(_signed(other, key, gid, dt.timedelta(days=1)), key, gid, [old.cert])
    server_only = issue(old, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gid)]), key.public_key(),
                        ca=False, eku=[ExtendedKeyUsageOID.SERVER_AUTH])  # fmt: skip
    with pytest.raises(TrustError, match="not a TLS client certificate"):
        check_renewed(pem(server_only), key, gid, [old.cert])
    with pytest.raises(TrustError, match="already expired"):
        check_renewed(good, key, gid, [old.cert], now=NOW + dt.timedelta(days=91))
    with pytest.raises(TrustError, match="not a PEM certificate"):
        check_renewed("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", key, gid, [old.cert])

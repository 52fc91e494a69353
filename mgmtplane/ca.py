"""The plane's registration CA: created once in the state dir; signs gateway CSRs and the server cert."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gwcore.atomic import write_atomic
from gwcore.pki import same_public_key, spki_sha256
from mgmtplane.errors import PlaneError
from mgmtplane.registry import state_lock

log = logging.getLogger(__name__)

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"

# QEMU's user-mode network shows the host to a guest as 10.0.2.2, so a plane on the
# developer's machine is reachable from a test VM without extra flags.
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1", "::1", "10.0.2.2")

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)
# The default; the plane's setting (mgmtplane.settings: cert_lifetime) is what signing uses.
CLIENT_VALIDITY = dt.timedelta(days=90)
# Tolerate a gateway whose clock runs a little behind before NTP has synced; at most a tenth of a
# short lifetime, so that the renewal point (two thirds of not_before..not_after) stays in the future.
BACKDATE = dt.timedelta(minutes=10)
# A server cert this close to expiry is renewed at the next start.
RENEW_BEFORE = dt.timedelta(days=30)

ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CSRError(PlaneError):
    """A certificate signing request the plane refuses to sign."""


def ca_spki_sha256(cert: x509.Certificate | bytes) -> str:
    """`sha256:<hex>` of the certificate's DER SubjectPublicKeyInfo (a kubeadm-style discovery hash)."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    return spki_sha256(cert)


def cert_fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER encoding."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# A CA certificate's key usage, the same for the plane's CA and a rollover's cross-certificate.
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _serial() -> int:
    # RFC 5280: positive, at most 20 octets; 159 random bits keeps it positive and unique.
    return secrets.randbits(159) | 1


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _host_to_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host.lower())


@dataclass(frozen=True)
class PlaneCA:
    """The loaded CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM, as served by GET /v1/ca."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def spki_hash(self) -> str:
        """The discovery hash carried in join tokens."""
        return ca_spki_sha256(self.cert)

    def _hash_alg(self) -> hashes.SHA256 | hashes.SHA384:
        return hashes.SHA384() if isinstance(self.key.curve, ec.SECP384R1) else hashes.SHA256()

    def sign_csr(
        self, csr_pem: bytes | str, gateway_id: str, lifetime: dt.timedelta = CLIENT_VALIDITY
    ) -> bytes:
        """Sign a gateway CSR as a client certificate with CN = gateway_id, valid for `lifetime`
        (never past the CA's own end); raises CSRError."""
        try:
            gateway_uuid = uuid.UUID(gateway_id)
        except ValueError as exc:
            raise CSRError(f"gateway id {gateway_id!r} is not a UUID") from exc
        csr = load_csr(csr_pem)
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(gateway_uuid))]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(_serial())
            .not_valid_before(now - min(BACKDATE, lifetime / 10))
            .not_valid_after(min(now + lifetime, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(gateway_uuid.urn)]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        cert = builder.sign(self.key, self._hash_alg())
        return cert.public_bytes(serialization.Encoding.PEM)

    def cross_sign(self, other: PlaneCA) -> bytes:
        """A cross-certificate: `other`'s name and key, issued by this CA (PEM).

        It is how a gateway that trusts this CA learns to trust `other` in a CA rollover
        (docs/protocol.md §13.1): proof that whoever holds this CA's key vouches for the new one.
        """
        key = other.cert.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(other.cert.subject)
            .issuer_name(self.cert.subject)
            .public_key(key)
            .serial_number(_serial())
            .not_valid_before(max(other.cert.not_valid_before_utc, self.cert.not_valid_before_utc))
            .not_valid_after(min(other.cert.not_valid_after_utc, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, self._hash_alg())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_server_cert(self, hosts: Iterable[str]) -> tuple[bytes, bytes]:
        """A fresh TLS server certificate and key (PEM) for `hosts` (DNS names and IP addresses)."""
        names = list(dict.fromkeys(h for h in hosts if h))
        if not names:
            raise PlaneError("server certificate: no host names given")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + SERVER_VALIDITY, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([_host_to_san(h) for h in names]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, self._hash_alg())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature and key type; raises CSRError."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CSRError("csr: not a PEM certificate signing request") from exc
    try:
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CSRError(f"csr: unsupported key or signature: {exc}") from exc
    if not valid:
        raise CSRError("csr: signature does not verify (the CSR was altered or not signed by its key)")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ALLOWED_CURVES
    ):
        raise CSRError("csr: key must be an EC P-256 or P-384 key")
    return csr


def new_ca() -> PlaneCA:
    """A fresh CA (key and self-signed certificate), in memory."""
    return _new_ca()


def _new_ca() -> PlaneCA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gateway reference management plane"),
            # A random suffix tells two planes' CAs apart in logs and certificate viewers.
            x509.NameAttribute(NameOID.COMMON_NAME, f"Gateway Plane CA {secrets.token_hex(4)}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PlaneCA(cert=cert, key=key)


def load_ca_files(cert_path: Path, key_path: Path) -> PlaneCA:
    """A CA from its two files; PlaneError on anything wrong with them."""
    return _load_ca(cert_path, key_path)


def write_ca(ca: PlaneCA, cert_path: Path, key_path: Path) -> None:
    """Store a CA: the key first, so that a crash never leaves a certificate without its key."""
    write_atomic(key_path, _key_pem(ca.key), mode=0o600)
    write_atomic(cert_path, ca.cert_pem, mode=0o644)


def _load_ca(cert_path: Path, key_path: Path) -> PlaneCA:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise PlaneError(f"{cert_path}: not a PEM certificate") from exc
    except OSError as exc:
        raise PlaneError(f"{cert_path}: cannot read: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PlaneError(f"{key_path}: missing (the CA certificate exists without its key)") from exc
    except (ValueError, TypeError) as exc:
        raise PlaneError(f"{key_path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ALLOWED_CURVES):
        raise PlaneError(f"{key_path}: CA key must be an EC P-256 or P-384 key")
    if not same_public_key(key, cert):
        raise PlaneError(f"{key_path}: does not match the certificate {cert_path}")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: mode %o is too open; setting 0600", key_path, mode)
        os.chmod(key_path, 0o600)
    return PlaneCA(cert=cert, key=key)


def load_or_create_ca(state_dir: Path) -> PlaneCA:
    """Load the CA from the state dir, creating it on first use (under the state lock)."""
    cert_path, key_path = state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE
    with state_lock(state_dir):
        if cert_path.exists():
            return _load_ca(cert_path, key_path)
        ca = _new_ca()
        # Key first: a crash between the two writes leaves no certificate without its key.
        write_atomic(key_path, _key_pem(ca.key), mode=0o600)
        write_atomic(cert_path, ca.cert_pem, mode=0o644)
        log.info("created plane CA in %s (%s)", state_dir, ca.spki_hash)
        return ca


def load_ca(state_dir: Path) -> PlaneCA:
    """Load an existing CA; a one-line error if the plane was never started with this state dir."""
    cert_path = state_dir / CA_CERT_FILE
    if not cert_path.exists():
        raise PlaneError(
            f"{state_dir}: no plane CA here", hint="run 'mgmtplane serve --state-dir' once to create it"
        )
    return _load_ca(cert_path, state_dir / CA_KEY_FILE)


def _server_cert_ok(ca: PlaneCA, cert_path: Path, key_path: Path, hosts: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    if cert.issuer != ca.cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return False
    if not same_public_key(key, cert):
        return False
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return {_host_to_san(h) for h in hosts} <= set(san)


def server_cert_covers(state_dir: Path, host: str) -> bool | None:
    """Whether the stored server certificate names `host` (None when there is no certificate yet)."""
    try:
        cert = x509.load_pem_x509_certificate((state_dir / SERVER_CERT_FILE).read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return _host_to_san(host) in san


def ensure_server_cert(ca: PlaneCA, state_dir: Path, hosts: Iterable[str]) -> tuple[Path, Path]:
    """Paths of a server cert/key covering `hosts` plus the defaults; reissued when missing or stale."""
    names = list(dict.fromkeys([*DEFAULT_SERVER_HOSTS, *hosts]))
    cert_path, key_path = state_dir / SERVER_CERT_FILE, state_dir / SERVER_KEY_FILE
    with state_lock(state_dir):
        if not _server_cert_ok(ca, cert_path, key_path, names):
            cert_pem, key_pem = ca.issue_server_cert(names)
            write_atomic(key_path, key_pem, mode=0o600)
            write_atomic(cert_path, cert_pem, mode=0o644)
            log.info("issued plane server certificate for %s", ", ".join(names))
    return cert_path, key_path

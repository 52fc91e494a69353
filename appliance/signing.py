"""Signing keys of the build: a vendor's from the spec or the environment, else a throwaway one.

A real vendor keeps its signing key outside the repository and names it in the spec
(`signing.key`, `signing.cert`, optionally `signing.keyring`) or in APPLIANCE_SIGNING_KEY,
APPLIANCE_SIGNING_CERT and APPLIANCE_SIGNING_KEYRING, which win. The keyring (the CA certificate
the appliance trusts; the signing certificate itself when none is given) is the only part that goes
into the image. Without a key the build is a development build: it makes a throwaway CA and a
signing certificate under CACHE/dev-signing/ (the build cache, $APPLIANCE_CACHE_DIR), and says so.
Kept there, every build on this machine puts the same keyring into its image: two builds stay
byte-identical, and any of its bundles installs on any of its images. Bundles are signed by RAUC
(CMS inside the bundle); SHA256SUMS gets a detached CMS signature, SHA256SUMS.sig, by the same key.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.run import run
from appliance.spec import Spec

log = logging.getLogger(__name__)

DEV_DIR = "dev-signing"
ENV_KEY, ENV_CERT, ENV_KEYRING = (
    "APPLIANCE_SIGNING_KEY",
    "APPLIANCE_SIGNING_CERT",
    "APPLIANCE_SIGNING_KEYRING",
)


@dataclass(frozen=True)
class Signer:
    """Where the signing key, its certificate and the keyring for the image are."""

    key: Path
    cert: Path
    keyring: Path
    development: bool


def _configured(spec: Spec, env: dict[str, str], name: str, env_name: str) -> tuple[Path | None, str]:
    """A configured path and where it came from (for error messages)."""
    if env.get(env_name):
        return Path(env[env_name]), f"${env_name}"
    value: str = getattr(spec.signing, name)
    if value:
        path = Path(value)
        return (path if path.is_absolute() else spec.source.parent / path), f"{spec.source}: signing.{name}"
    return None, ""


def resolve_signer(spec: Spec, cache: Path, env: dict[str, str] | None = None) -> Signer:
    """The vendor's signer if one is configured, else the development signer in the build cache."""
    env = dict(os.environ) if env is None else env
    key, key_from = _configured(spec, env, "key", ENV_KEY)
    cert, cert_from = _configured(spec, env, "cert", ENV_CERT)
    keyring, keyring_from = _configured(spec, env, "keyring", ENV_KEYRING)
    if key is None and cert is None:
        if keyring is not None:
            raise ApplianceError(f"{keyring_from}: a keyring without signing.key and signing.cert")
        return development_signer(cache / DEV_DIR)
    if key is None or cert is None:
        have, missing = (key_from, "cert") if key is not None else (cert_from, "key")
        raise ApplianceError(f"{have}: set, but signing.{missing} (or its environment variable) is not")
    for path, where in ((key, key_from), (cert, cert_from), (keyring, keyring_from)):
        if path is not None and not path.is_file():
            raise ApplianceError(f"{where}: {path}: no such file")
    if "PRIVATE KEY" in (keyring or cert).read_text(errors="replace"):
        raise ApplianceError(
            f"{keyring_from or cert_from}: holds a private key; only certificates go into the image"
        )
    log.info("signing with %s (certificate %s)", key, cert)
    return Signer(key=key, cert=cert, keyring=keyring or cert, development=False)


def development_signer(directory: Path) -> Signer:
    """The throwaway signer in `directory`, made on first use."""
    signer = Signer(directory / "key.pem", directory / "cert.pem", directory / "keyring.pem", True)
    if not all(p.is_file() for p in (signer.key, signer.cert, signer.keyring)):
        generate_signer(directory, "Gateway Appliance development build (throwaway key)")
    log.warning(
        "development build: signing with the throwaway key %s, made by the build; only its public "
        "certificate %s goes into the image. A release sets signing.key and signing.cert in the spec "
        "(or %s and %s).", signer.key, signer.keyring, ENV_KEY, ENV_CERT,
    )  # fmt: skip
    return signer


def generate_signer(directory: Path, organization: str) -> Signer:
    """A CA certificate (the keyring) and a code-signing certificate it issued, with the key (0600).

    The CA's own key is not kept: nothing can issue another certificate under a throwaway CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                         x509.NameAttribute(NameOID.COMMON_NAME, "update CA")])  # fmt: skip
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                    x509.NameAttribute(NameOID.COMMON_NAME, "update signing"),
                ]
            )
        )  # fmt: skip
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        # codeSigning for the appliance (RAUC's check-purpose=codesign); emailProtection for RAUC
        # on the build host, which checks a new bundle with OpenSSL's default S/MIME purpose.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_path = directory / "key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))  # fmt: skip
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "keyring.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return Signer(key_path, directory / "cert.pem", directory / "keyring.pem", True)


def sign_file(path: Path, signer: Signer) -> Path:
    """A detached CMS signature of `path` (DER) beside it, as PATH.sig."""
    sig = path.with_name(path.name + ".sig")
    run(["openssl", "cms", "-sign", "-binary", "-in", path, "-signer", signer.cert, "-inkey", signer.key,
         "-outform", "DER", "-out", sig], capture=True)  # fmt: skip
    return sig


def verify_file(path: Path, keyring: Path) -> None:
    """Check PATH.sig against the keyring; a one-line error when it does not verify."""
    sig = path.with_name(path.name + ".sig")
    if not sig.is_file():
        raise ApplianceError(f"{sig}: missing: {path.name} is not signed")
    argv: list[str | Path] = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", sig]
    argv += ["-content", path, "-CAfile", keyring, "-purpose", "any", "-out", os.devnull]
    proc = run(argv, capture=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise ApplianceError(f"{sig}: does not verify against {keyring}: {last}")

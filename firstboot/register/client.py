"""Enrolment: redeem a join token with the plane and store the gateway identity (key, cert, pinned CA)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import re
import socket
import ssl
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from firstboot.errors import FirstbootError, Reason
from gwcore.atomic import write_atomic
from gwcore.enrol import InvalidToken, JoinToken, parse_token, proxy_credentials, valid_reported_hostname
from gwcore.pki import same_public_key, spki_sha256
from gwcore.redact import printable
from gwcore.safeload import loads_json

log = logging.getLogger(__name__)

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CA_FILE = "ca.pem"
IDENTITY_FILE = "identity.json"

# What a gateway id from the plane may look like (the reference plane issues UUIDs). The plane is
# untrusted: its id reaches identity.json, the journal and the status console.
_GATEWAY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_RESPONSE = 256 * 1024

# What a token error code from the plane means to the person at the console.
_TOKEN_ERRORS = {
    "token-unknown": "join token is unknown to the plane (mistyped, or made by another plane)",
    "token-used": "join token was already used; create a new one with 'mgmtplane token create'",
    "token-expired": "join token has expired; create a new one with 'mgmtplane token create'",
}


@dataclass(frozen=True)
class Identity:
    """A stored gateway identity (identity.json plus the key, cert and CA beside it)."""

    gateway_id: str
    plane_url: str
    registered_at: str
    state_dir: Path


def _issued_by_any(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def load_identity(state_dir: Path) -> Identity | None:
    """The stored identity if complete and consistent (key matches cert, cert chains to CA, unexpired)."""
    try:
        data = loads_json((state_dir / IDENTITY_FILE).read_text(encoding="utf-8"))
        cert = x509.load_pem_x509_certificate((state_dir / CERT_FILE).read_bytes())
        cas = x509.load_pem_x509_certificates((state_dir / CA_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    key = _load_key(state_dir / KEY_FILE)
    if key is None or not isinstance(data, dict):
        return None
    gateway_id, plane_url = data.get("gateway_id"), data.get("plane_url")
    if not isinstance(gateway_id, str) or not isinstance(plane_url, str):
        return None
    if not same_public_key(key, cert) or not _issued_by_any(cert, cas) or _cn(cert) != gateway_id:
        return None
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        return None
    return Identity(
        gateway_id=gateway_id,
        plane_url=plane_url,
        registered_at=str(data.get("registered_at", "")),
        state_dir=state_dir,
    )


def _proxy_args(proxy_url: str | None) -> tuple[URL | None, aiohttp.BasicAuth | None, str]:
    """(proxy URL without credentials, its basic auth, a printable form without the password)."""
    if not proxy_url:
        return None, None, ""
    split = proxy_credentials(proxy_url)
    bare = URL(split.url)
    if bare.scheme != "http" or not bare.host:
        raise FirstbootError(f"--proxy: {bare} must be http://[user:pass@]host:port")
    auth = aiohttp.BasicAuth(split.user, split.password) if split.user is not None else None
    return bare, auth, str(bare)


def _describe_client_error(
    exc: BaseException, where: str, proxy_shown: str, has_auth: bool = False
) -> FirstbootError:
    """One sentence for a failed HTTP exchange with the plane (or the proxy in front of it)."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        if exc.status == 407 and not has_auth:
            return FirstbootError(
                f"proxy {proxy_shown} requires authentication (HTTP 407)",
                hint="give credentials as --proxy http://user:password@host:port",
                reason=Reason.PROXY_AUTH,
            )
        if exc.status in (401, 407):
            # tinyproxy answers wrong credentials with 401, squid with 407.
            return FirstbootError(
                f"proxy {proxy_shown} rejected the proxy credentials (HTTP {exc.status})",
                reason=Reason.PROXY_AUTH if exc.status == 407 else Reason.PROXY,
            )
        return FirstbootError(
            f"proxy {proxy_shown} refused to connect to {where} (HTTP {exc.status} {exc.message})",
            reason=Reason.PROXY,
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return FirstbootError(
            f"cannot reach proxy {proxy_shown}: {exc.os_error.strerror or exc.os_error}", reason=Reason.PROXY
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return FirstbootError(
            f"TLS verification of {where} against the pinned plane CA failed: possible interception",
            hint=str(exc),
            reason=Reason.INTERCEPTED,
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FirstbootError(
            f"cannot resolve the plane host in {where} (DNS failure)",
            hint=str(exc.os_error),
            reason=Reason.DNS,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        why = exc.os_error.strerror or str(exc.os_error)
        return FirstbootError(f"plane unreachable at {where}: {why}", reason=Reason.UNREACHABLE)
    if isinstance(exc, TimeoutError):
        return FirstbootError(f"plane at {where} did not answer in time", reason=Reason.UNREACHABLE)
    return FirstbootError(f"talking to the plane at {where} failed: {exc}")


class _Client:
    """The two exchanges of enrolment, over one aiohttp session (and optional CONNECT proxy)."""

    def __init__(self, session: aiohttp.ClientSession, proxy_url: str | None) -> None:
        self.session = session
        self.proxy, self.proxy_auth, self.proxy_shown = _proxy_args(proxy_url)

    async def fetch_ca(self, token: JoinToken) -> tuple[list[x509.Certificate], bytes]:
        """GET /v1/ca without trusting TLS, then keep only the CA whose SPKI hash the token pins."""
        url = f"{token.plane_url}/v1/ca"
        try:
            # ssl=False: nothing is trusted yet; the hash check below is what authenticates the CA.
            async with self.session.get(url, ssl=False, proxy=self.proxy, proxy_auth=self.proxy_auth) as resp:
                body = await resp.content.read(_MAX_RESPONSE)
                if resp.status != 200:
                    raise FirstbootError(f"GET {url}: plane answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _describe_client_error(exc, url, self.proxy_shown, self.proxy_auth is not None) from exc
        try:
            certs = x509.load_pem_x509_certificates(body)
        except ValueError as exc:
            raise FirstbootError(f"GET {url}: response is not a PEM certificate bundle") from exc
        pinned = [c for c in certs if spki_sha256(c) == token.ca_hash]
        if not pinned:
            seen = ", ".join(spki_sha256(c) for c in certs)
            raise FirstbootError(
                f"plane CA hash mismatch at {token.plane_url}: token pins {token.ca_hash}, "
                f"plane presents {seen}: possible interception, refusing to register",
                reason=Reason.INTERCEPTED,
            )
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in pinned)
        return pinned, pem

    async def post_register(
        self, token: JoinToken, ca_pem: bytes, csr_pem: bytes, hostname: str
    ) -> dict[str, Any]:
        """POST /v1/register over TLS verified against the pinned CA only."""
        url = f"{token.plane_url}/v1/register"
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        payload = {"token_secret": token.secret, "csr": csr_pem.decode(), "hostname": hostname}
        try:
            async with self.session.post(
                url, json=payload, ssl=ctx, proxy=self.proxy, proxy_auth=self.proxy_auth
            ) as resp:
                body = await resp.content.read(_MAX_RESPONSE)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _describe_client_error(exc, url, self.proxy_shown, self.proxy_auth is not None) from exc
        try:
            data = loads_json(body)
        except ValueError:
            data = None
        if status != 200:
            code = data.get("error") if isinstance(data, dict) else None
            message = data.get("message") if isinstance(data, dict) else None
            if code in _TOKEN_ERRORS:
                raise FirstbootError(_TOKEN_ERRORS[code], reason=Reason.TOKEN)
            # The plane's words, escaped: they end up on the console and in the one-line last-error.
            said = printable(message) if isinstance(message, str) and message else repr(body[:200])
            raise FirstbootError(
                f"plane refused registration (HTTP {status}, {printable(str(code))}): {said}"
            )
        if not isinstance(data, dict):
            raise FirstbootError(f"POST {url}: response is not a JSON object")
        return data


def _check_hostname(hostname: str) -> str:
    if not valid_reported_hostname(hostname):
        raise FirstbootError(f"--hostname: {hostname!r} is not a valid host name")
    return hostname


def _make_csr(key: ec.EllipticCurvePrivateKey, hostname: str) -> bytes:
    # The plane sets the subject (CN = the gateway id it assigns); the hostname is only informative.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _prepare_key(state_dir: Path, force: bool) -> ec.EllipticCurvePrivateKey:
    """Reuse a key left by an interrupted registration (the plane lets it redeem its token again)."""
    key_path = state_dir / KEY_FILE
    if not force:
        existing = _load_key(key_path)
        if existing is not None:
            log.info("reusing the key in %s from an unfinished registration", key_path)
            return existing
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Stored before the request so a power cut after the plane signs does not strand the token.
    write_atomic(key_path, pem, 0o600)
    return key


def _prepare_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise FirstbootError(f"{state_dir}: cannot create state dir: {exc.strerror}") from exc
    if not os.access(state_dir, os.W_OK):
        raise FirstbootError(f"{state_dir}: not writable")
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o077:
        # The identity dir is private (spec: 0700); tighten a pre-existing looser one.
        log.info("%s: mode %o tightened to 0700", state_dir, mode)
        state_dir.chmod(0o700)


def _check_response(
    data: dict[str, Any], key: ec.EllipticCurvePrivateKey, pinned: list[x509.Certificate]
) -> tuple[str, bytes]:
    gateway_id, cert_pem = data.get("gateway_id"), data.get("certificate")
    if not isinstance(gateway_id, str) or not isinstance(cert_pem, str):
        raise FirstbootError("plane response lacks gateway_id or certificate")
    if not _GATEWAY_ID_RE.fullmatch(gateway_id):
        raise FirstbootError(f"plane response: gateway_id {gateway_id[:80]!r} is not a plain identifier")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        raise FirstbootError("plane response: certificate is not PEM") from exc
    if not same_public_key(key, cert):
        raise FirstbootError("plane response: certificate is not for our key")
    if not _issued_by_any(cert, pinned):
        raise FirstbootError("plane response: certificate is not signed by the pinned plane CA")
    if _cn(cert) != gateway_id:
        raise FirstbootError(
            f"plane response: certificate CN {_cn(cert)!r} is not the gateway id {gateway_id!r}"
        )
    return gateway_id, cert_pem.encode()


async def register_async(
    token: JoinToken | str,
    state_dir: Path,
    *,
    hostname: str,
    proxy_url: str | None = None,
    timeout: float = 30,
    force: bool = False,
) -> Identity:
    """Enrol with the plane and store the identity; one for the same plane is kept unless `force`."""
    if isinstance(token, str):
        try:
            token = parse_token(token)
        except InvalidToken as exc:
            raise FirstbootError(exc.message) from None  # a first-boot step failure, like the rest
    hostname = _check_hostname(hostname)
    existing = load_identity(state_dir)
    if existing is not None and not force and existing.plane_url == token.plane_url:
        return existing
    if token.expired():
        # The local clock may be wrong before NTP syncs; the plane's verdict is the one that counts.
        log.warning("join token looks expired by the local clock; asking the plane anyway")
    _prepare_state_dir(state_dir)
    client_timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10))
    async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session:
        client = _Client(session, proxy_url)
        pinned, ca_pem = await client.fetch_ca(token)
        # A key is reused only to finish an interrupted enrolment, never from a complete identity.
        key = _prepare_key(state_dir, force or existing is not None)
        data = await client.post_register(token, ca_pem, _make_csr(key, hostname), hostname)
    gateway_id, cert_pem = _check_response(data, key, pinned)
    registered_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    write_atomic(state_dir / CERT_FILE, cert_pem, 0o644)
    write_atomic(state_dir / CA_FILE, ca_pem, 0o644)
    # identity.json goes last: its presence marks a complete enrolment.
    identity = {"gateway_id": gateway_id, "plane_url": token.plane_url, "registered_at": registered_at}
    write_atomic(state_dir / IDENTITY_FILE, (json.dumps(identity, indent=2) + "\n").encode(), 0o644)
    log.info("registered as gateway %s with %s", gateway_id, token.plane_url)
    return Identity(gateway_id, token.plane_url, registered_at, state_dir)


def register(
    token: JoinToken | str,
    state_dir: Path,
    *,
    hostname: str,
    proxy_url: str | None = None,
    timeout: float = 30,
    force: bool = False,
) -> Identity:
    """Synchronous register_async (for callers without an event loop)."""
    return asyncio.run(
        register_async(token, state_dir, hostname=hostname, proxy_url=proxy_url, timeout=timeout, force=force)
    )


def run_register(args: argparse.Namespace) -> int:
    """The `firstboot register` subcommand: enrol unless a valid identity exists (or --force)."""
    state_dir = Path(args.state_dir)
    existing = load_identity(state_dir)
    if existing is not None and not args.force:
        print(
            f"already registered as gateway {existing.gateway_id} with {existing.plane_url}"
            " (use --force to re-register)"
        )
        return 0
    token_text = args.token
    if token_text == "-":
        token_text = sys.stdin.readline()
    identity = register(
        token_text,
        state_dir,
        hostname=args.hostname or socket.gethostname(),
        proxy_url=args.proxy,
        timeout=args.timeout,
        force=args.force,
    )
    print(f"registered as gateway {identity.gateway_id} with {identity.plane_url}; identity in {state_dir}")
    return 0

"""firstboot register's pure parts: failure wording, proxy URL handling, stored identity checks."""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot.errors import FirstbootError, Reason
from firstboot.register.client import _describe_client_error, _proxy_args, load_identity
from mgmtplane.ca import load_or_create_ca

KEY = ConnectionKey("plane.example.com", 8443, True, True, None, None, None)
WHERE = "https://plane.example.com:8443/v1/ca"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            aiohttp.ClientConnectorDNSError(KEY, socket.gaierror(-2, "Name or service not known")),
            "DNS failure",
        ),
        (
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused")),
            "plane unreachable",
        ),
        (
            aiohttp.ClientProxyConnectionError(KEY, ConnectionRefusedError(111, "Connection refused")),
            "cannot reach proxy",
        ),
        (
            aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError("unknown ca")),
            "possible interception",
        ),
        (TimeoutError(), "did not answer in time"),
    ],
)
def test_failures_in_words(exc: BaseException, expected: str) -> None:
    err = _describe_client_error(exc, WHERE, "http://proxy:3128")
    assert isinstance(err, FirstbootError) and expected in str(err) and "\n" not in str(err)
    # The code the console explains (wizard.flow.explain), by what failed, not by the words.
    assert err.reason is REASONS[expected]


REASONS = {
    "DNS failure": Reason.DNS,
    "plane unreachable": Reason.UNREACHABLE,
    "cannot reach proxy": Reason.PROXY,
    "possible interception": Reason.INTERCEPTED,
    "did not answer in time": Reason.UNREACHABLE,
}


def _proxy_error(status: int) -> aiohttp.ClientHttpProxyError:
    return aiohttp.ClientHttpProxyError(request_info=None, history=(), status=status, message="x")  # type: ignore[arg-type]


def test_proxy_status_wording() -> None:
    assert "requires authentication (HTTP 407)" in str(_describe_client_error(_proxy_error(407), WHERE, "p"))
    assert _describe_client_error(_proxy_error(407), WHERE, "p").reason is Reason.PROXY_AUTH
    assert _describe_client_error(_proxy_error(401), WHERE, "p", True).reason is Reason.PROXY
    assert _describe_client_error(_proxy_error(502), WHERE, "p").reason is Reason.PROXY
    assert "rejected the proxy credentials" in str(
        _describe_client_error(_proxy_error(407), WHERE, "p", True)
    )
    assert "refused to connect" in str(_describe_client_error(_proxy_error(502), WHERE, "p"))


def test_proxy_credentials_split_and_hidden() -> None:
    url, auth, shown = _proxy_args("http://alice:p%40ss@proxy.lan:3128")
    assert str(url) == "http://proxy.lan:3128" and shown == "http://proxy.lan:3128"
    assert auth == aiohttp.BasicAuth("alice", "p@ss")
    assert _proxy_args(None) == (None, None, "")
    with pytest.raises(FirstbootError, match="--proxy") as info:
        _proxy_args("https://alice:secret@proxy.lan:3128")
    assert "secret" not in str(info.value)


def _identity(tmp_path: Path) -> tuple[Path, str]:
    ca = load_or_create_ca(tmp_path / "plane")
    gw = tmp_path / "gw"
    gw.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h")]))
        .sign(key, hashes.SHA256())
    )
    gateway_id = str(uuid.uuid4())
    (gw / "cert.pem").write_bytes(ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), gateway_id))
    (gw / "ca.pem").write_bytes(ca.cert_pem)
    (gw / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (gw / "identity.json").write_text(
        json.dumps(
            {
                "gateway_id": gateway_id,
                "plane_url": "https://p:1",
                "registered_at": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    return gw, gateway_id


def test_load_identity_accepts_consistent_files(tmp_path: Path) -> None:
    gw, gateway_id = _identity(tmp_path)
    identity = load_identity(gw)
    assert identity is not None and identity.gateway_id == gateway_id and identity.plane_url == "https://p:1"


@pytest.mark.parametrize(
    "damage", ["identity.json", "cert.pem", "key.pem", "ca.pem", "wrong-key", "wrong-ca", "wrong-id"]
)
def test_load_identity_rejects_incomplete_or_inconsistent(tmp_path: Path, damage: str) -> None:
    gw, _ = _identity(tmp_path)
    if damage == "wrong-key":
        other = ec.generate_private_key(ec.SECP256R1())
        (gw / "key.pem").write_bytes(
            other.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    elif damage == "wrong-ca":
        (gw / "ca.pem").write_bytes(load_or_create_ca(tmp_path / "other").cert_pem)
    elif damage == "wrong-id":
        data = json.loads((gw / "identity.json").read_text())
        (gw / "identity.json").write_text(json.dumps({**data, "gateway_id": str(uuid.uuid4())}))
    else:
        (gw / damage).unlink()
    assert load_identity(gw) is None

"""Registration against a plane that answers with hostile text: nothing raw reaches a file or the console.

The plane is untrusted. Its CA is pinned by the token, so a plane that holds the pinned CA's key (a
compromised plane) can still choose the gateway id it signs and the words of its refusals. Those
reach identity.json, /var/lib/firstboot/last-error (one line, shown by the wizard) and the console.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from firstboot.errors import FirstbootError
from firstboot.register.client import register_async
from gwcore.enrol import InvalidToken, encode_token, parse_token
from gwcore.pki import spki_sha256
from tests.integration.plane_helpers import wait_sockets_closed

Answer = Callable[["HostilePlane", bytes], web.Response]


class HostilePlane:
    """A plane on loopback whose CA the token pins, answering /v1/register as a test says."""

    def __init__(self, answer: Answer) -> None:
        self.ca = trustme.CA()
        self.answer = answer
        self.port = 0

    async def start(self) -> web.AppRunner:
        ca_pem = self.ca.cert_pem.bytes()

        async def get_ca(_request: web.Request) -> web.Response:
            return web.Response(body=ca_pem, content_type="application/x-pem-file")

        async def post_register(request: web.Request) -> web.Response:
            return self.answer(self, await request.read())

        app = web.Application()
        app.router.add_get("/v1/ca", get_ca)
        app.router.add_post("/v1/register", post_register)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(ctx)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        self.port = runner.addresses[0][1]
        return runner

    def token(self) -> str:
        ca = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        expires = int(dt.datetime.now(dt.UTC).timestamp()) + 3600
        return encode_token(f"https://127.0.0.1:{self.port}", spki_sha256(ca), "s3cret", expires)

    def sign(self, csr_pem: str, common_name: str) -> str:
        """A real certificate for the gateway's key, with the CN the plane chooses."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        ca_key: Any = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), password=None)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()


StartPlane = Callable[[Answer], Awaitable[HostilePlane]]


@pytest.fixture
async def start_plane() -> AsyncIterator[StartPlane]:
    started: list[tuple[HostilePlane, web.AppRunner]] = []

    async def start(answer: Answer) -> HostilePlane:
        plane = HostilePlane(answer)
        started.append((plane, await plane.start()))
        return plane

    yield start
    for plane, runner in started:
        await runner.cleanup()
        await wait_sockets_closed(plane.port)


def signed_as(gateway_id: str) -> Answer:
    """A plane that signs the gateway's CSR and names it gateway_id."""

    def answer(plane: HostilePlane, body: bytes) -> web.Response:
        cert = plane.sign(json.loads(body)["csr"], gateway_id or "x")
        return web.json_response({"gateway_id": gateway_id, "certificate": cert})

    return answer


@pytest.mark.parametrize(
    "gateway_id",
    ["gw\n\x1b[2Jforged", "../../etc/passwd", "id with spaces", "\u202eevil", ""],
)
async def test_a_hostile_gateway_id_is_refused(
    start_plane: StartPlane, tmp_path: Path, gateway_id: str
) -> None:
    plane = await start_plane(signed_as(gateway_id))
    with pytest.raises(FirstbootError) as err:
        await register_async(plane.token(), tmp_path / "gw", hostname="gw", timeout=10)
    message = str(err.value)
    assert "is not a plain identifier" in message or "certificate CN" in message
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message
    assert not (tmp_path / "gw/identity.json").exists()


async def test_a_plain_gateway_id_is_accepted(start_plane: StartPlane, tmp_path: Path) -> None:
    gid = "3f6c9a1e-0000-4000-8000-00000000000a"
    plane = await start_plane(signed_as(gid))
    identity = await register_async(plane.token(), tmp_path / "gw", hostname="gw", timeout=10)
    assert identity.gateway_id == gid


async def test_the_planes_refusal_is_one_escaped_line(start_plane: StartPlane, tmp_path: Path) -> None:
    said = "no such site\nDNS=203.0.113.66\x1b[2J\x1b]0;pwned\x07"

    def answer(_plane: HostilePlane, _body: bytes) -> web.Response:
        return web.json_response({"error": "bad\rrequest", "message": said}, status=400)

    plane = await start_plane(answer)
    with pytest.raises(FirstbootError) as err:
        await register_async(plane.token(), tmp_path / "gw", hostname="gw", timeout=10)
    message = str(err.value)
    assert message.startswith("plane refused registration (HTTP 400, bad\\rrequest): no such site\\nDNS=")
    assert all(ch.isprintable() for ch in message), message


@pytest.mark.parametrize(
    "url",
    [
        "https://plane.example.com\x1b[2J:8443",
        "https://plane\n.example.com:8443",
        "https://plane.example.com:8443/\x1b]0;x\x07",
        "https://pla ne.example.com:8443",
        "https://user@plane.example.com:8443",
        "https://plane.example.com:8443/v1?x=1",
        "https://plane.example.com:8443#frag",
    ],
)
def test_a_token_carrying_a_hostile_plane_url_is_refused(url: str) -> None:
    token = encode_token(url, "sha256:" + "ab" * 32, "s3cret", 2_000_000_000)
    with pytest.raises(InvalidToken) as err:
        parse_token(token)
    message = str(err.value)
    assert message.startswith("join token: u: ")
    assert all(ch.isprintable() for ch in message), message


def test_the_token_url_is_the_one_the_settings_use() -> None:
    token = encode_token("https://plane.example.com:8443/", "sha256:" + "ab" * 32, "s3cret", 2_000_000_000)
    assert parse_token(token).plane_url == "https://plane.example.com:8443"


async def test_a_hostname_with_a_trailing_newline_is_refused_before_any_request(tmp_path: Path) -> None:
    # The host name goes into the CSR and the plane's inventory; '$' in a regex lets "gw\n" through.
    token = encode_token("https://127.0.0.1:9", "sha256:" + "ab" * 32, "s3cret", 2_000_000_000)
    with pytest.raises(FirstbootError, match=r"^--hostname: 'gw-01\\n' is not a valid host name$"):
        await register_async(token, tmp_path / "gw", hostname="gw-01\n", timeout=5)

"""TLS targets on the lean client: each trust rule of targets.yaml, SNI and the host-name check."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import HostilePlane, RecordingTarget, request_frames
from tests.integration.tunnel_support import write_policies

pytestmark = pytest.mark.integration


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[dict[str, RecordingTarget], list[str], Path, str]]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    seen_sni: list[str] = []

    def context(*names: str) -> tuple[ssl.SSLContext, bytes]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert = ca.issue_cert(*names)
        cert.configure_cert(ctx)
        ctx.sni_callback = lambda _sock, name, _ctx: seen_sni.append(str(name))  # type: ignore[assignment,misc]
        return ctx, ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())

    good_ctx, good_der = context("localhost", "127.0.0.1")
    wrong_ctx, _der = context("other.example")
    pin = "sha256:" + hashlib.sha256(good_der).hexdigest()
    async with (
        RecordingTarget(ssl_context=good_ctx).running() as good,
        RecordingTarget(ssl_context=wrong_ctx).running() as wrong,
    ):
        yield {"good": good, "wrong-name": wrong}, seen_sni, tmp_path, pin


def relay_for(tmp_path: Path, items: list[dict[str, object]]) -> Relay:
    from gateway.filter.policy import load_policies

    for item in items:
        item.setdefault("allow_private", ["127.0.0.1", "::1"])
    return Relay(parse_targets({"targets": items}, "test"), load_policies([write_policies(tmp_path)]))


async def call(relay: Relay, target: str) -> tuple[int | None, p.ErrorCode | None, str]:
    async with HostilePlane(relay) as plane:
        plane.feed(request_frames(1, "GET", target, "/x"))
        out = await plane.outcome(1)
    return out.status, out.reset, out.message


async def test_trust_rules_sni_and_host_name(servers) -> None:  # type: ignore[no-untyped-def]
    targets, seen_sni, tmp_path, pin = servers
    good, wrong = targets["good"], targets["wrong-name"]
    ca = str(tmp_path / "ca.pem")
    relay = relay_for(
        tmp_path,
        [
            {"name": "ca", "url": f"https://localhost:{good.port}", "tls": {"ca_file": ca}},
            {"name": "pin", "url": f"https://127.0.0.1:{good.port}", "tls": {"fingerprint": pin}},
            {
                "name": "badpin",
                "url": f"https://127.0.0.1:{good.port}",
                "tls": {"fingerprint": "sha256:" + "00" * 32},
            },
            {"name": "insecure", "url": f"https://127.0.0.1:{wrong.port}", "tls": {"insecure": True}},
            {"name": "wrong-name", "url": f"https://127.0.0.1:{wrong.port}", "tls": {"ca_file": ca}},
            {"name": "system", "url": f"https://127.0.0.1:{good.port}"},
            {
                "name": "missing-ca",
                "url": f"https://127.0.0.1:{good.port}",
                "tls": {"ca_file": "/nonexistent.pem"},
            },
        ],
    )
    try:
        assert (await call(relay, "ca"))[0] == 200
        assert seen_sni[-1] == "localhost"  # SNI carries the URL's host, not the address dialled
        assert (await call(relay, "pin"))[0] == 200
        assert (await call(relay, "insecure"))[0] == 200
        for name in ("badpin", "wrong-name", "system", "missing-ca"):
            status, code, message = await call(relay, name)
            assert (status, code) == (None, p.ErrorCode.TLS_VERIFY_FAILED), (name, message)
        assert "not valid for '127.0.0.1'" in (await call(relay, "wrong-name"))[2]
    finally:
        await relay.close()
    assert [r.path for r in wrong.requests] == ["/x"]  # only the insecure target reached it

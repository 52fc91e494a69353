"""The retry policy as a table: only explicit rejections stop; everything else is retried.

The exceptions here are built by hand in the shapes aiohttp and ssl raise; the integration tests
(test_tunnel_security, test_tunnel_outage) get the same verdicts from real handshakes.
"""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.tunnel.retry_policy import (
    PROXY_AUTH_DELAY,
    SILENT_CLOSE_HINT_AFTER,
    TUNNEL_ERROR_HEADER,
    classify,
    clean,
    received_alert,
)


def upgrade_refused(status: int, hub: str | None = None) -> aiohttp.WSServerHandshakeError:
    headers = CIMultiDict({TUNNEL_ERROR_HEADER: hub} if hub is not None else {})
    return aiohttp.WSServerHandshakeError(
        None,  # type: ignore[arg-type]
        (),
        status=status,
        message="Invalid response status",
        headers=CIMultiDictProxy(headers),
    )


def proxy_refused(status: int) -> aiohttp.ClientHttpProxyError:
    return aiohttp.ClientHttpProxyError(None, (), status=status, message="Proxy Authentication Required")  # type: ignore[arg-type]


def alert(reason: str) -> aiohttp.ClientOSError:
    """What aiohttp raises when the plane's alert arrives after our side of a TLS 1.3 handshake."""
    inner = ssl.SSLError(1, f"[SSL: {reason}] alert")
    inner.reason = reason
    outer = aiohttp.ClientOSError(1, str(inner))
    outer.__cause__ = inner
    return outer


def verify_failed(code: int, message: str) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    err.verify_code = code
    err.verify_message = message
    return err


STOPS = [
    (upgrade_refused(403, "gateway-unknown: gateway g is not registered"), "HTTP 403 gateway-unknown"),
    (upgrade_refused(401, "client-certificate-required: needs one"), "HTTP 401 client-certificate-required"),
    (alert("TLSV1_ALERT_UNKNOWN_CA"), "TLS alert unknown_ca"),
    (alert("SSLV3_ALERT_CERTIFICATE_REVOKED"), "revoked our client certificate"),
    (alert("SSLV3_ALERT_CERTIFICATE_EXPIRED"), "TLS alert certificate_expired"),
    (alert("SSLV3_ALERT_BAD_CERTIFICATE"), "TLS alert bad_certificate"),
    (alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "TLS alert certificate_required"),
    (alert("TLSV1_ALERT_ACCESS_DENIED"), "TLS alert access_denied"),
    (verify_failed(20, "unable to get local issuer certificate"), "pinned at registration"),
    (verify_failed(18, "self-signed certificate"), "pinned at registration"),
]


@pytest.mark.parametrize(("exc", "says"), STOPS)
def test_explicit_rejections_stop(exc: BaseException, says: str) -> None:
    verdict = classify(exc)
    assert verdict.stop, verdict
    assert says in verdict.error
    assert verdict.action  # an operator always gets something to do


RETRIES = [
    (aiohttp.ServerDisconnectedError(), "closed the connection without answering (1 in a row)"),
    (upgrade_refused(503), "HTTP 503"),
    (upgrade_refused(502), "HTTP 502"),
    (upgrade_refused(404), "HTTP 404"),
    # A 403 without the hub's header comes from something in front of the plane.
    (upgrade_refused(403), "not from the plane's hub"),
    (upgrade_refused(401), "not from the plane's hub"),
    (proxy_refused(502), "the proxy refused the CONNECT to the plane with HTTP 502"),
    (proxy_refused(403), "HTTP 403"),
    (alert("SSLV3_ALERT_HANDSHAKE_FAILURE"), "TLS alert handshake_failure"),
    (alert("TLSV1_ALERT_INTERNAL_ERROR"), "TLS alert internal_error"),
    (verify_failed(10, "certificate has expired"), "certificate has expired"),
    (verify_failed(9, "certificate is not yet valid"), "not yet valid"),
    (verify_failed(62, "Hostname mismatch, certificate is not valid for 'plane'."), "Hostname mismatch"),
    (ConnectionResetError(104, "Connection reset by peer"), "Connection reset by peer"),
    (TimeoutError(), "within the connect timeout"),
    (ConnectionError("tunnel closed during HELLO"), "tunnel closed during HELLO"),
]


@pytest.mark.parametrize(("exc", "says"), RETRIES)
def test_everything_else_is_retried(exc: BaseException, says: str) -> None:
    verdict = classify(exc)
    assert not verdict.stop, verdict
    assert says in verdict.error
    assert verdict.min_delay == 0


def test_proxy_credentials_refused_are_retried_slowly() -> None:
    for status in (407, 401):  # tinyproxy answers a bad BasicAuth with 401
        verdict = classify(proxy_refused(status))
        assert not verdict.stop and verdict.min_delay == PROXY_AUTH_DELAY
        assert f"proxy refused our credentials (HTTP {status})" in verdict.error
        assert verdict.action is not None and "proxy" in verdict.action


def test_clock_problems_point_at_the_clock() -> None:
    action = classify(verify_failed(10, "certificate has expired")).action
    assert action is not None and "NTP" in action


def test_silent_closes_are_counted_and_explained_but_never_stop() -> None:
    for before in range(50):
        verdict = classify(aiohttp.ServerDisconnectedError(), before)
        assert not verdict.stop and verdict.silent_close
        assert f"({before + 1} in a row)" in verdict.error
        assert (verdict.action is not None) is (before + 1 >= SILENT_CLOSE_HINT_AFTER)


def test_alert_found_anywhere_in_the_chain() -> None:
    wrapped = RuntimeError("outer")
    wrapped.__context__ = alert("TLSV1_ALERT_UNKNOWN_CA")
    assert received_alert(wrapped) == "unknown_ca"
    assert received_alert(ValueError("plain")) is None
    loop = RuntimeError("loop")  # a cycle in the chain must not hang the walk
    loop.__context__ = loop
    assert received_alert(loop) is None


def test_the_hubs_words_are_cleaned() -> None:
    hostile = "gateway-unknown: \x1b[31mred\r\nX-Injected: 1" + "x" * 1000
    verdict = classify(upgrade_refused(403, hostile))
    assert verdict.stop and "\x1b" not in verdict.error and "\n" not in verdict.error
    assert len(verdict.error) < 400
    assert clean("a\tb\x00c") == "a b c"


@pytest.mark.parametrize(
    ("exc", "code", "says"),
    [
        (
            upgrade_refused(403, "gateway-revoked: revoked at noon"),
            "revoked",
            "revoked by the plane (HTTP 403",
        ),
        (
            upgrade_refused(403, "gateway-deleted: gone"),
            "revoked",
            "revoked by the plane: the gateway was deleted",
        ),
        (upgrade_refused(403, "certificate-superseded: newer"), "superseded", "it issued a newer one"),
        (upgrade_refused(403, "gateway-unknown: g"), "unknown-gateway", "HTTP 403 gateway-unknown"),
        (upgrade_refused(403, "something-else: x"), "refused", "the plane refused this gateway"),
        (alert("SSLV3_ALERT_CERTIFICATE_EXPIRED"), "expired", "has expired"),
        (alert("SSLV3_ALERT_CERTIFICATE_REVOKED"), "revoked", "revoked our client certificate"),
        (alert("TLSV1_ALERT_UNKNOWN_CA"), "unknown-ca", "unknown_ca"),
        (verify_failed(20, "unable to get local issuer certificate"), "pin", "pinned at registration"),
    ],
)
def test_each_stop_carries_a_code_the_console_keys_on(exc: BaseException, code: str, says: str) -> None:
    verdict = classify(exc)
    assert verdict.stop and verdict.code == code and says in verdict.error, verdict
    if code in ("revoked", "expired", "superseded"):
        assert verdict.action is not None and "mgmtplane token create --gateway ID" in verdict.action


def test_retried_failures_carry_no_stop_code() -> None:
    assert all(classify(exc).code is None for exc, _ in RETRIES)

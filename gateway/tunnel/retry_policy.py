"""The tunnel's retry policy: which failed attempts stop the daemon, and what an operator can do.

Only an explicit rejection stops it (docs/protocol.md §1, §11): HTTP 401/403 from the plane's hub
on the WebSocket upgrade, a TLS alert about our certificate, or a plane certificate that does not
chain to the CA pinned at registration. Everything else (refused or reset connections, silent
closes, timeouts, 5xx, a proxy's refusals) is retried with backoff for as long as it takes: a
plane restarting behind a load balancer must never stop every appliance.

No I/O: an exception in, a Verdict out.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from gwcore import identity as idm
from gwcore.httpwire import TUNNEL_ERROR_HEADER

# After a proxy refuses our credentials, wait at least this long: a proxy backed by a directory
# may lock the account after a few failures in a row, and the fix takes a person anyway.
PROXY_AUTH_DELAY = 300.0

REREGISTER = "re-register the gateway with a new join token (status console: Re-register)"
# When the plane still knows the gateway, a token made for it keeps its id (docs/operate.md).
REENROL = (
    "re-enrol the gateway with a new join token (status console: Re-register); a token made with"
    " 'mgmtplane token create --gateway ID' keeps this gateway's id"
)

# Verdict.code of a stop: what the console and the identity status key on, never the words.
REVOKED = "revoked"
EXPIRED = "expired"
SUPERSEDED = "superseded"
UNKNOWN_GATEWAY = "unknown-gateway"
UNKNOWN_CA = "unknown-ca"
PIN = "pin"
REFUSED = "refused"
CERTIFICATE = "certificate"

# TLS alerts by which the plane says "I do not accept your certificate" -> (what it means, what to do).
# handshake_failure and the like are not here: they say nothing about our certificate.
CERTIFICATE_ALERTS: dict[str, tuple[str, str, str]] = {
    "bad_certificate": ("the plane rejected our client certificate", REREGISTER, CERTIFICATE),
    "unsupported_certificate": ("the plane rejected our client certificate", REREGISTER, CERTIFICATE),
    "certificate_unknown": ("the plane rejected our client certificate", REREGISTER, CERTIFICATE),
    "unknown_ca": (
        "the plane does not trust the CA that issued our client certificate"
        " (registered with another plane, or the plane's CA changed)",
        REREGISTER,
        UNKNOWN_CA,
    ),
    "certificate_revoked": ("the plane has revoked our client certificate", REENROL, REVOKED),
    # Offline past the certificate's expiry (or a clock far ahead): not bricked, re-enrolled.
    "certificate_expired": ("the plane says our client certificate has expired", REENROL, EXPIRED),
    "certificate_required": (
        "the plane required a client certificate and got none",
        "check /var/lib/gateway/cert.pem and key.pem, or " + REREGISTER,
        CERTIFICATE,
    ),
    "access_denied": (
        "the plane denied this gateway access",
        "ask the plane's operator whether this gateway was removed; if so, " + REREGISTER,
        REFUSED,
    ),
}

# OpenSSL verify codes that mean "this chain does not lead to the pinned CA" (or a forged
# signature on the way). Expiry, not-yet-valid and name mismatches are not here: a certificate
# from our own pinned CA fails those for reasons the plane's operator (or NTP) fixes, and the
# appliance should come back by itself when they do.
PIN_FAILURES = frozenset(
    {
        2,  # unable to get issuer certificate
        4,  # unable to decrypt certificate's signature
        6,  # unable to decode issuer public key
        7,  # certificate signature failure
        18,  # self-signed certificate
        19,  # self-signed certificate in certificate chain
        20,  # unable to get local issuer certificate
        21,  # unable to verify the first certificate
        24,  # invalid CA certificate
    }
)
PIN_ACTION = (
    "if the plane's CA was replaced on purpose, re-register the gateway with a new join token, which"
    " pins the new CA (status console: Re-register); otherwise something between the appliance and"
    " the plane intercepts TLS (a TLS-inspecting proxy: exempt the plane's host name)"
)
_CLOCK_CODES = {9: "not yet valid", 10: "expired"}

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
SILENT_CLOSE_HINT_AFTER = 5


@dataclass(frozen=True)
class Verdict:
    """What one failed attempt means."""

    error: str  # one line, for the journal and the status file
    stop: bool = False  # an explicit rejection: stop retrying, exit 78
    action: str | None = None  # what an operator can do
    min_delay: float = 0.0  # the next backoff delay is at least this
    silent_close: bool = False  # the peer closed without a word (counted by the caller)
    code: str | None = None  # for a stop: the refusal as a code (REVOKED, EXPIRED, ...)


def clean(text: str, limit: int = 300) -> str:
    """Peer-supplied text made safe for one log line: printable ASCII, bounded."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _os_reason(err: OSError) -> str:
    # asyncio words a refused connect as "Connect call failed (addr)"; the errno says it plainly.
    if err.errno:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__


def _verify_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    for cur in _chain(exc):
        if isinstance(cur, aiohttp.ClientConnectorCertificateError):
            inner = cur.certificate_error
            if isinstance(inner, ssl.SSLCertVerificationError):
                return inner
        elif isinstance(cur, ssl.SSLCertVerificationError):
            return cur
    return None


def received_alert(exc: BaseException) -> str | None:
    """The TLS alert the peer sent (e.g. "unknown_ca"), if that is what ended the attempt."""
    for cur in _chain(exc):
        reason = getattr(cur, "reason", None) if isinstance(cur, ssl.SSLError) else None
        # OpenSSL names a received alert SSLV3_ALERT_*, TLSV1_ALERT_* or TLSV13_ALERT_*.
        if isinstance(reason, str) and "_ALERT_" in reason:
            return reason.split("_ALERT_", 1)[1].lower()
    return None


def _upgrade_refused(exc: aiohttp.WSServerHandshakeError) -> Verdict:
    status = exc.status
    hub_says = exc.headers.get(TUNNEL_ERROR_HEADER) if exc.headers is not None else None
    if status in (401, 403) and hub_says is not None:
        detail = clean(hub_says)
        hub_code = detail.split(":", 1)[0].strip()
        if hub_code in (idm.GATEWAY_REVOKED, idm.GATEWAY_DELETED):
            deleted = hub_code == idm.GATEWAY_DELETED
            what = "revoked by the plane" + (": the gateway was deleted" if deleted else "")
            return Verdict(f"{what} (HTTP {status} {detail})", stop=True, action=REENROL, code=REVOKED)
        if hub_code == idm.CERTIFICATE_SUPERSEDED:
            return Verdict(
                f"the plane refused this certificate: it issued a newer one for this gateway (HTTP {status}"
                f" {detail})",
                stop=True,
                action="if another appliance runs with this identity (a clone, a restored snapshot), stop"
                " it; then " + REENROL,
                code=SUPERSEDED,
            )
        error = f"the plane refused this gateway: HTTP {status} {detail}"
        if "client-certificate-required" in detail:
            action = (
                "the plane did not see our client certificate: a load balancer in front of it must"
                " pass TLS through (or forward client certificates); otherwise " + REREGISTER
            )
        else:
            action = REREGISTER
        code = UNKNOWN_GATEWAY if hub_code == idm.GATEWAY_UNKNOWN else REFUSED
        return Verdict(error, stop=True, action=action, code=code)
    if status in (401, 403):
        return Verdict(
            f"HTTP {status} on the tunnel upgrade, not from the plane's hub (no {TUNNEL_ERROR_HEADER}"
            " header): something in front of the plane refused it",
            action="check the load balancer or firewall in front of the plane",
        )
    return Verdict(f"the plane answered the tunnel upgrade with HTTP {status} {clean(exc.message)}".strip())


def _proxy_refused(exc: aiohttp.ClientHttpProxyError, auth_delay: float) -> Verdict:
    status = exc.status
    if status in (401, 407):
        # 407 is the standard answer; tinyproxy's BasicAuth answers CONNECT with 401.
        return Verdict(
            f"the proxy refused our credentials (HTTP {status})",
            action="correct the proxy user and password in the appliance's proxy setting, or the"
            " account on the proxy; the gateway retries every few minutes",
            min_delay=auth_delay,
        )
    return Verdict(
        f"the proxy refused the CONNECT to the plane with HTTP {status} {clean(exc.message)}".strip(),
        action="check that the proxy allows CONNECT to the plane's host and port",
    )


def _certificate_failed(err: ssl.SSLCertVerificationError) -> Verdict:
    code = err.verify_code
    message = clean(str(err.verify_message or err))
    if code in PIN_FAILURES:
        return Verdict(
            f"the plane's certificate does not verify against the CA pinned at registration: {message}",
            stop=True,
            action=PIN_ACTION,
            code=PIN,
        )
    if code in _CLOCK_CODES:
        action = (
            f"the plane's certificate is {_CLOCK_CODES[code]} by this appliance's clock: check the"
            " time (NTP); if the clock is right, the plane must renew its certificate"
        )
    else:
        action = "the plane must serve a certificate from its CA that names the host in its URL"
    return Verdict(f"the plane's certificate is not acceptable: {message}", action=action)


def classify(
    exc: BaseException, silent_closes: int = 0, proxy_auth_delay: float = PROXY_AUTH_DELAY
) -> Verdict:
    """What a failed attempt means; `silent_closes` is how many silent closes came just before it."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return _upgrade_refused(exc)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return _proxy_refused(exc, proxy_auth_delay)
    verify = _verify_error(exc)
    if verify is not None:
        return _certificate_failed(verify)
    alert = received_alert(exc)
    if alert in CERTIFICATE_ALERTS:
        what, todo, code = CERTIFICATE_ALERTS[alert]
        return Verdict(f"{what} (TLS alert {alert})", stop=True, action=todo, code=code)
    if alert is not None:
        return Verdict(f"the TLS handshake with the plane failed (TLS alert {alert})")
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return Verdict(f"the TLS handshake with {exc.host}:{exc.port} failed: {clean(str(exc.os_error))}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Verdict(f"cannot connect to {exc.host}:{exc.port}: {clean(_os_reason(exc.os_error))}")
    if isinstance(exc, TimeoutError):
        return Verdict("no answer from the plane within the connect timeout")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # A plane restarting behind a load balancer does this; so does a plane that refuses our
        # certificate without sending the alert. Only the first is retried in vain for long.
        count = silent_closes + 1
        hint = None
        if count >= SILENT_CLOSE_HINT_AFTER:
            hint = (
                "if the plane is up, it (or a load balancer in front of it) may be refusing this"
                " gateway without saying so: check the plane's log for this gateway"
            )
        return Verdict(
            f"the plane closed the connection without answering ({count} in a row)",
            action=hint,
            silent_close=True,
        )
    text = clean(str(exc))
    return Verdict(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)

"""The gateway's identity while it runs: renew the certificate, follow the plane's CA, obey revocation.

One IdentityManager per daemon. It owns three things on the tunnel's control channel
(docs/protocol.md §13.1):

- renewal: two thirds into the certificate's validity (gateway.identity.schedule) it makes a new
  P-256 key (written 0600, never sent), sends a CSR in a `renew` request, checks the `renewed`
  certificate (gateway.identity.trust), stores the pair atomically (gateway.identity.store) and
  has the tunnel move to it (make before break). A failure keeps the old pair and retries with
  backoff; a plane that does not renew is shown, not retried in a loop.
- `ca-update`: a new trusted CA set, accepted only with a cross-certificate from a CA already
  trusted; when the plane signs with another CA now, a renewal follows soon.
- `revoked`: the plane revoked or deleted this gateway; the tunnel stops for good (exit 78).

The daemon wires it (gateway.daemon): the tunnel's callbacks go in, the status fields come out.

Memory: between renewals the manager needs only what gwcore.certs reads from the DER: its
certificate's dates and CN, and for the `ca-update` every new tunnel hears, the CAs' fingerprints
and key ids. `cryptography` (7-8 MiB resident once imported, the largest part of the gateway's
footprint that the relay never uses) is imported only to renew and to check a CA set that changed,
every few weeks (docs/relay-performance.md "Memory").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.errors import GatewayError
from gateway.identity import schedule
from gateway.identity.store import IdentityChanged, PairStore
from gwcore import identity as idm
from gwcore.certs import CertInfo, cert_info, pem_bundle_to_der, pem_to_der
from gwcore.control import ControlChannel, ControlError, Message
from gwcore.redact import printable
from gwcore.status_file import TunnelReport

if TYPE_CHECKING:  # the modules that import cryptography: loaded only where they are used
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)

RENEW_TIMEOUT = 30.0
POLL = 0.25  # how often the manager looks whether a tunnel that takes control messages is up
LOOK = 2.0  # between renewals: how often it looks whether the plane takes control messages
NO_CONTROL = "the plane does not take control messages (no control.1 in its HELLO)"

# Identity states in the status file (docs/status-file.md).
VALID = "valid"
RENEWAL_FAILING = "renewal-failing"
RENEWAL_UNAVAILABLE = "renewal-unavailable"
REVOKED = "revoked"
EXPIRED = "expired"
REFUSED = "refused"
# The tunnel's stop codes (gateway.tunnel.retry_policy) that are about the identity.
_STOP_IDENTITY = {"revoked": REVOKED, "expired": EXPIRED, "superseded": REFUSED, "unknown-gateway": REFUSED,
                  "unknown-ca": REFUSED}  # fmt: skip

Rotate = Callable[[], Awaitable[bool]]
Reject = Callable[[str, str, str], None]


def _reenrol(gateway_id: str) -> str:
    return (
        "re-enrol with a new join token (status console: Re-register); to keep this gateway's id,"
        f" create it on the plane with 'mgmtplane token create --gateway {gateway_id}'"
    )


class IdentityManager:
    """Renewal, CA updates and revocation for one gateway identity (docs/operate.md)."""

    def __init__(
        self,
        store: PairStore,
        control: ControlChannel,
        *,
        rotate: Rotate,
        reload_trust: Callable[[], None],
        reject: Reject,
        tunnel_up: Callable[[], bool],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.control = control
        self._rotate = rotate
        self._reload_trust = reload_trust
        self._reject = reject
        self._tunnel_up = tunnel_up
        self._on_change = on_change
        self._clock = clock
        self._rand = rand
        self.state = VALID
        self.renewals = 0
        self.renew_error: str | None = None
        self.last_renewal_s: float | None = None  # CSR made -> new pair in use, of the last renewal
        self.renew_at: float | None = None
        self._attempt = 0
        self._wake = asyncio.Event()
        self._pair: tuple[bytes, bytes] = (b"", b"")
        self.cert: CertInfo | None = None
        self.gateway_id = ""
        self._cas_pem = b""  # ca.pem as loaded
        self._trusted: list[x509.Certificate] | None = None  # parsed from it when first needed
        self._trusted_info: list[CertInfo] = []
        self.load()

    # --- wiring ---------------------------------------------------------------------------------

    def register(self) -> None:
        """Serve the plane's identity messages on the control channel (the one place they are wired)."""
        self.control.register(idm.CA_UPDATE, self._on_ca_update)
        self.control.register(idm.REVOKED, self._on_revoked)

    def load(self) -> None:
        """Read the pair and the CA bundle in use and schedule the next renewal; GatewayError if unusable."""
        state_dir = self.store.state_dir
        try:
            self._pair = self.store.load()
            cas = self.store.read_cas()
        except OSError as exc:
            raise GatewayError(f"{state_dir}: cannot read the identity: {exc}") from None
        try:
            self.cert = cert_info(pem_to_der(self._pair[1]))
        except ValueError:
            raise GatewayError(
                f"{state_dir}: cannot read the identity: {state_dir}/cert.pem: not a PEM certificate"
            ) from None
        try:
            self._trusted_info = [cert_info(der) for der in pem_bundle_to_der(cas)]
        except ValueError:
            raise GatewayError(
                f"{state_dir}: cannot read the identity: ca.pem: not a PEM certificate bundle"
            ) from None
        self._cas_pem, self._trusted = cas, None
        self.gateway_id = self.cert.common_name
        self._schedule()

    def _trust_set(self) -> list[x509.Certificate]:
        """The trusted CAs as cryptography's certificates, for a renewal or a ca-update."""
        from gateway.identity.trust import load_bundle  # cryptography: see the module docstring

        if self._trusted is None:
            self._trusted = load_bundle(self._cas_pem)
        return self._trusted

    @property
    def period(self) -> float:
        """The validity of the certificate in use, in seconds."""
        assert self.cert is not None
        return schedule.validity(self.cert.not_before, self.cert.not_after)

    def _schedule(self) -> None:
        assert self.cert is not None
        self.renew_at = schedule.renew_at(self.cert.not_before, self.cert.not_after, self._rand())

    def annotate(self, report: TunnelReport) -> TunnelReport:
        """The tunnel's report with the identity's fields (docs/status-file.md)."""
        state = self.state
        if report.state == "rejected" and report.stop_code in _STOP_IDENTITY:
            state = _STOP_IDENTITY[report.stop_code]
        return dataclasses.replace(
            report,
            identity=state,
            cert_not_after=self.cert.not_after if self.cert is not None else None,
            renew_at=self.renew_at if state in (VALID, RENEWAL_FAILING, RENEWAL_UNAVAILABLE) else None,
            renewals=self.renewals,
            renew_error=self.renew_error,
        )

    # --- renewal --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew whenever due, for the life of the daemon (a revoked gateway stops renewing)."""
        while self.state != REVOKED:
            await self._sleep_until(self.renew_at or self._clock())
            if not await self._channel():
                continue
            delay = await self._renew_once()
            if delay is not None:
                self.renew_at = self._clock() + delay
                self._on_change()

    async def _sleep_until(self, when: float) -> None:
        # In slices: the wall clock may jump (NTP), a ca-update may ask for an early renewal, and
        # an operator should learn long before the renewal is due that this plane will not renew.
        while (left := when - self._clock()) > 0 and not self._wake.is_set():
            self._observe()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, LOOK))
        self._wake.clear()

    def _observe(self) -> None:
        """Whether the tunnel that is up can carry a renewal (an older plane's cannot)."""
        if self.control.ready:
            if self.state == RENEWAL_UNAVAILABLE and self.renew_error == NO_CONTROL:
                self.state, self.renew_error = VALID, None
                self._on_change()
        elif self._tunnel_up():
            self._unavailable(NO_CONTROL)

    async def _channel(self) -> bool:
        """Wait for a tunnel that takes control messages; False (after a pause) if the plane cannot renew."""
        while not self.control.ready:
            if self._tunnel_up():
                # Connected, yet no control.1 in the plane's HELLO: an older plane. Its certificates
                # are not renewed; the console shows until when this one lasts.
                self._unavailable(NO_CONTROL)
                await asyncio.sleep(max(POLL, min(60.0, self.period * schedule.CAP_FRACTION)))
                return False
            await asyncio.sleep(POLL)
        return True

    def _unavailable(self, why: str) -> None:
        if self.state != RENEWAL_UNAVAILABLE or self.renew_error != why:
            log.warning("identity: the certificate cannot be renewed: %s", why)
            self.state, self.renew_error = RENEWAL_UNAVAILABLE, why
            self._on_change()

    def _csr(self) -> tuple[ec.EllipticCurvePrivateKey, str]:
        from cryptography import x509  # here, not at the top: see the module docstring
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.gateway_id)]))
            .sign(key, hashes.SHA256())
        )
        return key, csr.public_bytes(serialization.Encoding.PEM).decode()

    async def _renew_once(self) -> float | None:
        """One renewal; None when done (the next is scheduled), else the delay before a retry."""
        from cryptography.hazmat.primitives import serialization  # see the module docstring

        from gateway.identity.trust import TrustError, check_renewed

        started = time.monotonic()
        key, csr = await asyncio.to_thread(self._csr)
        log.info("identity: renewing the certificate of %s (valid until %s)", self.gateway_id,
                 dt.datetime.fromtimestamp(self.cert.not_after, dt.UTC) if self.cert else "?")  # fmt: skip
        try:
            reply = await self.control.request(idm.renew_request(csr), timeout=RENEW_TIMEOUT)
            cert_pem = idm.parse_renewed(reply)
            cert = check_renewed(cert_pem, key, self.gateway_id, self._trust_set())
        except ControlError as exc:
            if exc.code in ("unknown-type", idm.UNSUPPORTED_VERSION):
                self._unavailable("the plane does not renew certificates (no 'renew' control message)")
                return schedule.rate_limited_floor(self.period) * 4
            floor = schedule.rate_limited_floor(self.period) if exc.code == idm.RATE_LIMITED else 0.0
            return self._failed(f"the plane answered {exc}", floor)
        except (idm.MessageError, TrustError) as exc:
            return self._failed(str(exc))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pair = (key_pem, cert.public_bytes(serialization.Encoding.PEM))
        try:
            await asyncio.to_thread(self.store.commit, *pair, self._pair)
        except IdentityChanged as exc:
            self.renew_error = str(exc)
            log.error("identity: %s", exc)
            return schedule.CAP_MAX
        except OSError as exc:
            return self._failed(f"cannot store the new certificate: {exc}")
        self._pair, self.cert = pair, cert_info(cert.public_bytes(serialization.Encoding.DER))
        self._schedule()
        self._attempt, self.state, self.renew_error = 0, VALID, None
        # The new pair is stored: connections from now on use it. The live one moves over to a
        # new connection (make before break); if that fails, the old one carries on and the move
        # is tried again.
        attempt = 0
        while not await self._rotate():
            attempt += 1
            await asyncio.sleep(schedule.retry_delay(attempt, self.period, self._rand()))
        self.renewals += 1
        self.last_renewal_s = time.monotonic() - started
        log.info("identity: renewed in %.2f s (CSR to new pair in use); valid until %s, next renewal %s",
                 self.last_renewal_s, cert.not_valid_after_utc, time.strftime("%Y-%m-%d %H:%M:%S UTC",
                 time.gmtime(self.renew_at or 0)))  # fmt: skip
        self._on_change()
        return None

    def _failed(self, why: str, floor: float = 0.0) -> float:
        self._attempt += 1
        self.state, self.renew_error = RENEWAL_FAILING, printable(why)[:300]
        delay = schedule.retry_delay(self._attempt, self.period, self._rand(), floor)
        log.warning("identity: renewal attempt %d failed: %s; the old certificate stays, retry in %.1f s",
                    self._attempt, self.renew_error, delay)  # fmt: skip
        self._on_change()
        return delay

    # --- the plane's messages -------------------------------------------------------------------

    async def _on_ca_update(self, message: Message) -> None:
        try:
            update = idm.parse_ca_update(message)
        except idm.MessageError as exc:
            log.warning("identity: ca-update refused, the trusted CAs stay as they are: %s", exc)
            return
        renew = self._unchanged_ca_update(update)
        if renew is None:
            renew = await self._changed_ca_update(update)
        if renew:
            self._renew_soon()

    def _unchanged_ca_update(self, update: idm.CaUpdate) -> bool | None:
        """A ca-update that lists the CAs we trust, as they are (every new tunnel hears one), decided
        without cryptography: whether to renew soon. None when the set differs or the key ids
        cannot tell which CA signed our certificate: then _changed_ca_update decides."""
        try:
            listed = [cert_info(pem_to_der(pem.encode())) for pem in update.cas]
        except ValueError:
            return None
        if [c.fingerprint for c in listed] != [c.fingerprint for c in self._trusted_info]:
            return None
        signer = next((c for c in listed if c.spki_sha256 == update.renew_from), None)
        if signer is None:
            return False
        assert self.cert is not None
        ours, theirs = self.cert.authority_key_id, signer.subject_key_id
        if ours is None or theirs is None:
            return None
        # The key id names the key that signed our certificate (RFC 5280 4.2.1.1). It decides only
        # whether to renew early; a CA enters the trust set only through the signature checks.
        return ours != theirs

    async def _changed_ca_update(self, update: idm.CaUpdate) -> bool:
        """A ca-update checked in full (gateway.identity.trust); the new set stored and in use if it
        changed. Whether to renew soon: the plane signs with a CA that did not sign our certificate."""
        from cryptography.hazmat.primitives import serialization  # see the module docstring

        from gateway.identity.trust import TrustError, check_ca_update, fingerprint, issued_by, load_pem
        from gwcore.pki import spki_sha256

        try:
            trusted = self._trust_set()
            new_set = check_ca_update(update, trusted)
        except TrustError as exc:
            log.warning("identity: ca-update refused, the trusted CAs stay as they are: %s", exc)
            return False
        if [fingerprint(c) for c in new_set] != [fingerprint(c) for c in trusted]:
            bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in new_set)
            await asyncio.to_thread(self.store.write_cas, bundle)
            self._cas_pem, self._trusted = bundle, new_set
            self._trusted_info = [cert_info(c.public_bytes(serialization.Encoding.DER)) for c in new_set]
            self._reload_trust()
            log.info("identity: the plane's CAs are now %s",
                     ", ".join(c.subject.rfc4514_string() for c in new_set))  # fmt: skip
        signer = next((c for c in new_set if spki_sha256(c) == update.renew_from), None)
        if signer is None:
            return False
        try:
            return issued_by(load_pem(self._pair[1], "cert.pem"), [signer]) is None
        except TrustError as exc:
            log.warning("identity: cannot check which CA signed our certificate: %s", exc)
            return False

    def _renew_soon(self) -> None:
        """The plane signs with another CA now (a rollover): renew soon, spread over a window."""
        self.renew_at = min(self.renew_at or 0, schedule.soon(self._clock(), self.period, self._rand()))
        log.info("identity: the plane signs with a new CA: renewing at %s",
                 time.strftime("%H:%M:%S UTC", time.gmtime(self.renew_at)))  # fmt: skip
        self._wake.set()
        self._on_change()

    async def _on_revoked(self, message: Message) -> None:
        try:
            reason, text = idm.parse_revoked(message)
        except idm.MessageError as exc:
            log.warning("identity: malformed revoked notice ignored: %s", exc)
            return
        what = "revoked by the plane" + (": the gateway was deleted" if reason == idm.REASON_DELETED else "")
        if text:
            what += f" ({printable(text)[:200]})"
        self.state = REVOKED
        self.renew_at = None
        self._reject(what, _reenrol(self.gateway_id), "revoked")
        self._on_change()

"""The plane's side of the gateway identity lifecycle (docs/operate.md, docs/protocol.md §13.1).

- **Admission.** Every tunnel is checked against the registry: a revoked, deleted or unknown
  gateway, or a certificate that is neither the gateway's current one nor one it may still use
  while a renewal completes, gets a 403 with `Tunnel-Error`.
- **Renewal.** The `renew` control request: the plane signs a CSR whose CN is the requesting
  gateway's id and whose key is new, with the CA that signs now, for the lifetime of the plane's
  settings, at most a few times per lifetime per gateway.
- **CA set.** The TLS server context follows the CA rollover (mgmtplane.rollover) without a
  restart, and every tunnel hears the CA set (`ca-update`) when it comes up and when it changes.
- **Revocation.** The registry is watched: when it changes, live tunnels are checked again, and
  one the registry no longer admits is closed, with a `revoked` notice when it was revoked or
  deleted. `POST /v1/gateways/{id}/revoke` and `DELETE /v1/gateways/{id}` do the same at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from cryptography import x509

from gwcore import identity as idm
from gwcore.control import ControlError, Message
from gwcore.pki import spki_sha256
from mgmtplane.ca import CSRError, cert_fingerprint, ensure_server_cert, load_csr
from mgmtplane.hub import ADMIT_KEY, HUB_KEY, GatewaySession, Hub, der_fingerprint, peer_certificate
from mgmtplane.registry import ACTIVE, REVOKED, GatewayRecord, Registry, utc_now_iso
from mgmtplane.rollover import ROLLOVER_FILE, CASet, load_ca_set
from mgmtplane.settings import SETTINGS_FILE, load_settings

log = logging.getLogger(__name__)
_T = TypeVar("_T")

StateIO = Callable[..., Awaitable[Any]]

WATCH_INTERVAL = 1.0  # seconds between looks at the state files
RENEWALS_BURST = 4  # renewals a gateway may ask for in a row ...
RENEWAL_REFILL = 0.25  # ... then one more per quarter of the certificate lifetime
_WATCHED = ("gateways.json", ROLLOVER_FILE, "ca.pem", "ca-next.pem", SETTINGS_FILE)


# --- admission (pure) -----------------------------------------------------------------------------


def admission(
    gateway_id: str, record: GatewayRecord | None, deleted: bool, fingerprint: str | None
) -> tuple[str, str] | None:
    """Whether the registry admits a tunnel with this certificate: None, or (Tunnel-Error code, message)."""
    if record is None:
        if deleted:
            return idm.GATEWAY_DELETED, f"gateway {gateway_id} was deleted from this plane"
        return idm.GATEWAY_UNKNOWN, f"gateway {gateway_id} is not registered with this plane"
    if record.state == REVOKED:
        return idm.GATEWAY_REVOKED, f"this gateway was revoked at {record.revoked_at or 'some point'}"
    if fingerprint is None or fingerprint == record.cert_fingerprint or fingerprint in record.previous:
        return None
    return idm.CERTIFICATE_SUPERSEDED, "this certificate was replaced by a newer one for this gateway"


class RateLimiter:
    """Renewals per gateway: a token bucket of RENEWALS_BURST, refilled once per quarter lifetime."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, gateway_id: str, lifetime: float) -> bool:
        """Spend one renewal of `gateway_id`'s bucket; False when it is empty."""
        now = self._clock()
        refill = max(0.5, lifetime * RENEWAL_REFILL)
        tokens, stamp = self._buckets.get(gateway_id, (float(RENEWALS_BURST), now))
        tokens = min(float(RENEWALS_BURST), tokens + (now - stamp) / refill)
        if tokens < 1:
            self._buckets[gateway_id] = (tokens, now)
            return False
        self._buckets[gateway_id] = (tokens - 1, now)
        return True


def _iso(when: dt.datetime) -> str:
    return when.replace(microsecond=0).isoformat()


def build_server_context(state_dir: Path, hosts: tuple[str, ...], cas: CASet) -> ssl.SSLContext:
    """TLS server context: the server certificate from the CA set's server CA, client certificates
    optional but verified against every trusted CA (docs/mgmtplane.md)."""
    cert_path, key_path = ensure_server_cert(cas.server, state_dir, hosts)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    ctx.load_verify_locations(cadata=cas.bundle_pem.decode())
    # Optional: registration has no client cert yet; the tunnel route insists on one (the hub
    # checks). A presented cert that does not chain to a trusted CA, or has expired, fails the
    # handshake with an alert (unknown_ca, certificate_expired) that the gateway acts on.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class PlaneIdentity:
    """Admission, renewal, the CA set and revocation for one plane (one per application)."""

    def __init__(
        self, state_dir: Path, hosts: tuple[str, ...], registry: Registry, state_io: StateIO
    ) -> None:
        self.state_dir = state_dir
        self.hosts = hosts
        self.registry = registry
        self._io = state_io
        self.cas = load_ca_set(state_dir)
        self.limiter = RateLimiter()
        self.hub: Hub | None = None
        self._base: ssl.SSLContext | None = None
        self._current: ssl.SSLContext | None = None
        self._stamp = self._files()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- TLS --------------------------------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The context to serve with; it hands each handshake the newest one (CA rollover, no restart)."""
        if self._base is None:
            self._base = self._current = build_server_context(self.state_dir, self.hosts, self.cas)
            # Called for every handshake, with or without SNI; the verify store, the certificate
            # and the trusted CAs then come from the context set here.
            self._base.sni_callback = self._pick_context
        return self._base

    def _pick_context(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._current is not None and self._current is not self._base:
            ssl_object.context = self._current

    # --- admission --------------------------------------------------------------------------------

    async def admit(self, request: web.Request, gateway_id: str) -> tuple[str, str] | None:
        """The hub's admission check (mgmtplane.hub.ADMIT_KEY)."""
        transport = request.transport
        der = peer_certificate(transport.get_extra_info("ssl_object") if transport else None)
        fingerprint = der_fingerprint(der) if der is not None else None
        record = await self._io(self.registry.get, gateway_id)
        deleted = record is None and await self._io(self.registry.was_deleted, gateway_id)
        refused = admission(gateway_id, record, deleted, fingerprint)
        if refused is not None:
            return refused
        if record is not None and record.previous and fingerprint == record.cert_fingerprint:
            # The gateway uses its new certificate: the one it renewed from is no longer accepted.
            def settled(r: GatewayRecord) -> GatewayRecord | None:
                same = r.cert_fingerprint == fingerprint
                return dataclasses.replace(r, previous=()) if same else None

            await self._io(self.registry.update, gateway_id, settled)
        return None

    # --- renewal ----------------------------------------------------------------------------------

    async def renew(self, gateway_id: str, message: Message) -> Message:
        """The `renew` control request: a new certificate for a new key of the requesting gateway."""
        try:
            csr_pem = idm.parse_renew_request(message)
        except idm.MessageError as exc:
            raise ControlError(exc.code, str(exc)) from None
        record = await self._io(self.registry.get, gateway_id)
        if record is None or record.state != ACTIVE:
            raise ControlError(idm.REVOKED_ERROR, "this gateway is revoked or deleted")
        settings = await self._io(load_settings, self.state_dir)
        if not self.limiter.take(gateway_id, settings.cert_lifetime):
            raise ControlError(idm.RATE_LIMITED, "too many renewals for this gateway; try again later")
        try:
            csr = load_csr(csr_pem)
        except CSRError as exc:
            raise ControlError(idm.BAD_CSR, str(exc)) from None
        names = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        if len(names) != 1 or names[0].value != gateway_id:
            raise ControlError(idm.BAD_CSR, f"csr: the subject CN must be this gateway's id {gateway_id}")
        session = self.hub.session(gateway_id) if self.hub is not None else None
        presented = session.cert_der if session is not None else None
        used = {record.key_hash} | (
            {spki_sha256(x509.load_der_x509_certificate(presented))} if presented else set()
        )
        if spki_sha256(csr) in used:
            raise ControlError(idm.BAD_CSR, "csr: the key must be new (it is the current certificate's key)")
        cas = self.cas
        cert_pem = cas.signing.sign_csr(csr_pem, gateway_id, dt.timedelta(seconds=settings.cert_lifetime))
        cert = x509.load_pem_x509_certificate(cert_pem)
        keep = [f for f in ((session.cert_fingerprint if session else None), record.cert_fingerprint) if f]

        def renewed(r: GatewayRecord) -> GatewayRecord | None:
            if r.state != ACTIVE:
                return None
            return dataclasses.replace(
                r,
                cert_serial=format(cert.serial_number, "x"),
                cert_fingerprint=cert_fingerprint(cert),
                key_hash=spki_sha256(cert),
                issuer=cas.signing.spki_hash,
                cert_not_after=_iso(cert.not_valid_after_utc),
                previous=tuple(dict.fromkeys(keep)),
                renewed_at=utc_now_iso(),
                renewals=r.renewals + 1,
            )

        stored = await self._io(self.registry.update, gateway_id, renewed)
        if stored is None or stored.cert_fingerprint != cert_fingerprint(cert):
            raise ControlError(idm.REVOKED_ERROR, "this gateway was revoked or deleted")
        log.info("gateway %s: renewed its certificate (serial %s, valid until %s, CA %s)", gateway_id,
                 stored.cert_serial, stored.cert_not_after, cas.signing.spki_hash[:19])  # fmt: skip
        return idm.renewed_reply(cert_pem.decode(), cert.not_valid_after_utc.timestamp())

    # --- the CA set -------------------------------------------------------------------------------

    def ca_update(self) -> Message:
        """The `ca-update` for the current CA set."""
        cas = self.cas
        ordered = [cas.server, *[c for c in cas.trusted if c is not cas.server]]
        return idm.ca_update(
            [c.cert_pem.decode() for c in ordered], [p.decode() for p in cas.proofs], cas.signing.spki_hash
        )

    def on_connect(self, session: GatewaySession) -> None:
        """A new tunnel: tell it the CA set once its HELLO is in."""
        self._spawn(self._push(session))

    async def _push(self, session: GatewaySession) -> None:
        mux, control = session.mux, session.control
        if mux is None or control is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(mux.ready.wait(), 10.0)
        if control.ready:
            control.send(self.ca_update())

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- watching the state -----------------------------------------------------------------------

    def _files(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for name in _WATCHED:
            try:
                st = (self.state_dir / name).stat()
                out.append((name, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((name, 0, -1))
        return tuple(out)

    async def watch(self) -> None:
        """Follow the state dir: the CLI changes it while `serve` runs (revoke, delete, rollover)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            stamp = self._files()
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                await self.refresh()
            except Exception:
                # A half-edited file by hand must not stop the plane; the next change retries.
                log.exception("identity: cannot apply the state dir's changes")

    async def refresh(self) -> None:
        """Reload the CA set (new TLS context, ca-update to every tunnel) and check every tunnel again."""
        cas = await self._io(load_ca_set, self.state_dir)
        if cas.key() != self.cas.key():
            context = await self._io(build_server_context, self.state_dir, self.hosts, cas)
            self.cas, self._current = cas, context
            trusted = ", ".join(c.spki_hash[:19] for c in cas.trusted)
            log.info("identity: CA set now %s (phase %s); server certificate from %s",
                     trusted, cas.phase, cas.server.spki_hash[:19])  # fmt: skip
            for session in self.hub.live() if self.hub is not None else []:
                if session.control is not None and session.control.ready:
                    session.control.send(self.ca_update())
        await self.sweep()

    async def sweep(self) -> int:
        """Close every live tunnel the registry (or the CA set) no longer admits; returns how many."""
        if self.hub is None:
            return 0
        records = {r.gateway_id: r for r in await self._io(self.registry.all)}
        closed = 0
        for session in self.hub.live():
            gid = session.gateway_id
            record = records.get(gid)
            deleted = record is None and await self._io(self.registry.was_deleted, gid)
            refused = admission(gid, record, deleted, session.cert_fingerprint)
            der = session.cert_der
            if (
                refused is None
                and der is not None
                and self.cas.issuer_of(x509.load_der_x509_certificate(der)) is None
            ):
                refused = ("certificate-untrusted", "the CA that issued this certificate was retired")
            if refused is None:
                continue
            code, text = refused
            reason = {idm.GATEWAY_REVOKED: idm.REASON_REVOKED, idm.GATEWAY_DELETED: idm.REASON_DELETED}.get(
                code
            )
            notice = idm.revoked_notice(reason, text) if reason is not None else None
            closed += self.hub.evict(gid, notice, f"{code}: {text}")
        return closed

    async def close(self) -> None:
        """Stop the helpers started for tunnels."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- admin API --------------------------------------------------------------------------------

    async def post_revoke(self, request: web.Request) -> web.Response:
        """POST /v1/gateways/{gateway_id}/revoke: refuse its certificate from now on, close its tunnel."""
        gateway_id = request.match_info["gateway_id"]
        record = await self._io(revoke, self.registry, gateway_id)
        if record is None:
            return _error(404, idm.GATEWAY_UNKNOWN, f"no registered gateway {gateway_id}")
        closed = await self.sweep()
        return web.json_response({**record.to_json(), "tunnel_closed": bool(closed)})

    async def delete_gateway(self, request: web.Request) -> web.Response:
        """DELETE /v1/gateways/{gateway_id}: forget the gateway, close its tunnel."""
        gateway_id = request.match_info["gateway_id"]
        record = await self._io(self.registry.remove, gateway_id)
        if record is None:
            return _error(404, idm.GATEWAY_UNKNOWN, f"no registered gateway {gateway_id}")
        closed = await self.sweep()
        return web.json_response({"deleted": gateway_id, "tunnel_closed": bool(closed)})


def revoke(registry: Registry, gateway_id: str) -> GatewayRecord | None:
    """Mark a gateway revoked (its certificates are refused from now on); None if unknown."""

    def revoked(r: GatewayRecord) -> GatewayRecord:
        if r.state == REVOKED:
            return r
        return dataclasses.replace(r, state=REVOKED, revoked_at=utc_now_iso(), previous=())

    record = registry.update(gateway_id, revoked)
    if record is not None:
        log.info("revoked gateway %s (%s)", gateway_id, record.hostname)
    return record


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


IDENTITY_KEY = web.AppKey("plane_identity", PlaneIdentity)


def setup_identity(app: web.Application, identity: PlaneIdentity) -> None:
    """Wire the identity lifecycle into the app (after setup_hub): admission, the `renew` handler,
    the CA set for new tunnels, the revoke and delete routes, the state watcher."""
    hub = app[HUB_KEY]
    identity.hub = hub
    app[IDENTITY_KEY] = identity
    app[ADMIT_KEY] = identity.admit
    hub.register_control(idm.RENEW, identity.renew)
    hub.on_connect(identity.on_connect)
    app.router.add_post("/v1/gateways/{gateway_id}/revoke", identity.post_revoke)
    app.router.add_delete("/v1/gateways/{gateway_id}", identity.delete_gateway)

    async def running(app: web.Application) -> AsyncIterator[None]:
        watcher = asyncio.create_task(identity.watch(), name="identity-watch")
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await identity.close()

    app.cleanup_ctx.append(running)

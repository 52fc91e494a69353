"""Support bundles from gateways, over their tunnels (protocol §13.3).

The plane opens a stream to the reserved target "@support" (GET /bundle); the gateway streams a
redacted tar.gz back under the stream's flow control. Two ways in:
  GET /v1/gateways/{id}/support-bundle  streams a fresh bundle to the caller (`mgmtplane
                                        support-bundle ID -o FILE` calls it)
  CONTROL "support-offer" from a gateway back from a long outage: the plane fetches a bundle at
  once and stores it in STATE_DIR/support/<id>/ (the newest KEEP kept), noted in its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from gwcore import health
from gwcore import protocol as p
from gwcore.atomic import write_atomic
from gwcore.control import Message
from gwcore.streams import Stream, StreamReset
from mgmtplane.health import HealthStore
from mgmtplane.hub import STATUS_FOR_CODE, Hub

log = logging.getLogger(__name__)

SUPPORT_DIR = "support"
KEEP = 5
MAX_BUNDLE = 64 * 1024 * 1024
READY_WAIT = 5.0


class BundleError(Exception):
    """No bundle: (HTTP status, error code, message) for the caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


async def open_bundle(hub: Hub, gateway_id: str) -> tuple[p.ResponseHead, Stream]:
    """Ask a connected gateway for a bundle: its response head and the stream to read it from."""
    session = hub.session(gateway_id)
    mux = session.mux if session is not None else None
    if session is None or mux is None or mux.closed or not session.connected:
        raise BundleError(503, "gateway-offline", f"gateway {gateway_id} is not connected")
    if not mux.ready.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(mux.ready.wait(), READY_WAIT)
    try:
        stream = mux.open(p.RequestHead("GET", health.SUPPORT_TARGET, health.SUPPORT_PATH, ()), fin=True)
        head = await stream.response()
    except StreamReset as exc:
        raise BundleError(STATUS_FOR_CODE.get(exc.code, 502), str(exc.code), exc.detail) from None
    except p.ProtocolError as exc:
        raise BundleError(502, "protocol-error", exc.message) from None
    if head.status != 200:
        stream.reset(p.ErrorCode.CANCELLED, "unexpected answer")
        raise BundleError(502, "bad-gateway", f"the gateway answered {head.status}")
    return head, stream


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))


class SupportDesk:
    """The bundle route, the offer handler, and the stored bundles."""

    def __init__(self, state_dir: Path, hub: Hub, store: HealthStore) -> None:
        self.dir = state_dir / SUPPORT_DIR
        self.hub = hub
        self.store = store
        self._tasks: set[asyncio.Task[None]] = set()

    async def get_bundle(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/gateways/{id}/support-bundle: stream a fresh bundle to the caller."""
        gateway_id = request.match_info["gateway_id"]
        try:
            head, stream = await open_bundle(self.hub, gateway_id)
        except BundleError as exc:
            return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/gzip"
        name = f"support-{gateway_id[:36]}-{_stamp(time.time())}.tar.gz"
        resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        source = dict(head.headers).get("X-Bundle-Source")
        if source:
            resp.headers["X-Bundle-Source"] = source
        try:
            await resp.prepare(request)
            sent = 0
            while chunk := await stream.read():
                sent += len(chunk)
                if sent > MAX_BUNDLE:
                    raise StreamReset(p.ErrorCode.CANCELLED, f"bundle over {MAX_BUNDLE} bytes")
                await resp.write(chunk)
            await resp.write_eof()
        except StreamReset as exc:
            log.warning("gateway %s: support bundle cut: %s", gateway_id, exc)
            if request.transport is not None:
                request.transport.abort()  # the caller must not take a truncated bundle for a whole one
        except ConnectionError:
            pass
        finally:
            stream.reset(p.ErrorCode.CANCELLED, "caller went away")
        return resp

    async def on_offer(self, gateway_id: str, message: Message) -> Message:
        """CONTROL "support-offer": take it, and fetch the bundle in the background."""
        failures = message.get("failures")
        log.info("gateway %s offers a support bundle after %s failed reconnects", gateway_id, failures)
        task = asyncio.create_task(self._fetch(gateway_id, message), name=f"support-fetch-{gateway_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"type": health.SUPPORT_OFFER_ACK, "fetch": True}

    async def _fetch(self, gateway_id: str, offer: Message) -> None:
        try:
            _head, stream = await open_bundle(self.hub, gateway_id)
            data = bytearray()
            while chunk := await stream.read():
                data += chunk
                if len(data) > MAX_BUNDLE:
                    stream.reset(p.ErrorCode.CANCELLED, "bundle too large")
                    raise BundleError(502, "too-large", f"bundle over {MAX_BUNDLE} bytes")
        except (BundleError, StreamReset) as exc:
            log.warning("gateway %s: offered support bundle not fetched: %s", gateway_id, exc)
            return
        path = await asyncio.get_running_loop().run_in_executor(None, self._store, gateway_id, bytes(data))
        detail: dict[str, Any] = {"path": str(path), "bytes": len(data)}
        if isinstance(offer.get("failures"), int):
            detail["failed_reconnects"] = offer["failures"]
        await self.store.notice(
            gateway_id,
            "support-bundle",
            f"support bundle stored after {offer.get('failures')} failed reconnects",
            detail,
        )

    def _store(self, gateway_id: str, data: bytes) -> Path:
        directory = self.dir / gateway_id
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"support-{_stamp(time.time())}.tar.gz"
        write_atomic(path, data, mode=0o600)
        for old in sorted(directory.glob("support-*.tar.gz"), reverse=True)[KEEP:]:
            with contextlib.suppress(OSError):
                old.unlink()
        return path

    async def close(self) -> None:
        """Cancel fetches in flight."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def newest_stored(state_dir: Path, gateway_id: str) -> Path | None:
    """The newest bundle the plane stored for a gateway (from an offer), if any."""
    bundles = sorted((state_dir / SUPPORT_DIR / gateway_id).glob("support-*.tar.gz"))
    return bundles[-1] if bundles else None


DESK_KEY = web.AppKey("plane_support", SupportDesk)


async def _desk_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[DESK_KEY].close()


def setup_support(app: web.Application, desk: SupportDesk) -> None:
    """The bundle route and the hub's "support-offer" handler."""
    app[DESK_KEY] = desk
    desk.hub.register_control(health.SUPPORT_OFFER, desk.on_offer)
    app.router.add_get("/v1/gateways/{gateway_id}/support-bundle", desk.get_bundle)
    app.cleanup_ctx.append(_desk_ctx)

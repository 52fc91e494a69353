"""The relay: one tunnel stream -> one request to an inventory target, filtered, streamed back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway import protocol as p
from gateway.filter_audit import log_decision
from gateway.httpclient import ConnectError, HostPool, HTTPError
from gateway.metadata_filter import (
    Allowed,
    Denied,
    FilterRequest,
    FilterResponse,
    check_request,
    filter_response,
)
from gateway.policy import MAX_REQUEST_BODY_BYTES, PolicySet, Rule
from gateway.ssrf import AddressForbidden, GuardedResolver, IPAddress, check_literal
from gateway.streams import Stream, StreamReset
from gateway.targets import Target, TargetSet

log = logging.getLogger(__name__)

FILTER_HEADER = "X-Gateway-Filter"
# Connection-level headers never cross a hop (RFC 9110 7.6.1); Host is rebuilt for the target.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_RETIRE_GRACE = 5.0


def strip_hop_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers without hop-by-hop ones (including any named in Connection)."""
    items = list(headers)
    named = {token.strip().lower() for k, v in items if k.lower() == "connection" for token in v.split(",")}
    return [(k, v) for k, v in items if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def target_url(target: Target, path: str) -> URL:
    """The target URL for a request path (the host can never change: the path is appended as-is)."""
    url = URL(f"{target.url.scheme}://{target.url.raw_authority}{target.base_path}{path}", encoded=True)
    if url.host != target.url.host or url.port != target.url.port:
        raise ValueError(f"path {path[:60]!r} changes the host")
    return url


class _Denied(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PolicyFilter:
    """The metadata-filter hook; with no policy set loaded it fails closed (denies everything)."""

    def __init__(self, policies: PolicySet | None) -> None:
        self.policies = policies

    def check(self, target: Target, req: FilterRequest) -> Rule:
        """The rule allowing this request; _Denied otherwise."""
        if self.policies is None:
            raise _Denied("no metadata filter policies loaded")
        verdict = check_request(self.policies, target.kind, req)
        log_decision(target.name, target.kind, req, verdict)
        if isinstance(verdict, Denied):
            raise _Denied(verdict.reason)
        return verdict

    def filter(self, target: Target, req: FilterRequest, resp: FilterResponse) -> Allowed:
        """The filtered response; _Denied otherwise."""
        assert self.policies is not None
        verdict = filter_response(self.policies, target.kind, req, resp)
        log_decision(target.name, target.kind, req, verdict)
        if isinstance(verdict, Denied):
            raise _Denied(verdict.reason)
        return verdict


def _ssl_for(target: Target) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    tls = target.tls
    if target.url.scheme != "https":
        return True
    if tls.fingerprint is not None:
        return aiohttp.Fingerprint(tls.fingerprint)
    if tls.insecure:
        return False
    if tls.ca_file is not None:
        return ssl.create_default_context(cafile=str(tls.ca_file))
    return True


class Relay:
    """Serves streams opened by the plane; keeps one ClientSession (connection pool) per target."""

    def __init__(
        self, targets: TargetSet, policies: PolicySet | None, own_addresses: Iterable[IPAddress] = ()
    ) -> None:
        self.targets = targets
        self.filter = PolicyFilter(policies)
        self.own = frozenset(own_addresses)
        self._sessions: dict[str, tuple[Target, aiohttp.ClientSession]] = {}
        self._pools: dict[str, tuple[Target, HostPool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled = 0

    def reload(
        self, targets: TargetSet, policies: PolicySet | None, own_addresses: Iterable[IPAddress] | None = None
    ) -> None:
        """Swap in a new inventory and policy set; in-flight requests finish on the old sessions."""
        self.targets = targets
        self.filter = PolicyFilter(policies)
        own_changed = own_addresses is not None and frozenset(own_addresses) != self.own
        if own_addresses is not None:
            self.own = frozenset(own_addresses)
        for name, (old, session) in list(self._sessions.items()):
            if own_changed or targets.get(name) != old:
                del self._sessions[name]
                self._spawn(self._retire(session, old.total_timeout + _RETIRE_GRACE))
        for name, (old, pool) in list(self._pools.items()):
            if own_changed or targets.get(name) != old:
                del self._pools[name]
                self._spawn(self._retire(pool, old.total_timeout + _RETIRE_GRACE))

    async def _retire(self, session: aiohttp.ClientSession | HostPool, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            await session.close()

    def on_open(self, stream: Stream) -> None:
        """Mux callback: handle the stream in its own task, cancelled if the plane aborts the stream."""
        task = self._spawn(self.handle(stream))
        stream.on_abort = task.cancel

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel in-flight work and close every target session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for _target, session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        for _target, pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    def _pool(self, target: Target) -> HostPool:
        entry = self._pools.get(target.name)
        if entry is not None and entry[0] == target:
            return entry[1]
        host = target.url.raw_host or ""
        check_literal(host, target.allow_private, self.own)
        port = target.url.port or 80
        authority = f"[{host}]" if ":" in host else host
        if target.url.explicit_port is not None and target.url.explicit_port != 80:
            authority += f":{target.url.explicit_port}"
        pool = HostPool(
            host,
            port,
            GuardedResolver(target.allow_private, self.own),
            host_header=authority,
            connect_timeout=target.connect_timeout,
            read_timeout=target.total_timeout,
        )
        self._pools[target.name] = (target, pool)
        return pool

    def _session(self, target: Target) -> aiohttp.ClientSession:
        entry = self._sessions.get(target.name)
        if entry is not None and entry[0] == target:
            return entry[1]
        # An IP-literal host never reaches the resolver: check it once, before the first connection.
        check_literal(target.url.host or "", target.allow_private, self.own)
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(target.allow_private, self.own),
            use_dns_cache=False,  # resolve (and check) on every new connection: no stale rebinding window
            ssl=_ssl_for(target),
            limit=1024,
            limit_per_host=0,
            keepalive_timeout=30,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            # connect bounds TCP+TLS; sock_read bounds every wait for bytes (the head included).
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=target.connect_timeout,
                sock_connect=target.connect_timeout,
                sock_read=target.total_timeout,
            ),
        )
        self._sessions[target.name] = (target, session)
        return session

    async def handle(self, stream: Stream) -> None:
        """Relay one request; every failure becomes a RESET with a stable code."""
        head = stream.request
        assert head is not None
        try:
            await self._relay(stream, head)
        except StreamReset as exc:
            log.debug("stream %d: reset: %s", stream.id, exc)
        except _Denied as exc:
            log.info(
                "stream %d: %s %s on %s: filtered: %s", stream.id, head.method, head.path, head.target, exc
            )
            stream.reset(p.ErrorCode.FILTERED, exc.reason)
        except AddressForbidden as exc:
            log.warning("stream %d: target %s: %s", stream.id, head.target, exc.message)
            stream.reset(p.ErrorCode.ADDRESS_FORBIDDEN, exc.message)
        except p.ProtocolError as exc:
            # The target's response cannot be expressed on the wire (too many or too large headers).
            log.info("stream %d: target %s: unrelayable response: %s", stream.id, head.target, exc.message)
            stream.reset(p.ErrorCode.TARGET_ERROR, exc.message)
        except asyncio.CancelledError:
            stream.reset(p.ErrorCode.CANCELLED, "gateway shutting down")
            raise
        except Exception as exc:
            code, message = classify_target_error(exc)
            if code is p.ErrorCode.INTERNAL:
                log.exception("stream %d: internal error", stream.id)
            else:
                log.info("stream %d: target %s: %s: %s", stream.id, head.target, code, message)
            stream.reset(code, message)
        finally:
            self.handled += 1

    async def _relay(self, stream: Stream, head: p.RequestHead) -> None:
        target = self.targets.get(head.target)
        if target is None:
            stream.reset(p.ErrorCode.TARGET_UNKNOWN, f"no target named {head.target!r}")
            return
        req_headers = strip_hop_headers(head.headers)
        try:
            url = target_url(target, head.path)
        except ValueError as exc:
            stream.reset(p.ErrorCode.BAD_REQUEST, str(exc))
            return
        # Filtered kinds may inspect the request body (SOAP operations): buffer it, bounded.
        # has_body, not rx_fin: a body that arrived with its OPEN has ended but is still unread.
        body_bytes: bytes | None = None
        if stream.has_body and target.kind != "http":
            body_bytes = await _read_bounded(stream, MAX_REQUEST_BODY_BYTES)
        freq = FilterRequest(head.method, head.path, CIMultiDict(req_headers), body_bytes)
        rule = self.filter.check(target, freq)
        body: bytes | AsyncIterator[bytes] | None = body_bytes
        if body is None and stream.has_body:
            body = _request_body(stream)
        if target.url.scheme == "http":
            # Plain HTTP takes the lean keep-alive client; TLS targets keep aiohttp's TLS trust handling.
            pool = self._pool(target)
            async with asyncio.timeout(target.total_timeout):
                lean = await pool.request(head.method, url.raw_path_qs, req_headers, body)
            try:
                await self._respond(
                    stream, target, rule, freq, lean.status, lean.headers, lean.content_length, lean.read
                )
            finally:
                lean.close()
            return
        session = self._session(target)
        async with asyncio.timeout(target.total_timeout):
            resp_cm = session.request(head.method, url, headers=req_headers, data=body, allow_redirects=False)
            resp = await resp_cm.__aenter__()
        try:
            await self._respond(
                stream,
                target,
                rule,
                freq,
                resp.status,
                resp.headers.items(),
                resp.content_length,
                resp.content.readany,
            )
        finally:
            await resp_cm.__aexit__(None, None, None)

    async def _respond(
        self,
        stream: Stream,
        target: Target,
        rule: Rule,
        freq: FilterRequest,
        status: int,
        resp_headers: Iterable[tuple[str, str]],
        content_length: int | None,
        read: Callable[[], Awaitable[bytes]],
    ) -> None:
        headers = strip_hop_headers(resp_headers)
        if rule.passthrough:
            headers.append((FILTER_HEADER, f"{rule.name}; removed=0"))
            stream.send_head(p.ResponseHead(status, tuple(headers)))
            while chunk := await read():
                await stream.write(chunk)
            stream.end()
            return
        limit = rule.max_body_bytes
        if content_length is not None and content_length > limit:
            raise _Denied(f"response body of {content_length} bytes exceeds the {limit}-byte bound")
        async with asyncio.timeout(target.total_timeout):
            parts, size = [], 0
            while chunk := await read():
                size += len(chunk)
                if size > limit:
                    raise _Denied(f"response body exceeds the {limit}-byte bound")
                parts.append(chunk)
        fresp = FilterResponse(status, CIMultiDict(headers), b"".join(parts))
        allowed = self.filter.filter(target, freq, fresp)
        out = [(k, v) for k, v in allowed.headers.items() if k.lower() not in ("content-length", *HOP_BY_HOP)]
        out.append(("Content-Length", str(len(allowed.body))))
        out.append((FILTER_HEADER, f"{allowed.rule}; removed={allowed.removed}"))
        stream.send_head(p.ResponseHead(allowed.status, tuple(out)), fin=not allowed.body)
        if allowed.body:
            await stream.write(allowed.body, fin=True)


async def _read_bounded(stream: Stream, limit: int) -> bytes:
    parts, size = [], 0
    while chunk := await stream.read():
        size += len(chunk)
        if size > limit:
            raise _Denied(f"request body exceeds the {limit}-byte inspection bound")
        parts.append(chunk)
    return b"".join(parts)


async def _request_body(stream: Stream) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        yield chunk


def classify_target_error(exc: BaseException) -> tuple[p.ErrorCode, str]:
    """The stable RESET code (and a message) for a failure talking to a target."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, AddressForbidden):
        return p.ErrorCode.ADDRESS_FORBIDDEN, exc.message
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return p.ErrorCode.TLS_VERIFY_FAILED, "certificate fingerprint does not match the pin"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return p.ErrorCode.TLS_VERIFY_FAILED, str(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientSSLError):
        return p.ErrorCode.TLS_VERIFY_FAILED, text
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return p.ErrorCode.TARGET_TIMEOUT, "timed out"
    if isinstance(exc, ConnectError):
        return p.ErrorCode.TARGET_REFUSED, text
    if isinstance(exc, socket.gaierror):
        return p.ErrorCode.TARGET_REFUSED, f"cannot resolve: {text}"
    if isinstance(exc, HTTPError):
        return p.ErrorCode.TARGET_ERROR, text
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return p.ErrorCode.TARGET_REFUSED, f"cannot resolve: {text}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return p.ErrorCode.TARGET_REFUSED, text
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return p.ErrorCode.TARGET_ERROR, text
    return p.ErrorCode.INTERNAL, type(exc).__name__

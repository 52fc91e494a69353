"""The relay: one tunnel stream -> one request to an inventory target, filtered, streamed back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from gateway.filter.audit import log_decision
from gateway.filter.metadata_filter import (
    FORM_TYPES,
    Allowed,
    Denied,
    FilterRequest,
    FilterResponse,
    StreamedResponse,
    check_request,
    filter_response,
    stream_response,
)
from gateway.filter.policy import MAX_REQUEST_BODY_BYTES, PolicySet, Rule
from gateway.relay.budget import Budget, BudgetExhausted, Lease, cgroup_memory_limit, default_budget
from gateway.relay.framing import RequestFramingError, declared_length, forwardable
from gateway.relay.httpclient import (
    ConnectError,
    HostPool,
    HTTPError,
    Response,
    StreamedBody,
    TargetTLS,
    TLSVerifyError,
)
from gateway.relay.ssrf import AddressForbidden, GuardedResolver, IPAddress, check_literal
from gateway.relay.targets import Target, TargetSet
from gwcore import protocol as p
from gwcore.deadlines import Deadlines
from gwcore.httpwire import HOP_BY_HOP, strip_hop_headers
from gwcore.streams import Stream, StreamReset

log = logging.getLogger(__name__)

FILTER_HEADER = "X-Gateway-Filter"
_RETIRE_GRACE = 5.0
# Relay._url remembers at most this many URLs, of paths up to this long (bounded: 1 MiB or so).
_URL_CACHE_MAX = 2048
_URL_CACHE_PATH = 256
# Response headers the gateway writes itself (or that never cross a hop): built once, not per response.
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}
_RANGE_FIELDS = frozenset({"range", "if-range"})


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

    def filter(self, target: Target, req: FilterRequest, resp: FilterResponse, rule: Rule) -> Allowed:
        """The filtered response, judged by `rule` (check()'s answer for `req`); _Denied otherwise."""
        assert self.policies is not None
        return self._verdict(target, req, filter_response(self.policies, target.kind, req, resp, rule))

    def stream(
        self, target: Target, req: FilterRequest, rule: Rule, status: int, headers: list[tuple[str, str]]
    ) -> StreamedResponse | None:
        """A filter to feed the body to as it arrives, or None: buffer it and call filter()."""
        assert self.policies is not None
        # Only XML bodies stream: a JSON answer (the common small one) is not looked at twice.
        if not any(k.lower() == "content-type" and "xml" in v.lower() for k, v in headers):
            return None
        return stream_response(self.policies, target.kind, req, status, CIMultiDict(headers), rule)

    def finish(self, target: Target, req: FilterRequest, streamed: StreamedResponse) -> Allowed:
        """The decision on a streamed response's whole body; _Denied otherwise."""
        return self._verdict(target, req, streamed.finish())

    @staticmethod
    def _verdict(target: Target, req: FilterRequest, verdict: Allowed | Denied) -> Allowed:
        log_decision(target.name, target.kind, req, verdict)
        if isinstance(verdict, Denied):
            raise _Denied(verdict.reason)
        return verdict


def _tls_for(target: Target) -> TargetTLS | None:
    """The target's trust rule as a TLS context: its CA file, a SHA-256 pin of its certificate,
    no verification (insecure), or the system store; SNI and the host-name check use the URL's host."""
    if target.url.scheme != "https":
        return None
    tls = target.tls
    host = target.url.host or ""
    if tls.fingerprint is not None or tls.insecure:
        # The pin is checked after the handshake (the whole leaf certificate, DER, SHA-256).
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return TargetTLS(ctx, host, tls.fingerprint)
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSVerifyError(f"cannot load the CA file {tls.ca_file}: {exc}") from None
    return TargetTLS(ctx, host)


def body_budget(override_mib: int | None = None) -> Budget:
    """The budget for buffered bodies: `override_mib`, or a share of the unit's memory limit."""
    if override_mib is not None:
        return Budget(override_mib * 1024 * 1024)
    return Budget(default_budget(cgroup_memory_limit()))


class Relay:
    """Serves streams opened by the plane; keeps one connection pool per target."""

    def __init__(
        self,
        targets: TargetSet,
        policies: PolicySet | None,
        own_addresses: Iterable[IPAddress] = (),
        budget: Budget | None = None,
    ) -> None:
        self.targets = targets
        # One budget for every body buffered, across all streams (gateway/relay/budget.py).
        self.budget = budget if budget is not None else body_budget()
        self.filter = PolicyFilter(policies)
        self.own = frozenset(own_addresses)
        self._pools: dict[str, tuple[Target, HostPool]] = {}
        self._urls: dict[tuple[str, str], tuple[Target, URL]] = {}  # see _url
        self._tasks: set[asyncio.Task[None]] = set()
        self._deadlines = Deadlines()  # one timer for every request's deadline (gwcore/deadlines.py)

    def reload(
        self, targets: TargetSet, policies: PolicySet | None, own_addresses: Iterable[IPAddress] | None = None
    ) -> None:
        """Swap in a new inventory and policy set; in-flight requests finish on the old sessions."""
        self.targets = targets
        self.filter = PolicyFilter(policies)
        own_changed = own_addresses is not None and frozenset(own_addresses) != self.own
        if own_addresses is not None:
            self.own = frozenset(own_addresses)
        for name, (old, pool) in list(self._pools.items()):
            if own_changed or targets.get(name) != old:
                del self._pools[name]
                self._spawn(self._retire(pool, old.total_timeout + _RETIRE_GRACE))

    async def _retire(self, pool: HostPool, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            await pool.close()

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
        for _target, pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        self._deadlines.close()

    def _url(self, target: Target, path: str) -> URL:
        """target_url, remembered per target and short path: SDKs poll the same few paths, and
        building and checking a URL costs more than the rest of the request line's handling."""
        key = (target.name, path)
        entry = self._urls.get(key)
        if entry is not None and entry[0] is target:
            return entry[1]
        url = target_url(target, path)
        if len(path) <= _URL_CACHE_PATH:
            if len(self._urls) >= _URL_CACHE_MAX:
                self._urls.clear()
            self._urls[key] = (target, url)
        return url

    def _pool(self, target: Target) -> HostPool:
        entry = self._pools.get(target.name)
        if entry is not None and entry[0] == target:
            return entry[1]
        # An IP-literal host never reaches the resolver: check it once, before the first connection.
        host = target.url.raw_host or ""
        check_literal(host, target.allow_private, self.own)
        default_port = 443 if target.url.scheme == "https" else 80
        port = target.url.port or default_port
        authority = f"[{host}]" if ":" in host else host
        if target.url.explicit_port is not None and target.url.explicit_port != default_port:
            authority += f":{target.url.explicit_port}"
        pool = HostPool(
            host,
            port,
            GuardedResolver(target.allow_private, self.own),
            host_header=authority,
            connect_timeout=target.connect_timeout,
            read_timeout=target.total_timeout,
            tls=_tls_for(target),
        )
        self._pools[target.name] = (target, pool)
        return pool

    async def handle(self, stream: Stream) -> None:
        """Relay one request; every failure becomes a RESET with a stable code."""
        head = stream.request
        assert head is not None
        lease = self.budget.lease()
        try:
            await self._relay(stream, head, lease)
        except BudgetExhausted as exc:
            log.warning(
                "stream %d: %s %s on %s: busy: %s", stream.id, head.method, head.path, head.target, exc
            )
            stream.reset(p.ErrorCode.BUSY, exc.message)
        except StreamReset as exc:
            log.debug("stream %d: reset: %s", stream.id, exc)
        except _Denied as exc:
            log.info(
                "stream %d: %s %s on %s: filtered: %s", stream.id, head.method, head.path, head.target, exc
            )
            stream.reset(p.ErrorCode.FILTERED, exc.reason)
        except RequestFramingError as exc:
            log.info("stream %d: target %s: bad request framing: %s", stream.id, head.target, exc.message)
            stream.reset(p.ErrorCode.BAD_REQUEST, exc.message)
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
            lease.release()  # on every path: success, denial, reset, cancellation

    async def _relay(self, stream: Stream, head: p.RequestHead, lease: Lease) -> None:
        target = self.targets.get(head.target)
        if target is None:
            stream.reset(p.ErrorCode.TARGET_UNKNOWN, f"no target named {head.target!r}")
            return
        # The plane's framing is checked before anything else; the gateway writes its own.
        length = declared_length(head.headers, stream.has_body)
        req_headers = forwardable(head.headers)
        try:
            url = self._url(target, head.path)
        except ValueError as exc:
            stream.reset(p.ErrorCode.BAD_REQUEST, str(exc))
            return
        # Filtered kinds may inspect the request body (SOAP operations), and a form body may
        # override the method on any kind: buffer those, bounded.
        # has_body, not rx_fin: a body that arrived with its OPEN has ended but is still unread.
        buffered: bytes | None = None
        if stream.has_body and (target.kind != "http" or _is_form(req_headers)):
            buffered = await _read_bounded(stream, length, MAX_REQUEST_BODY_BYTES, lease)
        freq = FilterRequest(head.method, head.path, CIMultiDict(req_headers), buffered)
        rule = self.filter.check(target, freq)
        if not rule.passthrough:
            # Filtered rules need whole documents: the target never sees the plane's Range.
            req_headers = [(k, v) for k, v in req_headers if k.lower() not in _RANGE_FIELDS]
        body: bytes | StreamedBody | None = buffered
        if body is None and stream.has_body and length == 0:
            # The head alone would be a complete request: see the plane's FIN (and no byte) first.
            body = await _read_bounded(stream, 0, 0, lease)
        elif body is None and stream.has_body:
            body = StreamedBody(_exact_body(stream, length), length)
        pool = self._pool(target)
        # One deadline per request: `total` bounds the wait for the head, then (filtered rules) the
        # whole read of the body, from the head; a passthrough body is bounded per read stall
        # instead, and filtering and the writes to the plane not at all (docs/protocol.md 12).
        resp: Response | None = None
        try:
            async with self._deadlines.after(target.total_timeout) as deadline:
                resp = await pool.request(head.method, url.raw_path_qs, req_headers, body)
                if rule.passthrough:
                    deadline.reschedule(None)
                    await self._passthrough(stream, rule, resp)
                    return
                if not resp.complete:  # a body in the buffer already is read without waiting
                    deadline.reschedule_in(target.total_timeout)
                headers = strip_hop_headers(resp.headers)
                streamed = self.filter.stream(target, freq, rule, resp.status, headers)
                base = lease.held
                if streamed is not None:
                    # The filter works as the body arrives: its time counts in the read's bound.
                    await self._read_streamed(rule, resp, lease, streamed)
                else:
                    raw = await self._read_body(rule, resp, lease)
            if streamed is not None:
                allowed = self.filter.finish(target, freq, streamed)
            else:
                allowed = self.filter.filter(
                    target, freq, FilterResponse(resp.status, CIMultiDict(headers), raw), rule
                )
                # The raw body goes now: the caller's buffer is the only other reference.
                if allowed.body is not raw:
                    raw.clear()
            lease.shrink(lease.held - base)
            await self._respond(stream, allowed, lease)
        finally:
            if resp is not None:
                resp.close()

    @staticmethod
    async def _passthrough(stream: Stream, rule: Rule, resp: Response) -> None:
        headers = strip_hop_headers(resp.headers)
        headers.append((FILTER_HEADER, f"{rule.name}; removed=0"))
        stream.send_head(p.ResponseHead(resp.status, tuple(headers)))
        read = resp.read
        while chunk := await read():
            await stream.write(chunk)
        stream.end()

    @staticmethod
    async def _read_body(rule: Rule, resp: Response, lease: Lease) -> bytearray:
        """The whole body of a response to filter, within the rule's bound and the budget."""
        limit = rule.max_body_bytes
        content_length = resp.content_length
        if content_length is not None and content_length > limit:
            raise _Denied(f"response body of {content_length} bytes exceeds the {limit}-byte bound")
        # A declared length is reserved before the first byte is read (busy at once, not halfway);
        # otherwise the reservation grows with the body.
        if content_length is not None:
            lease.grow(content_length)
        body = bytearray()  # one buffer: never a list of parts plus their join
        read = resp.read
        while chunk := await read():
            if len(body) + len(chunk) > limit:
                raise _Denied(f"response body exceeds the {limit}-byte bound")
            if content_length is None:
                lease.grow(len(chunk))
            body += chunk
        return body

    @staticmethod
    async def _read_streamed(rule: Rule, resp: Response, lease: Lease, streamed: StreamedResponse) -> None:
        """Feed the body to the filter as it arrives: the budget holds the piece being filtered and
        the output so far, never the whole input."""
        limit = rule.max_body_bytes
        content_length = resp.content_length
        if content_length is not None and content_length > limit:
            raise _Denied(f"response body of {content_length} bytes exceeds the {limit}-byte bound")
        base = lease.held
        size = 0
        read = resp.read
        while chunk := await read():
            size += len(chunk)
            if size > limit:
                raise _Denied(f"response body exceeds the {limit}-byte bound")
            lease.grow(len(chunk))
            streamed.feed(chunk)
            del chunk
            held = base + streamed.held
            if held > lease.held:
                lease.grow(held - lease.held)
            else:
                lease.shrink(lease.held - held)

    @staticmethod
    async def _respond(stream: Stream, allowed: Allowed, lease: Lease) -> None:
        """Send a filtered response; the budget holds its body until the plane has it."""
        lease.grow(len(allowed.body))
        out = [(k, v) for k, v in allowed.headers.items() if k.lower() not in _NOT_RETURNED]
        out.append(("Content-Length", str(len(allowed.body))))
        out.append((FILTER_HEADER, f"{allowed.rule}; removed={allowed.removed}"))
        stream.send_head(p.ResponseHead(allowed.status, tuple(out)), fin=not allowed.body)
        if allowed.body:
            await stream.write(allowed.body, fin=True)


def _is_form(headers: Iterable[tuple[str, str]]) -> bool:
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
    return ctype.split(";", 1)[0].strip().lower() in FORM_TYPES


async def _read_bounded(stream: Stream, length: int | None, limit: int, lease: Lease) -> bytes:
    """The whole request body, at most `limit` bytes, exactly `length` when one was declared;
    reserved in the body budget as it arrives (it is held until the response is filtered)."""
    body = bytearray()
    while chunk := await stream.read():
        size = len(body) + len(chunk)
        if length is not None and size > length:
            raise RequestFramingError(f"request body longer than its Content-Length {length}")
        if size > limit:
            raise _Denied(f"request body exceeds the {limit}-byte inspection bound")
        lease.grow(len(chunk))
        body += chunk
    if length is not None and len(body) != length:
        raise RequestFramingError(f"request body of {len(body)} bytes, Content-Length {length}")
    return bytes(body)  # at most 1 MiB; the bytearray goes when we return


async def _exact_body(stream: Stream, length: int | None) -> AsyncIterator[bytes]:
    """The plane's body as it arrives; with a declared length, exactly that many bytes.

    The piece that completes the declared length is held back until the plane's FIN: if more
    bytes come instead, the target has an incomplete request (and the connection is dropped), so
    a mismatched request never runs."""
    if length is None:
        while chunk := await stream.read():
            yield chunk
        return
    size = 0
    while chunk := await stream.read():
        size += len(chunk)
        if size > length:
            raise RequestFramingError(f"request body longer than its Content-Length {length}")
        if size == length:
            if await stream.read():
                raise RequestFramingError(f"request body longer than its Content-Length {length}")
            yield chunk
            return
        yield chunk
    if size != length:
        raise RequestFramingError(f"request body of {size} bytes, Content-Length {length}")


def classify_target_error(exc: BaseException) -> tuple[p.ErrorCode, str]:
    """The stable RESET code (and a message) for a failure talking to a target."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, AddressForbidden):
        return p.ErrorCode.ADDRESS_FORBIDDEN, exc.message
    if isinstance(exc, RequestFramingError):
        return p.ErrorCode.BAD_REQUEST, exc.message
    if isinstance(exc, TLSVerifyError | ssl.SSLError):
        return p.ErrorCode.TLS_VERIFY_FAILED, text
    if isinstance(exc, TimeoutError):
        return p.ErrorCode.TARGET_TIMEOUT, "timed out"
    if isinstance(exc, ConnectError):
        return p.ErrorCode.TARGET_REFUSED, text
    if isinstance(exc, socket.gaierror):
        return p.ErrorCode.TARGET_REFUSED, f"cannot resolve: {text}"
    if isinstance(exc, HTTPError):
        return p.ErrorCode.TARGET_ERROR, text
    if isinstance(exc, ConnectionError | OSError):
        return p.ErrorCode.TARGET_ERROR, text
    return p.ErrorCode.INTERNAL, type(exc).__name__


def target_tls(target: Target) -> TargetTLS | None:
    """The target's trust rule as a TLS context (public: the health probe uses the same rule)."""
    return _tls_for(target)

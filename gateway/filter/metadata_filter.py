"""The metadata filter: pure functions from (policies, kind, request, response) to Allowed or Denied.

Fail closed: anything we cannot positively match, parse and bound is denied, and no input makes
these functions raise. No I/O happens here; the relay does the I/O and `gateway.filter.audit` logs.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, unquote_plus

from gateway.filter.jsonfilter import JsonRejected, filter_json
from gateway.filter.policy import (
    KNOWN_METHODS,
    MAX_REQUEST_BODY_BYTES,
    BodyAllow,
    Kind,
    PolicySet,
    Rule,
    XmlAllow,
)
from gateway.filter.xmlfilter import XmlRejected, XmlStreamFilter, filter_xml, soap_operation

log = logging.getLogger(__name__)

_JSON_TYPES = frozenset({"application/json"})
_XML_TYPES = frozenset({"text/xml", "application/xml", "application/soap+xml"})
# Response headers we manage ourselves: the body we emit is decoded and re-serialized.
_MANAGED = frozenset({"content-length", "content-encoding", "transfer-encoding", "content-type"})
# Two of these would leave the meaning of the body ambiguous.
_SINGLE = frozenset({"content-type", "content-encoding", "content-length"})
_METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
# The same, as query or form field names ("_" and "-" alike: frameworks map one to the other).
_OVERRIDE_FIELDS = frozenset({"-method", *_METHOD_OVERRIDES})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_FIELD_SPLIT = re.compile(r"[&;]")
# Outside printable ASCII, or a backslash or semicolon: characters servers interpret differently.
_PATH_UNSAFE = re.compile(r"[^!-~]|[\\;]")
_SEGMENT_UNSAFE = re.compile(r"[/\\%;]")
_MULTIPART_NAME = re.compile(rb"""name\s*=\s*["']?\s*([^"';\r\n]*)""", re.IGNORECASE)
# Never relayed, whatever a local policy says (issue 5): datastore files, NFC disk streams, console
# screenshots, ESXi configuration files (/host), guest file transfer and the managed object
# browser on vCenter/ESXi hosts...
_VSPHERE_KINDS = frozenset({Kind.VSPHERE, Kind.VSPHERE_SOAP})
_VSPHERE_DATA_ROOTS = frozenset({"folder", "host", "nfc", "screen", "guestfile", "mob"})
# ...and the SOAP operations that hand out console tickets, export/NFC leases or guest file transfers.
_SOAP_NEVER = frozenset(
    {
        "ExportVm",
        "ExportVApp",
        "ImportVApp",
        "InitiateFileTransferFromGuest",
        "InitiateFileTransferToGuest",
        "AcquireCredentialsInGuest",
        "CloneSession",
    }
)


@dataclass(frozen=True)
class FilterRequest:
    """The request as the plane sent it; `body` is only needed for rules that inspect it (SOAP)."""

    method: str
    path: str  # including the query string
    headers: Mapping[str, str]
    body: bytes | None = None


@dataclass(frozen=True)
class FilterResponse:
    """The target's response, fully buffered (at most the rule's max_body_bytes)."""

    status: int
    headers: Mapping[str, str]
    body: bytes | bytearray  # the relay's one buffer, not copied to bytes


@dataclass(frozen=True)
class Allowed:
    """What may go back to the plane."""

    status: int
    headers: dict[str, str]
    body: bytes | bytearray  # an XML filter's output is its own buffer, not copied
    rule: str
    kept: int
    removed: int


@dataclass(frozen=True)
class Denied:
    """A refusal; `reason` is safe to log and to send (it never contains response data)."""

    reason: str
    rule: str | None = None


def header_value(decision: Allowed) -> str:
    """The `X-Gateway-Filter` header value for an allowed response: `<rule>; removed=<n>`."""
    return f"{decision.rule}; removed={decision.removed}"


# --- requests ---------------------------------------------------------------------------------------


# _split_path's answers for short paths, bounded (SDKs repeat the same few; the answer is pure).
_SPLIT_CACHE: dict[str, tuple[tuple[str, ...], str] | str] = {}
_SPLIT_CACHE_MAX = 2048
_SPLIT_CACHE_PATH = 256


def _split_path(path: str) -> tuple[tuple[str, ...], str] | str:
    """Decoded path segments and raw query, or a denial reason for anything ambiguous."""
    found = _SPLIT_CACHE.get(path)
    if found is not None:
        return found
    found = _split_path_uncached(path)
    if len(path) <= _SPLIT_CACHE_PATH:
        if len(_SPLIT_CACHE) >= _SPLIT_CACHE_MAX:
            _SPLIT_CACHE.clear()
        _SPLIT_CACHE[path] = found
    return found


def _split_path_uncached(path: str) -> tuple[tuple[str, ...], str] | str:
    if "#" in path:
        return "fragment in request path"
    raw, _, query = path.partition("?")
    if not raw.startswith("/"):
        return "request path must start with '/'"
    if _PATH_UNSAFE.search(raw):
        return "request path has characters a server may interpret differently"
    parts = raw[1:].split("/")
    if parts[-1] == "":
        parts.pop()  # one trailing slash names the same resource
    segments: list[str] = []
    for part in parts:
        try:
            seg = unquote(part, errors="strict")
        except UnicodeDecodeError:
            return "request path is not valid percent-encoded UTF-8"
        # Encoded separators, dot segments and double encoding are classic allowlist bypasses.
        if not seg or seg in (".", "..") or _SEGMENT_UNSAFE.search(seg) or not seg.isprintable():
            return "request path has an empty, dot or encoded-separator segment"
        segments.append(seg)
    return tuple(segments), query


def _match(policies: PolicySet, kind: str, req: FilterRequest) -> Rule | Denied:
    method = req.method.upper()
    if method not in KNOWN_METHODS:
        return Denied(f"method {req.method[:20]!r} is not allowed")
    names = {k.lower() for k in req.headers}
    if "upgrade" in names:
        return Denied("protocol upgrades are not relayed")
    if any(n.replace("_", "-") in _METHOD_OVERRIDES for n in names):
        # Some servers honour these and would turn an allowed GET into a write.
        return Denied("method override headers are not relayed")
    split = _split_path(req.path)
    if isinstance(split, str):
        return Denied(split)
    segments, query = split
    if query and _has_override(query):
        return Denied("method override in the query string is not relayed")
    refusal = _form_override(req)
    if refusal is not None:
        return Denied(refusal)
    if kind in _VSPHERE_KINDS and segments and segments[0].lower() in _VSPHERE_DATA_ROOTS:
        return Denied(f"/{segments[0]} on vSphere hosts carries data or consoles and is never relayed")
    found = select_rule_cached(policies, kind, method, segments)
    if isinstance(found, Rule):
        return _check_rule_extras(found, req, query)
    if found is not None:
        return found
    shown = req.path if len(req.path) <= 200 else req.path[:200] + "..."
    return Denied(f"no rule allows {method} {shown} for kind {kind[:40]!r}")


def select_rule(policies: PolicySet, kind: str, method: str, segments: Sequence[str]) -> Rule | Denied | None:
    """The first deny rule matching (as a Denied), else the first allow rule matching, else None."""
    rules = policies.rules_for(kind)
    for rule in rules:
        applies = rule.deny and ("*" in rule.methods or method in rule.methods)
        if applies and rule.path.matches(segments, fold_case=True):
            return Denied(rule.reason or "denied by policy", rule.name)
    for rule in rules:
        if not rule.deny and method in rule.methods and rule.path.matches(segments):
            return rule
    return None


# A segment no rule names at its position matches exactly the patterns this marker matches (the
# wildcards), so requests that differ only there share one cache entry: /servers/<any id>. It
# is never a request's segment (_split_path refuses unprintable ones).
_OTHER = "\x00"
_CACHE_MAX = 4096
_MISS = object()


def select_rule_cached(
    policies: PolicySet, kind: str, method: str, segments: Sequence[str]
) -> Rule | Denied | None:
    """select_rule, remembered per (kind, method, path shape) on the policy set."""
    memo = policies.memo
    literals: tuple[frozenset[str], ...] | None = memo.get(kind, _MISS)
    if literals is _MISS:
        literals = memo[kind] = _literals(policies.rules_for(kind))
    if literals is None:
        return select_rule(policies, kind, method, segments)
    n = len(literals)
    shape = tuple(seg if i < n and seg.lower() in literals[i] else _OTHER for i, seg in enumerate(segments))
    key = (kind, method, shape)
    found: Rule | Denied | None = memo.get(key, _MISS)
    if found is _MISS:
        if len(memo) >= _CACHE_MAX:
            memo.clear()
            memo[kind] = literals
        found = memo[key] = select_rule(policies, kind, method, shape)
    return found


def _literals(rules: Sequence[Rule]) -> tuple[frozenset[str], ...] | None:
    """The lower-cased literal segments any rule names, per position; None: do not cache."""
    at: list[set[str]] = []
    for rule in rules:
        for i, seg in enumerate(rule.path.segments):
            if seg in ("*", "**") or seg.startswith("{"):
                continue
            if _OTHER in seg:
                return None  # the marker could equal it: no shapes for this kind
            while len(at) <= i:
                at.append(set())
            at[i].add(seg.lower())
    return tuple(frozenset(s) for s in at)


def _is_override(name: str) -> bool:
    # Decoded until stable (bounded): a server that decodes once more than we do must not see one.
    for _ in range(3):
        decoded = unquote_plus(name, errors="replace")
        if decoded == name:
            break
        name = decoded
    return name.strip().lower().replace("_", "-") in _OVERRIDE_FIELDS


def _has_override(fields: str) -> bool:
    """Whether a query string or form body names a method-override field (`_method`, ...)."""
    return any(_is_override(part.partition("=")[0]) for part in _FIELD_SPLIT.split(fields))


def _form_override(req: FilterRequest) -> str | None:
    """A reason to refuse a form body that overrides the method (or that we were not shown)."""
    ctype = next((v for k, v in req.headers.items() if k.lower() == "content-type"), "")
    mtype = _media_type(ctype)[0] if ctype else ""
    if mtype not in FORM_TYPES:
        return None
    if req.body is None:
        return "form body was not given for inspection"
    if mtype == "multipart/form-data":
        names = (m.decode("latin-1") for m in _MULTIPART_NAME.findall(req.body))
        found = any(_is_override(n) for n in names)
    else:
        found = _has_override(req.body.decode("latin-1"))
    return "method override in the form body is not relayed" if found else None


def _check_rule_extras(rule: Rule, req: FilterRequest, query: str) -> Rule | Denied:
    if rule.query is not None and query:
        try:
            names = {name for name, _ in parse_qsl(query, keep_blank_values=True, errors="strict")}
        except (UnicodeDecodeError, ValueError):
            return Denied("query string is not valid", rule.name)
        extra = names - rule.query
        if extra:
            return Denied(f"query parameter {sorted(extra)[0][:40]!r} is not allowed", rule.name)
    if rule.soap_operations is not None:
        if req.body is None:
            return Denied("rule inspects the request body but none was given", rule.name)
        if len(req.body) > MAX_REQUEST_BODY_BYTES:
            return Denied("request body too large to inspect", rule.name)
        try:
            operation = soap_operation(req.body)
        except XmlRejected as exc:
            return Denied(f"request: {exc}", rule.name)
        if _never_soap(operation):
            return Denied(f"SOAP operation {operation[:60]!r} is never relayed", rule.name)
        if operation not in rule.soap_operations:
            return Denied(f"SOAP operation {operation[:60]!r} is not allowed", rule.name)
    return rule


def _never_soap(operation: str) -> bool:
    if operation in _SOAP_NEVER or operation.startswith("HttpNfcLease"):
        return True
    # AcquireTicket, AcquireMksTicket, AcquireCloneTicket, AcquireCimServicesTicket, ...
    return operation.startswith("Acquire") and "Ticket" in operation


def check_request(policies: PolicySet, kind: str, req: FilterRequest) -> Rule | Denied:
    """Find the rule allowing this request, before the target is contacted; Denied when there is none."""
    try:
        return _match(policies, kind, req)
    except Exception:  # never raise on hostile input: a bug here must deny, not crash the stream
        log.exception("metadata filter failed while checking a request")
        return Denied("internal filter error")


# --- responses --------------------------------------------------------------------------------------


class _Reject(ValueError):
    """A body we refuse; the message is the denial reason."""


def _decode(body: bytes, encoding: str, rule: Rule) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        wbits = [31]
    elif enc == "deflate":
        wbits = [15, -15]  # RFC says zlib-wrapped; some servers send raw deflate
    else:
        raise _Reject(f"content encoding {enc[:40]!r} is not supported")
    limit = min(rule.max_body_bytes, max(len(body), 1) * rule.max_ratio)
    for bits in wbits:
        d = zlib.decompressobj(bits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise _Reject("decompressed body exceeds the size or ratio bound")
        if not d.eof or d.unused_data or d.unconsumed_tail:
            raise _Reject("compressed body is truncated or has trailing data")
        return out
    raise _Reject("compressed body is corrupt")


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    main, *params = value.split(";")
    out: dict[str, str] = {}
    for p in params:
        k, _, v = p.partition("=")
        out[k.strip().lower()] = v.strip().strip('"').lower()
    return main.strip().lower(), out


def _is_json(mtype: str) -> bool:
    return mtype in _JSON_TYPES or (mtype.startswith("application/") and mtype.endswith("+json"))


def _is_xml(mtype: str) -> bool:
    return mtype in _XML_TYPES or (mtype.startswith("application/") and mtype.endswith("+xml"))


def _filter_body(
    allow: BodyAllow, headers: Mapping[str, str], body: bytes
) -> tuple[bytes | bytearray, int, int]:
    ctype = headers.get("content-type", "")
    if not ctype:
        raise _Reject("response has no content type")
    mtype, params = _media_type(ctype)
    charset = params.get("charset", "utf-8")
    if allow.json is not None and _is_json(mtype):
        if charset != "utf-8":
            raise _Reject(f"JSON charset {charset[:20]!r} is not supported")
        try:
            return filter_json(body, allow.json)
        except JsonRejected as exc:
            raise _Reject(str(exc)) from None
    if allow.xml is not None and _is_xml(mtype):
        try:
            return filter_xml(body, allow.xml)
        except XmlRejected as exc:
            raise _Reject(str(exc)) from None
    raise _Reject(f"content type {mtype[:60]!r} is not allowed by the rule")


def _head(
    policies: PolicySet, kind: str, req: FilterRequest, headers: Mapping[str, str], rule: Rule | None
) -> Denied | tuple[Rule, dict[str, str], dict[str, str]]:
    """The rule, the response's headers by lower-cased name, and those that may leave."""
    found = _match(policies, kind, req) if rule is None else rule
    if isinstance(found, Denied):
        return found
    rule = found
    src: dict[str, str] = {}
    for k, v in headers.items():
        key = k.lower()
        if key in src and key in _SINGLE:
            return Denied(f"response has more than one {key} header", rule.name)
        src[key] = v
    return rule, src, {k: v for k, v in src.items() if k in rule.headers and k not in _MANAGED}


def _response(
    policies: PolicySet, kind: str, req: FilterRequest, resp: FilterResponse, rule: Rule | None
) -> Allowed | Denied:
    head = _head(policies, kind, req, resp.headers, rule)
    if isinstance(head, Denied):
        return head
    rule, src, headers = head
    if rule.passthrough:
        for k in ("content-type", "content-encoding"):
            if k in src:
                headers[k] = src[k]
        return Allowed(resp.status, headers, resp.body, rule.name, 0, 0)
    if resp.status == 206 or "content-range" in src:
        # A slice is not a document: filtered as one, a cut inside a removed value can look allowed.
        return Denied("partial content (206 or Content-Range) cannot be filtered", rule.name)
    if len(resp.body) > rule.max_body_bytes:
        return Denied("response body exceeds the size bound", rule.name)
    no_body = req.method.upper() == "HEAD" or resp.status in (204, 304) or resp.status < 200
    if no_body or not resp.body:
        return Allowed(resp.status, headers, b"", rule.name, 0, 1 if resp.body else 0)
    ok = 200 <= resp.status < 300
    allow = rule.body if ok else rule.errors
    try:
        if allow.json is None and allow.xml is None:
            raise _Reject("the rule allows no response body")
        plain = _decode(resp.body, src.get("content-encoding", ""), rule)
        body, kept, removed = _filter_body(allow, src, plain)
    except _Reject as exc:
        if ok:
            return Denied(str(exc), rule.name)
        # An error status still reaches the plane, without the body we could not filter.
        return Allowed(resp.status, headers, b"", rule.name, 0, 1)
    headers["content-type"] = src["content-type"]
    headers["content-length"] = str(len(body))
    return Allowed(resp.status, headers, body, rule.name, kept, removed)


class StreamedResponse:
    """A response filtered as its body arrives (an XML body the rule filters): feed() every piece,
    then finish(). The input is never held whole; finish() decides exactly as filter_response
    would on the whole body (tests/unit/test_filter_streaming.py)."""

    def __init__(
        self, rule: Rule, status: int, headers: dict[str, str], content_type: str, allow: XmlAllow
    ) -> None:
        self.rule = rule
        self.status = status
        self.headers = headers
        self.content_type = content_type
        self.size = 0
        self._xml: XmlStreamFilter | None = XmlStreamFilter(allow)
        self._error: BaseException | None = None

    @property
    def held(self) -> int:
        """Bytes of filtered output held so far."""
        return self._xml.held if self._xml is not None else 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Filter the next piece; a refusal is kept for finish() and the rest is not parsed."""
        self.size += len(data)
        if self._xml is None:
            return
        try:
            self._xml.feed(data)
        except Exception as exc:  # decided in finish(), as filter_response would decide it
            self._error, self._xml = exc, None

    def finish(self) -> Allowed | Denied:
        """The decision on the whole body; never raises."""
        try:
            return self._finish()
        except (RecursionError, MemoryError, ValueError, UnicodeError):
            return Denied("response body cannot be filtered safely")
        except Exception:  # never raise on hostile input: a bug here must deny, not leak
            log.exception("metadata filter failed while filtering a response")
            return Denied("internal filter error")

    def _finish(self) -> Allowed | Denied:
        rule, status, headers = self.rule, self.status, self.headers
        xml, self._xml = self._xml, None
        if self.size > rule.max_body_bytes:
            return Denied("response body exceeds the size bound", rule.name)
        if not self.size:
            return Allowed(status, headers, b"", rule.name, 0, 0)
        try:
            if self._error is not None:
                raise self._error
            assert xml is not None
            body, kept, removed = xml.close()
        except XmlRejected as exc:
            if 200 <= status < 300:
                return Denied(str(exc), rule.name)
            return Allowed(status, headers, b"", rule.name, 0, 1)
        headers["content-type"] = self.content_type
        headers["content-length"] = str(len(body))
        return Allowed(status, headers, body, rule.name, kept, removed)


def stream_response(
    policies: PolicySet,
    kind: str,
    req: FilterRequest,
    status: int,
    headers: Mapping[str, str],
    rule: Rule | None = None,
) -> StreamedResponse | None:
    """A filter to feed this response's body to as it arrives, when the rule filters it as XML
    (not passthrough, not partial, a body to filter, identity-encoded); None: buffer the body and
    call filter_response (which also gives every refusal). `rule` as for filter_response."""
    try:
        head = _head(policies, kind, req, headers, rule)
        if isinstance(head, Denied):
            return None
        rule, src, allowed = head
        if rule.passthrough or status == 206 or "content-range" in src:
            return None
        if req.method.upper() == "HEAD" or status in (204, 304) or status < 200:
            return None
        allow = rule.body if 200 <= status < 300 else rule.errors
        ctype = src.get("content-type", "")
        if (
            allow.xml is None
            or not ctype
            or src.get("content-encoding", "").strip().lower() not in ("", "identity")
        ):
            return None
        mtype = _media_type(ctype)[0]
        if not _is_xml(mtype) or (allow.json is not None and _is_json(mtype)):
            return None
        return StreamedResponse(rule, status, allowed, ctype, allow.xml)
    except Exception:  # the buffered path decides, and logs
        return None


def filter_response(
    policies: PolicySet, kind: str, req: FilterRequest, resp: FilterResponse, rule: Rule | None = None
) -> Allowed | Denied:
    """Filter a buffered response down to what the matching rule allows; Denied when it cannot.

    `rule` is what check_request returned for this same request: given, the request is not
    matched a second time (the relay's one match per call), and the response is judged by the rule
    that admitted its request, even if the policies were reloaded in between."""
    try:
        return _response(policies, kind, req, resp, rule)
    except (RecursionError, MemoryError, ValueError, UnicodeError):
        return Denied("response body cannot be filtered safely")
    except Exception:  # never raise on hostile input: a bug here must deny, not leak
        log.exception("metadata filter failed while filtering a response")
        return Denied("internal filter error")

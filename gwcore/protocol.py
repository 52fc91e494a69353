"""Tunnel wire protocol v1: a pure frame codec (bytes in, values out, no I/O). See docs/protocol.md."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NamedTuple

from gwcore.errors import UserError
from gwcore.safeload import ParseError, loads_json

VERSION = 1
# byte 0: version (high nibble) | type (low nibble); byte 1: flags; u32 stream id; u32 payload length.
HEADER = struct.Struct("!BBII")
HEADER_SIZE = HEADER.size

FLAG_FIN = 0x01  # OPEN/DATA: the sender's half of the stream ends with this frame

# HELLO capability: this side understands CONTROL frames (§13). CONTROL is sent only to a peer that
# announced it, so a plane or gateway of the first version never sees one.
CAP_CONTROL = "control.1"
# A CONTROL message's "type": lower-case words joined by "-".
_CONTROL_TYPE = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

# Hard ceilings a peer may never exceed whatever it announces in HELLO.
ABSOLUTE_MAX_FRAME = 16 * 1024 * 1024
ABSOLUTE_MAX_HEADERS = 256

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_HELLO = struct.Struct("!HHIIIIII")
_GOAWAY = struct.Struct("!IH")
_RESET = struct.Struct("!H")
_HDR_ITEM = struct.Struct("!BH")


class FrameType(IntEnum):
    """Frame types; the numbers are the wire values."""

    HELLO = 1
    OPEN = 2
    DATA = 3
    END = 4
    RESET = 5
    WINDOW = 6
    PING = 7
    PONG = 8
    GOAWAY = 9
    CONTROL = 10


class ErrorCode(StrEnum):
    """Stable error codes carried by RESET and GOAWAY (the wire carries the number, see CODE_NUMBERS)."""

    NO_ERROR = "no-error"
    PROTOCOL_ERROR = "protocol-error"
    INTERNAL = "internal"
    FLOW_CONTROL = "flow-control"
    CANCELLED = "cancelled"
    TOO_MANY_STREAMS = "too-many-streams"
    GOING_AWAY = "going-away"
    TARGET_UNKNOWN = "target-unknown"
    TARGET_REFUSED = "target-refused"
    TARGET_TIMEOUT = "target-timeout"
    TLS_VERIFY_FAILED = "tls-verify-failed"
    FILTERED = "filtered"
    TARGET_ERROR = "target-error"
    ADDRESS_FORBIDDEN = "address-forbidden"
    BAD_REQUEST = "bad-request"
    HEARTBEAT_TIMEOUT = "heartbeat-timeout"
    BUSY = "busy"


CODE_NUMBERS: dict[ErrorCode, int] = {ErrorCode(code): number for number, code in enumerate(ErrorCode)}
_CODES_BY_NUMBER: dict[int, ErrorCode] = {number: code for code, number in CODE_NUMBERS.items()}

# Frames that belong to the connection (stream id 0) and frames that belong to a stream (id > 0).
_CONNECTION_FRAMES = frozenset(
    {FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.GOAWAY, FrameType.CONTROL}
)
_STREAM_FRAMES = frozenset({FrameType.OPEN, FrameType.DATA, FrameType.END, FrameType.RESET})
_TYPES: dict[int, FrameType] = {t.value: t for t in FrameType}
# Byte 0 of a DATA frame, computed once: the mux writes DATA headers on its hot path.
DATA_TYPE_BYTE = (VERSION << 4) | FrameType.DATA
# What the decoder checks per frame, by byte 0 (version and type), decided once here rather than
# per frame: (type, whether the stream id must be 0 (None: either), exact payload length or -1,
# whether max_header_block (not max_frame_size) bounds the payload).
_RULES: dict[int, tuple[FrameType, bool | None, int, bool]] = {
    (VERSION << 4) | t: (
        t,
        True if t in _CONNECTION_FRAMES else False if t in _STREAM_FRAMES else None,
        {FrameType.PING: 8, FrameType.PONG: 8, FrameType.WINDOW: 4, FrameType.END: 0}.get(t, -1),
        t in (FrameType.OPEN, FrameType.CONTROL),
    )
    for t in FrameType
}


class ProtocolError(UserError):
    """The peer broke the protocol; the connection must be closed (GOAWAY with `code`)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Frame(NamedTuple):
    """One decoded frame (a named tuple: the decoder makes one per frame on the hot path)."""

    type: FrameType
    flags: int
    stream_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Limits:
    """What a peer accepts; announced in HELLO, binding on the other side."""

    max_frame_size: int = 256 * 1024
    max_header_block: int = 64 * 1024
    max_streams: int = 1024
    initial_stream_window: int = 1024 * 1024
    initial_connection_window: int = 16 * 1024 * 1024
    heartbeat_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class Hello:
    """HELLO payload: supported versions, limits and capability names."""

    min_version: int = VERSION
    max_version: int = VERSION
    limits: Limits = field(default_factory=Limits)
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestHead:
    """OPEN payload sent by the plane: which target, and the HTTP request line and headers."""

    method: str
    target: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """OPEN payload sent back by the gateway: HTTP status and headers."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()


# --- encoding ------------------------------------------------------------------------------------


def encode_frame(ftype: FrameType, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame: header plus payload."""
    return HEADER.pack((VERSION << 4) | ftype, flags, stream_id, len(payload)) + payload


def encode_hello(hello: Hello) -> bytes:
    """A HELLO frame."""
    lim = hello.limits
    parts = [
        _HELLO.pack(
            hello.min_version,
            hello.max_version,
            lim.max_frame_size,
            lim.max_header_block,
            lim.max_streams,
            lim.initial_stream_window,
            lim.initial_connection_window,
            lim.heartbeat_ms,
        ),
        bytes([len(hello.capabilities)]),
    ]
    for cap in hello.capabilities:
        raw = cap.encode("ascii")
        parts.append(bytes([len(raw)]) + raw)
    return encode_frame(FrameType.HELLO, 0, b"".join(parts))


def _encode_headers(headers: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> bytes:
    # The encoder refuses exactly what the decoder rejects: a header the peer cannot accept
    # would be a protocol error there and end every stream on the connection, not just this one.
    if len(headers) > ABSOLUTE_MAX_HEADERS:
        raise ProtocolError(f"too many headers: {len(headers)} > {ABSOLUTE_MAX_HEADERS}")
    parts = [_U16.pack(len(headers))]
    raw_values = []
    for name, value in headers:
        raw_name = _ENCODED_NAMES.get(name)
        if raw_name is None:
            raw_name = _valid_name(name)
        raw_value = value.encode("utf-8", "surrogateescape")
        if len(raw_name) > 255 or len(raw_value) > 0xFFFF:
            raise ProtocolError(f"header {name[:40]!r} too long")
        parts.append(_HDR_ITEM.pack(len(raw_name), len(raw_value)))
        parts.append(raw_name)
        parts.append(raw_value)
        raw_values.append(raw_value)
    _check_values(headers, raw_values)
    return b"".join(parts)


def _valid_name(name: str) -> bytes:
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raw = b""
    if _TOKEN_RE.fullmatch(raw) is None:
        raise ProtocolError(f"invalid header name {name[:40]!r}")
    if len(_ENCODED_NAMES) < _NAME_CACHE_SIZE:
        _ENCODED_NAMES[name] = raw
    return raw


def encode_request_head(stream_id: int, head: RequestHead, fin: bool = False) -> bytes:
    """An OPEN frame carrying a request head (plane to gateway)."""
    method = head.method.encode("ascii", "replace")
    target = head.target.encode("utf-8")
    path = head.path.encode("utf-8", "surrogateescape")
    if len(method) > 255 or len(target) > 255 or len(path) > 0xFFFF:
        raise ProtocolError("request head field too long")
    if _TOKEN_RE.fullmatch(method) is None:
        raise ProtocolError(f"invalid method {head.method[:20]!r}")
    if _bad_path(path):
        raise ProtocolError(f"invalid request path {head.path[:60]!r}")
    payload = b"".join(
        (
            bytes([len(method)]),
            method,
            bytes([len(target)]),
            target,
            _U16.pack(len(path)),
            path,
            _encode_headers(head.headers),
        )
    )
    return encode_frame(FrameType.OPEN, stream_id, payload, FLAG_FIN if fin else 0)


def encode_response_head(stream_id: int, head: ResponseHead, fin: bool = False) -> bytes:
    """An OPEN frame carrying a response head (gateway to plane)."""
    payload = _U16.pack(head.status) + _encode_headers(head.headers)
    return encode_frame(FrameType.OPEN, stream_id, payload, FLAG_FIN if fin else 0)


def encode_data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    """A DATA frame."""
    return HEADER.pack(DATA_TYPE_BYTE, FLAG_FIN if fin else 0, stream_id, len(data)) + data


def encode_end(stream_id: int) -> bytes:
    """An END frame: the sender's half of the stream is complete."""
    return encode_frame(FrameType.END, stream_id)


def encode_reset(stream_id: int, code: ErrorCode, message: str = "") -> bytes:
    """A RESET frame: the stream is aborted in both directions."""
    text = message.encode("utf-8", "replace")[:1024]
    return encode_frame(FrameType.RESET, stream_id, _RESET.pack(CODE_NUMBERS[code]) + text)


def encode_window(stream_id: int, increment: int) -> bytes:
    """A WINDOW frame granting `increment` more bytes of DATA (stream 0: the connection)."""
    return encode_frame(FrameType.WINDOW, stream_id, _U32.pack(increment))


def encode_ping(opaque: int) -> bytes:
    """A PING frame with an 8-byte opaque value."""
    return encode_frame(FrameType.PING, 0, _U64.pack(opaque))


def encode_pong(opaque: int) -> bytes:
    """A PONG frame echoing a PING's opaque value."""
    return encode_frame(FrameType.PONG, 0, _U64.pack(opaque))


def encode_goaway(last_stream_id: int, code: ErrorCode = ErrorCode.NO_ERROR, message: str = "") -> bytes:
    """A GOAWAY frame: no new streams above `last_stream_id`; existing ones may finish."""
    text = message.encode("utf-8", "replace")[:1024]
    return encode_frame(FrameType.GOAWAY, 0, _GOAWAY.pack(last_stream_id, CODE_NUMBERS[code]) + text)


def encode_control(message: dict[str, object]) -> bytes:
    """A CONTROL frame: one JSON object with a "type" (§13). ProtocolError if it is not one."""
    kind = message.get("type")
    if not isinstance(kind, str) or _CONTROL_TYPE.fullmatch(kind) is None:
        raise ProtocolError(f"CONTROL message type {kind!r} is not a lower-case name")
    try:
        payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"CONTROL message {kind} is not JSON: {exc}") from None
    return encode_frame(FrameType.CONTROL, 0, payload.encode("utf-8"))


# --- decoding ------------------------------------------------------------------------------------


class Decoder:
    """Incremental frame decoder: feed bytes, get complete frames; only ProtocolError escapes."""

    def __init__(self, max_frame_size: int = 256 * 1024, max_header_block: int = 64 * 1024) -> None:
        self.max_frame_size = min(max_frame_size, ABSOLUTE_MAX_FRAME)
        self.max_header_block = max_header_block
        self._buf = bytearray()
        self._failed = False

    @property
    def pending(self) -> int:
        """Bytes buffered towards an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes and return every frame they complete, in order."""
        if self._failed:
            raise ProtocolError("decoder already failed")
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        frames: list[Frame] = []
        pos = 0
        end = len(view)
        unpack = HEADER.unpack_from
        rules = _RULES
        block, frame_max = self.max_header_block, self.max_frame_size
        try:
            while end - pos >= HEADER_SIZE:
                vt, flags, sid, length = unpack(view, pos)
                rule = rules.get(vt)
                if rule is None:
                    self._check_slowly(vt, sid, length)  # names the fault and raises
                    raise AssertionError
                ftype, zero_sid, exact, head = rule
                if (
                    length > (block if head else frame_max)
                    or (zero_sid is not None and (sid == 0) is not zero_sid)
                    or (exact >= 0 and length != exact)
                ):
                    self._check_slowly(vt, sid, length)
                if end - pos - HEADER_SIZE < length:
                    break  # the header is checked already: garbage fails before 4 GiB arrive
                start = pos + HEADER_SIZE
                frames.append(Frame(ftype, flags, sid, bytes(view[start : start + length])))
                pos = start + length
        except ProtocolError:
            self._failed = True
            raise
        if buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return frames

    def _check_slowly(self, vt: int, sid: int, length: int) -> None:
        if length > self._limit_for(vt & 0x0F):
            self._fail(f"frame type {vt & 0x0F} payload of {length} bytes exceeds the limit")
        self._check(vt, sid, length)

    def _limit_for(self, ftype: int) -> int:
        if ftype == FrameType.OPEN or ftype == FrameType.CONTROL:
            return self.max_header_block
        return self.max_frame_size

    def _fail(self, message: str) -> None:
        self._failed = True
        raise ProtocolError(message)

    def _check(self, vt: int, sid: int, length: int) -> FrameType:
        version, raw_type = vt >> 4, vt & 0x0F
        if version != VERSION:
            self._fail(f"unsupported frame version {version}")
        ftype = _TYPES.get(raw_type)
        if ftype is None:
            self._fail(f"unknown frame type {raw_type}")
            raise AssertionError  # unreachable; keeps mypy's narrowing
        if ftype in _CONNECTION_FRAMES and sid != 0:
            self._fail(f"{ftype.name} frame on stream {sid}")
        if ftype in _STREAM_FRAMES and sid == 0:
            self._fail(f"{ftype.name} frame on stream 0")
        if ftype in (FrameType.PING, FrameType.PONG) and length != 8:
            self._fail(f"{ftype.name} payload must be 8 bytes, not {length}")
        if ftype is FrameType.WINDOW and length != 4:
            self._fail(f"WINDOW payload must be 4 bytes, not {length}")
        if ftype is FrameType.END and length != 0:
            self._fail("END frame with a payload")
        return ftype


class _Reader:
    """Bounds-checked cursor over a payload; every short read becomes a ProtocolError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("truncated payload")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} trailing bytes in payload")


_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# CR, LF and NUL may appear in no header value or path (they would split or end a line in HTTP/1).
_BAD_CHAR = re.compile(rb"[\r\n\x00]").search
# Header names repeat on every message (Content-Type, Date, ...): checked once, then looked up.
# Bounded, so a peer inventing names cannot grow it.
_NAME_CACHE_SIZE = 1024
_DECODED_NAMES: dict[bytes, str] = {}
_ENCODED_NAMES: dict[str, bytes] = {}


def _check_values(headers: Sequence[tuple[str, str]], values: list[bytes]) -> None:
    """No CR, LF or NUL in the raw `values` of `headers` (name, value) pairs.

    One scan over all values (joined) instead of one per value; the slow path names the culprit.
    """
    if values and _BAD_CHAR(b"".join(values)) is not None:
        bad = next(h for h, v in zip(headers, values, strict=True) if _BAD_CHAR(v) is not None)
        raise ProtocolError(f"invalid characters in header {bad[0][:40]!r}")


_BAD_PATH_CHAR = re.compile(rb"[\r\n\x00 ]").search


def _bad_path(path: bytes) -> bool:
    return not path.startswith(b"/") or _BAD_PATH_CHAR(path) is not None


def _name_text(name: bytes) -> str:
    if _TOKEN_RE.fullmatch(name) is None:
        raise ProtocolError(f"invalid header name {name[:40]!r}")
    text = name.decode("ascii")
    if len(_DECODED_NAMES) < _NAME_CACHE_SIZE:
        _DECODED_NAMES[name] = text
    return text


def _decode_headers(r: _Reader) -> tuple[tuple[str, str], ...]:
    count = r.u16()
    if count > ABSOLUTE_MAX_HEADERS:
        raise ProtocolError(f"too many headers: {count} > {ABSOLUTE_MAX_HEADERS}")
    data, pos, end = r.data, r.pos, len(r.data)
    headers = []
    values = []
    unpack = _HDR_ITEM.unpack_from
    names = _DECODED_NAMES
    for _ in range(count):
        if pos + 3 > end:
            raise ProtocolError("truncated payload")
        nlen, vlen = unpack(data, pos)
        npos = pos + 3
        vpos = npos + nlen
        pos = vpos + vlen
        if pos > end:
            raise ProtocolError("truncated payload")
        name = data[npos:vpos]
        value = data[vpos:pos]
        text = names.get(name)
        if text is None:
            text = _name_text(name)
        values.append(value)
        headers.append((text, value.decode("utf-8", "surrogateescape")))
    _check_values(headers, values)
    r.pos = pos
    return tuple(headers)


def decode_request_head(payload: bytes) -> RequestHead:
    """The request head of an OPEN frame from the plane."""
    r = _Reader(payload)
    method = r.take(r.u8())
    if _TOKEN_RE.fullmatch(method) is None:
        raise ProtocolError(f"invalid method {method[:20]!r}")
    try:
        target = r.take(r.u8()).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("target name is not UTF-8") from None
    path = r.take(r.u16())
    if _bad_path(path):
        raise ProtocolError(f"invalid request path {path[:60]!r}")
    headers = _decode_headers(r)
    r.done()
    return RequestHead(method.decode("ascii"), target, path.decode("utf-8", "surrogateescape"), headers)


def decode_response_head(payload: bytes) -> ResponseHead:
    """The response head of an OPEN frame from the gateway."""
    r = _Reader(payload)
    status = r.u16()
    if not 100 <= status <= 999:
        raise ProtocolError(f"invalid status {status}")
    headers = _decode_headers(r)
    r.done()
    return ResponseHead(status, headers)


def decode_hello(payload: bytes) -> Hello:
    """A HELLO payload."""
    r = _Reader(payload)
    fields = _HELLO.unpack(r.take(_HELLO.size))
    caps = []
    for _ in range(r.u8()):
        raw = r.take(r.u8())
        try:
            caps.append(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise ProtocolError("capability name is not ASCII") from None
    # Trailing bytes are allowed: later minor revisions may append fields.
    min_v, max_v, frame, block, streams, swin, cwin, hb = fields
    if min_v > max_v:
        raise ProtocolError(f"HELLO version range {min_v}..{max_v} is empty")
    if frame < 1024 or block < 1024 or streams < 1 or swin < 1 or cwin < 1 or hb < 100:
        raise ProtocolError("HELLO limits below the protocol minimums")
    if swin > 0x7FFFFFFF or cwin > 0x7FFFFFFF:
        raise ProtocolError("HELLO window above 2^31-1")
    limits = Limits(min(frame, ABSOLUTE_MAX_FRAME), block, streams, swin, cwin, hb)
    return Hello(min_v, max_v, limits, tuple(caps))


def negotiate_version(ours: Hello, theirs: Hello) -> int:
    """The highest version both sides support, or ProtocolError."""
    version = min(ours.max_version, theirs.max_version)
    if version < max(ours.min_version, theirs.min_version):
        raise ProtocolError(
            f"no common protocol version (ours {ours.min_version}..{ours.max_version}, "
            f"theirs {theirs.min_version}..{theirs.max_version})"
        )
    return version


def decode_reset(payload: bytes) -> tuple[ErrorCode, str]:
    """A RESET payload: error code (unknown numbers read as internal) and message."""
    if len(payload) < 2:
        raise ProtocolError("truncated RESET")
    number = _RESET.unpack_from(payload)[0]
    return _CODES_BY_NUMBER.get(number, ErrorCode.INTERNAL), payload[2:].decode("utf-8", "replace")


def decode_window(payload: bytes) -> int:
    """A WINDOW increment (1..2^31-1)."""
    increment: int = _U32.unpack(payload)[0]
    if not 0 < increment <= 0x7FFFFFFF:
        raise ProtocolError(f"WINDOW increment {increment} out of range", ErrorCode.FLOW_CONTROL)
    return increment


def decode_ping(payload: bytes) -> int:
    """A PING/PONG opaque value."""
    value: int = _U64.unpack(payload)[0]
    return value


def decode_goaway(payload: bytes) -> tuple[int, ErrorCode, str]:
    """A GOAWAY payload: last stream id, error code and message."""
    if len(payload) < _GOAWAY.size:
        raise ProtocolError("truncated GOAWAY")
    last, number = _GOAWAY.unpack_from(payload)
    message = payload[_GOAWAY.size :].decode("utf-8", "replace")
    return last, _CODES_BY_NUMBER.get(number, ErrorCode.INTERNAL), message


def decode_control(payload: bytes) -> dict[str, object]:
    """A CONTROL payload: a JSON object (duplicate keys refused) with a valid "type"."""
    try:
        message = loads_json(payload)
    except ParseError as exc:
        raise ProtocolError(f"CONTROL payload is not JSON: {exc.reason}") from None
    if not isinstance(message, dict):
        raise ProtocolError("CONTROL payload is not a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or _CONTROL_TYPE.fullmatch(kind) is None:
        raise ProtocolError(f"CONTROL message type {str(kind)[:40]!r} is not a lower-case name")
    return message

"""Support bundles over the tunnel: the plane opens a stream to "@support" (protocol §13.3) and the
gateway streams a redacted bundle back, under the stream's flow control.

The bundle comes from the gateway-support socket when it is there: a root helper that systemd
starts per connection (image/: gateway-support.socket, `firstboot support-bundle --stdout`),
because the journal and first boot's state are not readable from the gateway's sandbox. Without
the socket (a development machine, a unit that failed), the gateway builds one itself with
what it can read, through the same gwcore.support_bundle and the same redaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gwcore import health, support_bundle
from gwcore import protocol as p
from gwcore.streams import Stream, StreamReset

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/gateway-support.sock")
MAX_BUNDLE = 64 * 1024 * 1024  # a bundle is a few MiB at most (the journal is capped at 20000 lines)
CHUNK = 64 * 1024
HELPER_TIMEOUT = 120.0  # the helper's first byte (journalctl of a long boot, under emulation)
_GZIP_MAGIC = b"\x1f\x8b"


def gateway_files(config: Path | None, targets: Path, status: Path, state_dir: Path) -> tuple[str, ...]:
    """What a bundle built here holds: the shared list, with this daemon's own config, inventory,
    status file and identity where it was started with other paths (a test, a development run).
    Never key.pem: only identity.json is named from the state directory."""
    own = {
        "/etc/gateway/gateway.yaml": config,
        "/etc/gateway/targets.yaml": targets,
        "/run/gateway/status.json": status,
        "/var/lib/gateway/identity.json": state_dir / "identity.json",
    }
    return tuple(str(own[f]) if own.get(f) is not None else f for f in support_bundle.FILES)


def gateway_tails(audit_log: Path | None) -> tuple[tuple[str, int], ...]:
    """The audit log's tail, from where this daemon writes it (none when decisions go to the journal)."""
    return ((str(audit_log), support_bundle.AUDIT_TAIL),) if audit_log is not None else ()


def _read(name: str) -> bytes | None:
    try:
        with open(name, "rb") as fh:
            return fh.read(4 * 1024 * 1024)
    except OSError:
        return None


def _run(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}\n"
    return proc.stdout + proc.stderr


class SupportBundles:
    """Serves "@support" streams, one bundle at a time."""

    def __init__(
        self,
        socket_path: Path = DEFAULT_SOCKET,
        *,
        files: Sequence[str] = support_bundle.FILES,
        tails: Sequence[tuple[str, int]] = support_bundle.TAILS,
        extra: Callable[[], list[tuple[str, bytes]]] = list,
    ) -> None:
        self.socket_path = socket_path
        self.files = tuple(files)
        self.tails = tuple(tails)
        self.extra = extra  # (name, bytes) entries of the gateway's own (its latest health record)
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.served = 0

    def on_open(self, stream: Stream) -> None:
        """A stream to a reserved target: serve it in its own task (cancelled if the plane aborts)."""
        task = asyncio.create_task(self.serve(stream), name="support-bundle")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        stream.on_abort = task.cancel

    async def close(self) -> None:
        """Cancel bundles in flight."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def serve(self, stream: Stream) -> None:
        """Answer one stream: the bundle, or a RESET that says why not."""
        head = stream.request
        assert head is not None
        if head.target != health.SUPPORT_TARGET:
            stream.reset(p.ErrorCode.TARGET_UNKNOWN, f"no reserved target {head.target[:40]!r}")
            return
        if head.method != "GET" or head.path.split("?", 1)[0] != health.SUPPORT_PATH:
            stream.reset(
                p.ErrorCode.BAD_REQUEST, f"only GET {health.SUPPORT_PATH} on {health.SUPPORT_TARGET}"
            )
            return
        if self._busy:
            stream.reset(p.ErrorCode.BUSY, "a support bundle is being built already")
            return
        self._busy = True
        try:
            await self._serve(stream)
        except StreamReset as exc:
            log.info("support bundle: stream %d ended by the plane: %s", stream.id, exc)
        except asyncio.CancelledError:
            stream.reset(p.ErrorCode.CANCELLED, "gateway shutting down")
            raise
        except Exception:
            log.exception("support bundle failed")
            stream.reset(p.ErrorCode.INTERNAL, "")
        finally:
            self._busy = False

    async def _serve(self, stream: Stream) -> None:
        source = "helper"
        helper = await self._open_helper()
        first = b""
        if helper is not None:
            reader, writer = helper
            try:
                async with asyncio.timeout(HELPER_TIMEOUT):
                    first = await reader.read(CHUNK)
            except (OSError, TimeoutError) as exc:
                log.warning("support bundle: the helper did not answer: %s", exc)
            if not first.startswith(_GZIP_MAGIC):
                writer.close()
                helper = None
        if helper is None:
            source = "gateway"
            data = await asyncio.to_thread(self._build_here)
            chunks = _chunks(data)
        else:
            chunks = _stream_from(helper[0], helper[1], first)
        stream.send_head(
            p.ResponseHead(200, (("Content-Type", "application/gzip"), ("X-Bundle-Source", source)))
        )
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > MAX_BUNDLE:
                stream.reset(p.ErrorCode.INTERNAL, f"support bundle over {MAX_BUNDLE} bytes")
                return
            await stream.write(chunk)
        stream.end()
        self.served += 1
        log.info("support bundle: %d bytes sent to the plane (built by the %s)", sent, source)

    async def _open_helper(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if not self.socket_path.exists():
            return None
        try:
            return await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:
            log.warning("support bundle: cannot reach %s (%s): building one here", self.socket_path, exc)
            return None

    def _build_here(self) -> bytes:
        extra = self.extra()
        note = (
            "Built by the gateway itself: the gateway-support helper was not available, so the journal\n"
            "and first boot's state may be missing (the gateway's sandbox cannot read them).\n"
        )
        return support_bundle.build(
            _read, _run, files=self.files, tails=self.tails, extra=[("README.txt", note.encode()), *extra]
        )


async def _chunks(data: bytes) -> Any:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


async def _stream_from(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> Any:
    try:
        yield first
        while True:
            async with asyncio.timeout(HELPER_TIMEOUT):
                chunk = await reader.read(CHUNK)
            if not chunk:
                return
            yield chunk
    finally:
        writer.close()


def health_entry(record: dict[str, Any] | None) -> list[tuple[str, bytes]]:
    """The latest health record as a bundle entry (it holds no secret, and is redacted anyway)."""
    if record is None:
        return []
    return [("health.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())]

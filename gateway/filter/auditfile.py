"""The audit log file: decision lines batched per event-loop turn, one write() per batch, rotated by size.

gateway.filter.audit formats the lines (pure); this writer owns the file. Why a file and not the
journal, and the crash-loss bound: docs/metadata-policy.md, Audit. A write error never reaches
the relay: the batch's lines are counted as dropped and one warning per failure episode goes to
the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024  # write before the loop turn ends once this much is waiting
MAX_BYTES = 64 * 1024 * 1024
KEEP = 4
RETRY_AFTER = 1.0  # seconds: after a failure, lines are dropped (counted) until the next try


class AuditFile:
    """Appends lines to `path` (O_APPEND, 0640), at most one write() per loop turn or FLUSH_BYTES."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        *,
        max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
        flush_bytes: int = FLUSH_BYTES,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.flush_bytes = flush_bytes
        self.dropped = 0  # lines lost to write errors since start
        self.written = 0  # lines written since start
        self._loop = loop
        self._buf: list[str] = []
        self._pending = 0  # characters in _buf
        self._scheduled = False
        self._fd: int | None = None
        self._size = 0  # of the current file, to rotate without an fstat per batch
        self._failing = False
        self._retry_at = 0.0
        self._rotate_failed = False

    def write(self, line: str) -> None:
        """Queue one line (ending in a newline); it reaches the file at the end of this loop turn."""
        self._buf.append(line)
        self._pending += len(line)
        if self._pending >= self.flush_bytes:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what is queued, in one write() (more only if the kernel takes part of it)."""
        if not self._buf:
            return
        lines = len(self._buf)
        data = "".join(self._buf).encode("utf-8", "backslashreplace")
        self._buf.clear()
        self._pending = 0
        if self._failing and time.monotonic() < self._retry_at:
            self.dropped += lines
            return
        done = 0
        try:
            fd = self._open()
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError as exc:
            # The lines of this batch that did not reach the file (a short write ends at any byte).
            self.dropped += data.count(b"\n", done)
            self._size += done
            self._fail(exc)
            return
        self.written += lines
        self._size += done
        if self._failing:
            self._failing = False
            log.warning("audit log %s written again; %d lines dropped so far", self.path, self.dropped)
        if self._size >= self.max_bytes:
            self._rotate()

    def close(self) -> None:
        """Write what is queued and close the file (the daemon's shutdown)."""
        self.flush()
        self._close()

    def _open(self) -> int:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, 0o640)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _fail(self, exc: OSError) -> None:
        # Reopen on the next try: the directory may have been recreated or the disk freed.
        self._close()
        self._retry_at = time.monotonic() + RETRY_AFTER
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot write the audit log %s: %s; decisions are dropped (counted) until it works again",
                self.path,
                exc.strerror or exc,
            )

    def _rotate(self) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.<keep> (the oldest is replaced); a rename
        is a metadata change, so the loop is not held for long."""
        self._close()
        try:
            for n in range(self.keep - 1, 0, -1):
                older = Path(f"{self.path}.{n}")
                if older.exists():
                    os.replace(older, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        except OSError as exc:
            # Keep appending to the current file: nothing is lost, it only grows past the limit
            # (and the rename is tried again after the next batch).
            if not self._rotate_failed:
                log.warning("cannot rotate the audit log %s: %s", self.path, exc.strerror or exc)
            self._rotate_failed = True
        else:
            self._rotate_failed = False

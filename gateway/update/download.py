"""Download a bundle from the plane: HTTPS with the gateway's client certificate (the tunnel's TLS
context, the plane's CA pinned), through the configured CONNECT proxy, streamed to disk.

The bytes go to `<version>.raucb.part` as they arrive (memory stays at one chunk); a download cut
off resumes from the part's length with `Range: bytes=N-` (a 200 instead of a 206 starts over).
Once the size is reached the file is fsynced, its SHA-256 compared with the offer's, and only then
renamed to `<version>.raucb` (and the directory fsynced): a power cut never leaves a bundle that
looks complete and is not. A wrong checksum deletes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway.errors import GatewayError
from gateway.update.model import content_range_start

CHUNK = 256 * 1024
HASH_BLOCK = 1024 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
# Answers no retry can fix (the plane refuses us, the release is gone); others are retried.
_RETRYABLE_STATUS = {408, 425, 429}


class DownloadError(GatewayError):
    """A failed download; `permanent` ones are reported as failed and not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
            length += len(block)
    return digest, length


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def download(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    size: int,
    sha256: str,
    proxy: str | None = None,
    proxy_auth: aiohttp.BasicAuth | None = None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> Path:
    """Fetch `url` into `dest` (a .raucb path), resuming `dest.part`; the path once it is verified."""
    part = dest.with_name(dest.name + ".part")
    digest, have = hashlib.sha256(), 0
    if part.exists():
        if part.stat().st_size > size:
            part.unlink()
        else:
            digest, have = await asyncio.to_thread(_hash_file, part)
            if have == size and digest.hexdigest() != sha256:
                # A complete file of another bundle under this name (a release made again): fetch anew.
                part.unlink()
                digest, have = hashlib.sha256(), 0
    if have < size:
        digest, have = await _fetch(session, url, part, have, digest, size, proxy, proxy_auth, on_progress)
    fd = os.open(part, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch: the bundle has {digest.hexdigest()}, the offer {sha256}", permanent=True
        )
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return dest


async def _fetch(
    session: aiohttp.ClientSession,
    url: str,
    part: Path,
    have: int,
    digest: hashlib._Hash,
    size: int,
    proxy: str | None,
    proxy_auth: aiohttp.BasicAuth | None,
    on_progress: Callable[[int], None],
) -> tuple[hashlib._Hash, int]:
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        request = session.get(url, headers=headers, proxy=proxy, proxy_auth=proxy_auth, timeout=TIMEOUT)
        async with request as resp:
            if resp.status == 416:
                # The part is not a prefix the plane can continue (another bundle under the name).
                part.unlink(missing_ok=True)
                raise DownloadError("the plane cannot resume the download (HTTP 416): starting over")
            if resp.status == 200 and have:
                digest, have = hashlib.sha256(), 0  # no range support here: start over
            elif resp.status == 206:
                if content_range_start(resp.headers.get("Content-Range")) != have:
                    part.unlink(missing_ok=True)
                    raise DownloadError("the plane answered another range than asked: starting over")
            elif resp.status != 200:
                permanent = 400 <= resp.status < 500 and resp.status not in _RETRYABLE_STATUS
                raise DownloadError(
                    f"HTTP {resp.status} {resp.reason or ''}".strip() + f" from {url}", permanent=permanent
                )
            with part.open("ab" if have else "wb") as fh:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if have + len(chunk) > size:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise DownloadError(
                            f"size mismatch: longer than the offer's {size} bytes", permanent=True
                        )
                    fh.write(chunk)
                    digest.update(chunk)
                    have += len(chunk)
                    on_progress(have)
                fh.flush()
                os.fsync(fh.fileno())
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        with contextlib.suppress(OSError):
            have = part.stat().st_size  # what reached the disk is kept for the next attempt
        why = f"{type(exc).__name__}: {exc}"
        raise DownloadError(f"download cut off at {have} of {size} bytes: {why}") from None
    if have < size:
        raise DownloadError(f"download ended at {have} of {size} bytes")
    return digest, have

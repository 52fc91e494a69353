"""The gateway's key and certificate on disk, replaced as one pair, atomically, across power cuts.

Registration (firstboot) writes `key.pem` and `cert.pem` as plain files. The first renewal moves
the pair into a generation directory and from then on both names are symbolic links through one
pointer, so that one rename switches them together:

    key.pem  -> pairs/current/key.pem
    cert.pem -> pairs/current/cert.pem
    pairs/current -> g-000007            (the generation in use)
    pairs/g-000007/{key.pem (0600), cert.pem}
    pairs/g-000006/...                   (the one before, kept until the next renewal)

A generation is written under a temporary name, fsynced, and renamed whole; `current` is then
switched by renaming a new link over it, and the directory is fsynced. At every instant the
names resolve to one complete, matching pair: the old one until the rename, the new one after.
The move from plain files to links keeps that too: the pair in use is copied into a generation
first, then each name is replaced by a link that resolves to the same bytes.

Readers outside the daemon (the status console, firstboot) keep reading `key.pem` and
`cert.pem`; a re-registration that writes plain files over the links simply starts over.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from gwcore.atomic import write_atomic

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CA_FILE = "ca.pem"
PAIRS = "pairs"
CURRENT = "current"
KEEP_GENERATIONS = 2
_GENERATION = re.compile(r"g-(\d{6,})")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_with_link(path: Path, target: str) -> None:
    """Make `path` a symbolic link to `target`, atomically (a new link renamed over it)."""
    tmp = path.with_name(f".{path.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class IdentityChanged(OSError):
    """The pair on disk is no longer the one the daemon uses (re-registered meanwhile)."""


class PairStore:
    """The identity directory's key, certificate and trusted CA bundle."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.pairs = state_dir / PAIRS

    # --- reading --------------------------------------------------------------------------------

    def _linked(self) -> bool:
        return all(
            os.path.islink(self.state_dir / name)
            and os.readlink(self.state_dir / name) == f"{PAIRS}/{CURRENT}/{name}"
            for name in (KEY_FILE, CERT_FILE)
        )

    def generation(self) -> Path | None:
        """The generation directory in use, or None while the pair is still plain files."""
        return self._pointed() if self._linked() else None

    def _pointed(self) -> Path | None:
        try:
            return self.pairs / os.readlink(self.pairs / CURRENT)
        except OSError:
            return None

    def load(self) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) in use, both read from one generation (OSError if missing)."""
        where = self.generation() or self.state_dir
        return (where / KEY_FILE).read_bytes(), (where / CERT_FILE).read_bytes()

    def read_cas(self) -> bytes:
        """The trusted CA bundle (ca.pem)."""
        return (self.state_dir / CA_FILE).read_bytes()

    # --- writing --------------------------------------------------------------------------------

    def write_cas(self, bundle: bytes) -> None:
        """Replace the trusted CA bundle (one file: atomic by itself)."""
        write_atomic(self.state_dir / CA_FILE, bundle, mode=0o644)

    def commit(self, key_pem: bytes, cert_pem: bytes, replaces: tuple[bytes, bytes]) -> Path:
        """Store a new pair and switch to it in one rename; returns its generation directory.

        `replaces` is the pair the caller uses now: if the disk holds another (the identity was
        registered again meanwhile), nothing is written and IdentityChanged is raised. The caller
        checked that the new key and certificate belong together.
        """
        if self.load() != replaces:
            raise IdentityChanged(f"{self.state_dir}: the identity on disk changed; not replacing it")
        self._ensure_linked(replaces)
        generation = self._write_generation(key_pem, cert_pem)
        self._point_current(generation)
        self._prune(generation)
        return generation

    def _generations(self) -> list[tuple[int, Path]]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.pairs.iterdir():
                match = _GENERATION.fullmatch(entry.name)
                if match and entry.is_dir() and not entry.is_symlink():
                    found.append((int(match.group(1)), entry))
        return sorted(found)

    def _write_generation(self, key_pem: bytes, cert_pem: bytes) -> Path:
        self.pairs.mkdir(mode=0o700, exist_ok=True)
        number = max((n for n, _ in self._generations()), default=0) + 1
        final = self.pairs / f"g-{number:06d}"
        tmp = self.pairs / f".g-{number:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        # The key is 0600 from its first byte (write_atomic sets the mode before writing).
        write_atomic(tmp / KEY_FILE, key_pem, mode=0o600)
        write_atomic(tmp / CERT_FILE, cert_pem, mode=0o644)
        os.rename(tmp, final)
        _fsync_dir(self.pairs)
        return final

    def _point_current(self, generation: Path) -> None:
        _replace_with_link(self.pairs / CURRENT, generation.name)

    def _ensure_linked(self, pair: tuple[bytes, bytes]) -> None:
        """Turn plain key.pem/cert.pem (holding `pair`) into links to a generation holding it too."""
        if self._linked() and (self.pairs / CURRENT).is_dir():
            return
        key_pem, cert_pem = pair
        current = self._pointed()
        try:
            same = current is not None and (
                (current / KEY_FILE).read_bytes(),
                (current / CERT_FILE).read_bytes(),
            ) == (key_pem, cert_pem)
        except OSError:
            same = False
        if not same:
            # Links or a pointer left from before a re-registration are stale: the plain files win.
            if not any(os.path.islink(self.state_dir / n) for n in (KEY_FILE, CERT_FILE)):
                shutil.rmtree(self.pairs, ignore_errors=True)
            self._point_current(self._write_generation(key_pem, cert_pem))
        for name in (KEY_FILE, CERT_FILE):
            _replace_with_link(self.state_dir / name, f"{PAIRS}/{CURRENT}/{name}")

    def _prune(self, keep: Path) -> None:
        """Remove generations but the newest KEEP_GENERATIONS, and leftovers of interrupted writes."""
        kept = {path.name for _, path in self._generations()[-KEEP_GENERATIONS:]} | {keep.name, CURRENT}
        for entry in self.pairs.iterdir():
            if entry.name in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

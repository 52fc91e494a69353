"""The support bundle's contents, once: which files and commands, redacted, packed as tar.gz.

Two builders use it: `firstboot support-bundle` (root, on the console or through the
gateway-support socket, docs/operate.md) and, where that helper is missing, the gateway itself
with what its sandbox can read. Both hand in their own file reader and command runner; the
choice of what goes in and the redaction (gwcore.redact) are the same. Private keys are never
read: they are not in FILES, and nothing here globs a directory.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from gwcore.redact import redact_file, redact_text

if TYPE_CHECKING:  # tarfile is imported by build(): the gateway would otherwise keep it loaded for ever
    import tarfile

# Config and state worth shipping. Identity private keys (key.pem) are never included.
FILES: tuple[str, ...] = (
    "/etc/os-release",
    "/etc/hostname",
    "/etc/gateway/gateway.yaml",
    "/etc/gateway/targets.yaml",
    "/etc/systemd/network/10-firstboot.network",
    "/etc/systemd/timesyncd.conf.d/50-firstboot.conf",
    "/var/lib/firstboot/state.json",
    "/var/lib/firstboot/last-error",
    "/var/lib/gateway/identity.json",
    "/run/gateway/status.json",
)
# (argv, name in the bundle). Bounded: the journal of this boot, at most 20000 lines.
COMMANDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("journalctl", "-b", "--no-pager", "-o", "short-iso", "-n", "20000"), "journal.txt"),
    (("systemctl", "--no-pager", "--failed"), "failed-units.txt"),
    (("systemctl", "--no-pager", "status", "gateway.service", "firstboot.service"), "units.txt"),
    (("networkctl", "--no-pager", "status"), "network.txt"),
    (("timedatectl", "--no-pager", "timesync-status"), "timesync.txt"),
)

# Logs shipped by their tail, (path, bytes): the filter's audit log rotates at 64 MiB, and its last
# 2 MiB (~14,000 decisions, the newest) is what a support case reads (docs/metadata-policy.md, Audit).
AUDIT_TAIL = 2 * 1024 * 1024
TAILS: tuple[tuple[str, int], ...] = (("/var/log/gateway/audit.log", AUDIT_TAIL),)

ReadFile = Callable[[str], bytes | None]  # None when the file is missing or unreadable
RunCommand = Callable[[Sequence[str]], str]  # stdout and stderr; a failure says so in the text
ReadTail = Callable[[str, int], bytes | None]  # the last bytes of a file, None when missing


def read_tail(path: str | os.PathLike[str], size: int) -> bytes | None:
    """The last `size` bytes of a file, from its first whole line on (None when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - size))
            data = fh.read(size)
    except OSError:
        return None
    if end > size:
        data = data[data.find(b"\n") + 1 :]  # a cut first line is dropped (no newline: nothing kept)
    return data


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tar.tarinfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def build(
    read_file: ReadFile,
    run: RunCommand,
    *,
    files: Iterable[str] = FILES,
    commands: Iterable[tuple[Sequence[str], str]] = COMMANDS,
    extra: Iterable[tuple[str, bytes]] = (),
    tails: Iterable[tuple[str, int]] = TAILS,
    tail: ReadTail = read_tail,
    now: float | None = None,
) -> bytes:
    """The bundle as tar.gz bytes: every file and command output redacted, under `bundle/`.

    `extra` adds (name, text) entries the caller made (redacted as text, like the rest); `tails`
    are files of which only the end is shipped, read with `tail`."""
    import tarfile

    mtime = time.time() if now is None else now
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in files:
            raw = read_file(name)
            if raw is not None:
                _add(tar, "bundle" + name, redact_file(name, raw), mtime)
        for name, size in tails:
            raw = tail(name, size)
            if raw is not None:
                _add(tar, "bundle" + name, redact_file(name, raw), mtime)
        for argv, out in commands:
            _add(tar, f"bundle/{out}", redact_text(run(argv)).encode(), mtime)
        for name, data in extra:
            _add(tar, f"bundle/{name}", redact_file(name, data), mtime)
    return buf.getvalue()

"""The root helper's side of the gateway's update requests: one JSON line in, one JSON line out.

systemd starts `python3 -m updater serve-request` per connection on /run/appliance-update.sock
(image/: appliance-update.socket, only the gateway's group may connect). The gateway daemon runs
unprivileged and is not trusted with root: it may only ask to install a bundle it downloaded into
its own updates directory, to reboot, or for the updater's status. Everything else is refused
with a one-line reason, before anything is run.

    {"op": "install", "bundle": "/var/lib/gateway/updates/0.1.1.raucb", "downgrade": false}
    {"op": "reboot"}
    {"op": "status"}
 -> {"ok": true|false, "reason": "...", ...}

The bundle path must name a plain file directly in the updates directory: no "..", no other
directory, no symlink, no device or FIFO, no second hard link. Because the gateway owns that
directory and could swap the file after the check, the helper opens the file without following
links, checks what it opened, and copies from that open file into a directory only root can
write; RAUC is then given the copy, which the gateway cannot change.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

COPY_BLOCK = 1024 * 1024
MAX_LINE = 4096  # a request is a few hundred bytes; more is not a request
UPDATES_DIR = Path("/var/lib/gateway/updates")
INCOMING_DIR = Path("/var/lib/appliance/update/incoming")  # root's own: 0700 root
INSTALL_COMMAND = ("/usr/libexec/appliance/update-install",)
REBOOT_COMMAND = ("systemctl", "reboot")
STATUS_COMMAND = ("/usr/bin/python3", "-m", "updater", "status")
INSTALL_TIMEOUT = 3600.0  # 72 s under emulation; a slow disk may take many minutes
# A bundle's file name: the version and ".raucb" (the agent writes <version>.raucb).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~+-]{0,126}\.raucb")
OPS = ("install", "reboot", "status")

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request the helper will not carry out; the message is the one-line reason."""


@dataclass(frozen=True)
class Request:
    """A checked request."""

    op: str
    bundle: Path | None = None
    downgrade: bool = False


def parse_request(line: bytes, updates_dir: Path = UPDATES_DIR) -> Request:
    """Check one request line; Refused names the field and the problem."""
    if len(line) > MAX_LINE:
        raise Refused(f"request longer than {MAX_LINE} bytes")
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused("request is not one line of JSON") from None
    if not isinstance(data, dict):
        raise Refused("request is not a JSON object")
    op = data.get("op")
    if op not in OPS:
        raise Refused(f"op: expected one of {', '.join(OPS)}")
    if op != "install":
        return Request(op=str(op))
    downgrade = data.get("downgrade", False)
    if not isinstance(downgrade, bool):
        raise Refused("downgrade: expected true or false")
    bundle = check_bundle_path(data.get("bundle"), updates_dir)
    return Request(op="install", bundle=bundle, downgrade=downgrade)


def check_bundle_path(value: object, updates_dir: Path = UPDATES_DIR) -> Path:
    """The bundle path as a string names a file directly in updates_dir (no I/O: see take_bundle)."""
    if not isinstance(value, str) or not value:
        raise Refused("bundle: expected a path")
    if "\0" in value or any(ord(c) < 0x20 for c in value):
        raise Refused("bundle: control characters in the path")
    path = Path(value)
    if not path.is_absolute() or os.path.normpath(value) != value:
        raise Refused(f"bundle: {value!r} is not a normalised absolute path")
    if path.parent != updates_dir:
        raise Refused(f"bundle: {value!r} is not in {updates_dir}")
    if not _NAME.fullmatch(path.name):
        raise Refused(f"bundle: {path.name!r} is not a bundle file name (VERSION.raucb)")
    return path


def take_bundle(path: Path, incoming_dir: Path = INCOMING_DIR) -> Path:
    """Open the bundle without following links, check it is one plain file, and copy what was opened
    where the gateway cannot touch it; the copy's path. A copy, not a rename: the unit's
    ReadWritePaths= are separate mounts, and a rename across them fails (EXDEV)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Refused(f"bundle: {path}: no such file") from None
    except OSError as exc:
        # ELOOP: the last component is a symlink.
        raise Refused(f"bundle: {path}: cannot open without following links: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"bundle: {path}: not a plain file")
        if st.st_nlink != 1:
            raise Refused(f"bundle: {path}: has {st.st_nlink} hard links")
        incoming_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(incoming_dir, 0o700)
        for old in incoming_dir.iterdir():  # a previous install's leftover (power cut)
            old.unlink(missing_ok=True)
        target = incoming_dir / path.name
        try:
            _copy(fd, target)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise Refused(f"bundle: {path}: cannot take it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)  # the gateway's copy: a symlink put there meanwhile is only unlinked
    return target


def _copy(fd: int, target: Path) -> None:
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while block := os.read(fd, COPY_BLOCK):
            view = memoryview(block)
            while view:
                view = view[os.write(out, view) :]
        os.fsync(out)
    finally:
        os.close(out)


Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command with its output captured; a missing program or a timeout is a failed process."""
    # Without JOURNAL_STREAM the updater logs to the journal itself (identifier appliance-update)
    # as well as to the stderr captured here: its steps stay in the journal, its reason comes back.
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    try:
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: no answer in {timeout:.0f} s")


def last_line(text: str) -> str:
    """The last non-empty line (the updater's one-line reason), at most 400 characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= 400 else line[:397] + "..."


@dataclass
class Helper:
    """Carries out checked requests; the commands and directories are settable for tests."""

    updates_dir: Path = UPDATES_DIR
    incoming_dir: Path = INCOMING_DIR
    install_command: tuple[str, ...] = INSTALL_COMMAND
    reboot_command: tuple[str, ...] = REBOOT_COMMAND
    status_command: tuple[str, ...] = STATUS_COMMAND
    run: Runner = run_command

    def handle(self, line: bytes) -> tuple[dict[str, Any], tuple[str, ...] | None]:
        """The reply to one request line, and a command to run after replying (the reboot)."""
        try:
            request = parse_request(line, self.updates_dir)
            if request.op == "install":
                assert request.bundle is not None
                return self.install(request.bundle, request.downgrade), None
        except Refused as exc:
            return {"ok": False, "reason": f"refused: {exc}"}, None
        if request.op == "reboot":
            return {"ok": True, "reason": "rebooting"}, self.reboot_command
        return self.status(), None

    def install(self, bundle: Path, downgrade: bool) -> dict[str, Any]:
        taken = take_bundle(bundle, self.incoming_dir)
        argv = [*self.install_command, str(taken), *(["--allow-downgrade"] if downgrade else [])]
        try:
            proc = self.run(argv, INSTALL_TIMEOUT)
        finally:
            taken.unlink(missing_ok=True)  # installed or not, the slot or the reason is what counts
        if proc.returncode != 0:
            reason = last_line(proc.stderr) or last_line(proc.stdout) or f"exit status {proc.returncode}"
            # The updater names the file it was given; the gateway knows it by its own path.
            return {"ok": False, "reason": reason.replace(str(taken), str(bundle))}
        return {"ok": True, "reason": last_line(proc.stderr) or last_line(proc.stdout)}

    def status(self) -> dict[str, Any]:
        proc = self.run(self.status_command, 60.0)
        if proc.returncode != 0:
            return {"ok": False, "reason": last_line(proc.stderr) or f"exit status {proc.returncode}"}
        try:
            status = json.loads(proc.stdout)
        except ValueError:
            return {"ok": False, "reason": "updater status: output is not JSON"}
        return {"ok": True, "reason": "", "status": status}


def read_line(stream: BinaryIO) -> bytes:
    """One request line, at most MAX_LINE + 1 bytes read (a longer one is refused by its length)."""
    return stream.readline(MAX_LINE + 1).rstrip(b"\r\n")


def serve(helper: Helper, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Read one request, write one reply, then run the follow-up command (a reboot) if any."""
    reply, after = helper.handle(read_line(stdin))
    if reply.get("ok"):
        log.info("gateway request done: %s", reply.get("reason") or "ok")
    else:
        log.warning("gateway request failed: %s", reply.get("reason"))
    try:
        stdout.write(json.dumps(reply, sort_keys=True).encode() + b"\n")
        stdout.flush()
    except OSError as exc:  # the gateway went away (restarted); what was done is in the journal
        log.warning("cannot answer the gateway: %s", exc.strerror or exc)
    if after is not None:
        proc = helper.run(after, 60.0)
        if proc.returncode != 0:
            return 1
    return 0 if reply.get("ok") else 1

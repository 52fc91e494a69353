"""What the wizard does besides asking: hash the password, apply with try-and-revert, explain failures."""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from firstboot import apply as applier
from firstboot.apply import network
from firstboot.errors import FirstbootError
from firstboot.settings import Settings
from firstboot.system import System

log = logging.getLogger(__name__)

LOCK_FILE = "/run/firstboot/apply.lock"


def hash_password(system: System, password: str) -> str:
    """A SHA-512 crypt(3) hash via openssl (Python 3.13 has no crypt module); the password goes on stdin."""
    if "\n" in password or "\r" in password:
        # openssl reads one line: the hash would be of the first line only.
        raise FirstbootError("admin.password: a password is one line")
    proc = system.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input_text=password + "\n",
        always=True,
        why="hash the password",
    )
    hashed = proc.stdout.strip()
    if not hashed.startswith("$6$"):
        raise FirstbootError("openssl passwd did not return a $6$ hash")
    return hashed


def probe_plane(plane_url: str, proxy_url: str | None = None, timeout: float = 5.0) -> str | None:
    """Can the plane be reached (TCP, or CONNECT via the proxy)? None if yes, else the problem in words."""
    target = urlsplit(plane_url)
    host, port = target.hostname or "", target.port or 443
    if proxy_url:
        proxy = urlsplit(proxy_url)
        dial_host, dial_port, what = proxy.hostname or "", proxy.port or 3128, f"proxy {proxy.hostname}"
    else:
        dial_host, dial_port, what = host, port, f"plane {host}"
    try:
        infos = socket.getaddrinfo(dial_host, dial_port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"DNS failure: cannot resolve {what} ({exc.strerror}); check the DNS servers"
    last = "no address"
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(addr)
                if not proxy_url:
                    return None
                return _connect_via_proxy(sock, host, port, proxy_url)
        except TimeoutError:
            last = f"{what} unreachable: no answer within {timeout:g} s (check the gateway and firewall)"
        except OSError as exc:
            last = f"{what} unreachable: {exc.strerror or exc} (check the address, gateway and firewall)"
    return last


def probe_until(plane_url: str, proxy_url: str | None, attempts: int = 3, pause: float = 2.0) -> str | None:
    """probe_plane, retried briefly: a link that was just reconfigured may need a moment (DHCP, ARP)."""
    problem = probe_plane(plane_url, proxy_url)
    for _ in range(attempts - 1):
        if problem is None:
            break
        time.sleep(pause)
        problem = probe_plane(plane_url, proxy_url)
    return problem


def _connect_via_proxy(sock: socket.socket, host: str, port: int, proxy_url: str) -> str | None:
    proxy = urlsplit(proxy_url)
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if proxy.username:
        cred = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        head += f"Proxy-Authorization: Basic {base64.b64encode(cred).decode()}\r\n"
    sock.sendall((head + "\r\n").encode())
    reply = sock.recv(4096).decode("latin-1")
    parts = reply.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status == 200:
        return None
    if status == 407:
        return f"proxy {proxy.hostname} requires authentication: give user:password in the proxy URL"
    return f"proxy {proxy.hostname} refused to connect to {host}:{port} (HTTP {status or '?'})"


@dataclass(frozen=True)
class Explained:
    words: str
    what_next: str
    screen: str  # where to send the operator
    refuse: bool = False  # possible interception: do not offer "try again"


def explain(message: str) -> Explained:
    """A failure message from registration or apply, said in words with what to do and where to go."""
    low = message.lower()
    if "interception" in low or "hash mismatch" in low:
        return Explained(
            "REFUSED: the plane's CA does not match the hash in the join token. Something between this "
            "appliance and the plane may be intercepting TLS.",
            "Do not continue. Check for a TLS-inspecting proxy or a wrong plane address; get a new token.",
            "plane",
            refuse=True,
        )
    if "expired" in low or "already used" in low or "unknown to the plane" in low:
        return Explained(message, "Create a new join token on the plane and paste it.", "plane")
    if "requires authentication" in low or "407" in low:
        return Explained(message, "Put user:password in the proxy URL.", "proxy")
    if "proxy" in low:
        return Explained(message, "Check the proxy URL, or clear it for a direct connection.", "proxy")
    if "dns" in low or "resolve" in low:
        return Explained(message, "Check the DNS servers on the Network screen.", "network")
    if "unreachable" in low or "did not answer" in low or "timed out" in low:
        return Explained(
            message, "Check address, gateway and firewall (outbound HTTPS), or set a proxy.", "network"
        )
    return Explained(message, "Review the settings and try again.", "review")


Progress = Callable[[str], None]


class ApplyFlow:
    """Apply in two phases: network (try-and-revert) and the rest. Blocking: run it in a worker thread."""

    def __init__(self, system: System, settings: Settings, *, simulate_register: bool) -> None:
        self.system = system
        self.settings = settings
        self.plan = applier.steps(simulate_register=simulate_register)
        self._previous: bytes | None = None

    def _lock(self) -> int:
        path = self.system.path(LOCK_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FirstbootError("another console is applying settings right now; wait for it") from None
        return fd

    def try_network(self, progress: Progress) -> str | None:
        """Apply only the network step, then probe the plane; returns None if reachable, else the problem."""
        self._previous = network.snapshot(self.system)
        fd = self._lock()
        try:
            progress("Applying network settings ...")
            applier.apply(self.system, self.settings, plan=self.plan[:1], mark_done=False)
        finally:
            os.close(fd)
        progress("Testing that the management plane is reachable ...")
        started = time.monotonic()
        problem = probe_until(self.settings.plane_url, self.settings.proxy_url)
        progress(f"  {'reachable' if problem is None else problem} ({time.monotonic() - started:.1f} s)")
        return problem

    def revert_network(self) -> None:
        """Roll the network back to what it was before try_network."""
        network.restore(self.system, self._previous)
        applier.forget(self.system, "network")

    def finish(self, progress: Progress) -> None:
        """Run the remaining steps (registration, config, start) and mark first boot done."""
        fd = self._lock()
        try:

            def report(step: applier.Step, event: str) -> None:
                labels = {"start": "...", "done": "done", "skip": "done", "fail": "FAILED"}
                if event != "start":
                    progress(f"  {step.title}: {labels[event]}")

            applier.apply(self.system, self.settings, plan=self.plan, progress=report)
        finally:
            os.close(fd)


def handoff(system: System, console: str | None) -> None:
    """After first boot: give the console to the status screen (tty1) or a login prompt (others)."""
    if not console:
        return
    if console == "tty1":
        unit = "firstboot-status.service"
    elif console.startswith(("ttyS", "hvc", "ttyAMA")):
        unit = f"serial-getty@{console}.service"
    else:
        unit = f"getty@{console}.service"
    system.run(["systemctl", "--no-block", "start", unit], check=False)


def dry_run_root() -> Path:
    """A scratch tree for --dry-run, with the files apply edits (an admin entry in /etc/shadow)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="firstboot-dry-run-"))
    (root / "etc").mkdir()
    (root / "etc/shadow").write_text("root:*:20000:0:99999:7:::\nadmin:!:20000:0:99999:7:::\n")
    (root / "etc/shadow").chmod(0o640)
    return root

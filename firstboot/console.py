"""The consoles' shared plumbing, once for the wizard and the status console, the urwid and the line views.

- UiThread: slow work (network, registration, a support bundle) runs in a worker thread; its
  result or its failure comes back to the UI loop through the loop's pipe. A UI callback never blocks.
- Countdown: the network revert countdown, one tick a second on the UI loop, reverting at zero.
- try_network: new network settings with a way back: snapshot, apply under the apply lock (one
  console at a time), probe the plane; probe_plane/probe_until: can the plane be reached?

No urwid import: the loop is passed in (urwid's MainLoop, or anything with the same four methods),
so the line views and the tests load none of it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import queue
import socket
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

from firstboot.apply import network
from firstboot.errors import FirstbootError
from firstboot.settings import Settings
from firstboot.system import System
from gwcore.enrol import proxy_credentials
from gwcore.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "/run/firstboot/apply.lock"
COUNTDOWN_TEXT = "Keep these network settings? Reverting in {} s."

Progress = Callable[[str], None]


class Loop(Protocol):
    """What the plumbing needs of a UI main loop (urwid.MainLoop has these)."""

    def watch_pipe(self, callback: Callable[[bytes], bool]) -> int: ...
    def set_alarm_in(self, sec: float, callback: Callable[..., Any]) -> Any: ...
    def remove_alarm(self, handle: Any) -> bool: ...


# ---------------------------------------------------------------- threads


class UiThread:
    """Worker threads for one console; results are posted back to the UI loop (thread-safe)."""

    def __init__(self, loop: Loop, name: str) -> None:
        self.name = name
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self._pipe = loop.watch_pipe(self._drain)
        self._threads: list[threading.Thread] = []

    def post(self, fn: Callable[[], None]) -> None:
        """Run fn on the UI thread (called from workers)."""
        self._queue.put(fn)
        os.write(self._pipe, b"x")

    def _drain(self, _data: bytes) -> bool:
        while not self._queue.empty():
            self._queue.get_nowait()()
        return True

    def background(self, work: Callable[[], None], on_error: Callable[[UserError], None]) -> None:
        """Run blocking work off the UI thread; a failure comes back to on_error on the UI thread."""

        def target() -> None:
            try:
                work()
            except UserError as exc:
                error = exc
                self.post(lambda: on_error(error))
            except Exception as exc:  # a bug must still show on the console, not kill the thread silently
                log.exception("%s: action failed", self.name)
                unexpected = FirstbootError(f"unexpected error: {exc}")
                self.post(lambda: on_error(unexpected))

        thread = threading.Thread(target=target, name=self.name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def close(self) -> None:
        """After the loop ended: give running work a moment, then close the pipe."""
        for thread in self._threads:
            thread.join(timeout=5)
        os.close(self._pipe)


# ---------------------------------------------------------------- the revert countdown


class Countdown:
    """Counts down once a second on the UI loop; at zero calls expire() unless stopped first."""

    def __init__(self, loop: Loop, seconds: float, show: Callable[[str], None], expire: Callable[[], None]):
        self.loop = loop
        self.remaining = int(seconds)
        self.show = show
        self.expire = expire
        self._handle: Any = None

    def start(self) -> None:
        """Show the first tick now."""
        self._tick()

    def _tick(self, *_: Any) -> None:
        self._handle = None
        self.show(COUNTDOWN_TEXT.format(self.remaining))
        if self.remaining <= 0:
            self.expire()
            return
        self.remaining -= 1
        self._handle = self.loop.set_alarm_in(1, self._tick)

    def stop(self) -> None:
        """The operator chose: no more ticks."""
        if self._handle is not None:
            self.loop.remove_alarm(self._handle)
            self._handle = None


# ---------------------------------------------------------------- trying a network


@contextlib.contextmanager
def apply_lock(system: System) -> Iterator[None]:
    """One console at a time applies settings (tty1 and the serial console both run one)."""
    path = system.path(LOCK_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FirstbootError("another console is applying settings right now; wait for it") from None
        yield
    finally:
        os.close(fd)


def _quiet(_line: str) -> None:
    pass


def try_network(
    system: System, settings: Settings, apply: Callable[[], None], progress: Progress = _quiet
) -> tuple[bytes | None, str | None]:
    """Apply new network settings (`apply`, under the lock) and probe the plane.

    Returns (the network file to revert to, None if the plane is reachable else the problem).
    """
    previous = network.snapshot(system)
    with apply_lock(system):
        progress("Applying network settings ...")
        apply()
    progress("Testing that the management plane is reachable ...")
    started = time.monotonic()
    problem = probe_until(settings.plane_url, settings.proxy_url)
    progress(f"  {'reachable' if problem is None else problem} ({time.monotonic() - started:.1f} s)")
    return previous, problem


def revert_network(system: System, previous: bytes | None) -> None:
    """Put the network file from before try_network back."""
    network.restore(system, previous)


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
    login = proxy_credentials(proxy_url)
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if login.user is not None:
        cred = f"{login.user}:{login.password}".encode()
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


@contextlib.contextmanager
def no_echo(inp: TextIO) -> Iterator[None]:
    """Turn the terminal's echo off while a secret is typed (nothing to do when input is not a tty)."""
    if not inp.isatty():
        yield
        return
    fd = inp.fileno()
    old = termios.tcgetattr(fd)
    new = list(old)
    new[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSADRAIN, new)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)

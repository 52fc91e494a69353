"""A plane outage behind a load balancer, end to end: `mgmtplane serve`, a front that closes
connections while the plane is down, `firstboot register`, `gateway run` and its status file.

Shared by tests/integration/test_tunnel_outage.py (a short outage, in `make check`) and
bench/plane_outage.py (the issue's five minutes). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tests.integration import plane_helpers

REPO = Path(__file__).resolve().parents[2]
# The first is what a plane refusing a certificate without its alert looks like, and what
# used to stop the gateway after three in a row: each run of it here is far longer than that.
REFUSALS = ("after-handshake", "at-once", "during-handshake")


class Front:
    """A TCP load balancer in front of the plane.

    With the backend up it forwards bytes both ways (TLS stays end to end, as with an L4
    balancer). With the backend down it accepts and closes each connection: at once, after the
    first bytes of the ClientHello, or after completing TLS with the plane's own certificate, as
    a TLS-terminating balancer with no healthy backend does. The modes take turns in blocks of
    BLOCKS[mode] connections (aiohttp reconnects once by itself after a close that follows the
    handshake, so the block of after-handshake closes is 8 attempts in a row).
    """

    BLOCKS = {"after-handshake": 16, "at-once": 4, "during-handshake": 4}

    def __init__(self, port: int, backend_port: int, tls: ssl.SSLContext) -> None:
        self.port = port
        self.backend_port = backend_port
        self.tls = tls
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self.forwarded = 0
        self._modes = itertools.cycle([mode for mode in REFUSALS for _ in range(self.BLOCKS[mode])])
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def refusals(self) -> int:
        return sum(self.refused.values())

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        """Stop listening and cut every connection (a balancer going away)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Read nothing until the backend is tried: a TLS handshake done here must see the
        # ClientHello itself, not find it already swallowed by the stream's buffer.
        _transport(writer).pause_reading()
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
            except OSError:
                await self._refuse(next(self._modes), reader, writer)
                return
            self.forwarded += 1
            _transport(writer).resume_reading()
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _refuse(self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.refused[mode] += 1
        if mode == "during-handshake":
            _transport(writer).resume_reading()
            await asyncio.wait_for(reader.read(5), 5)  # the ClientHello's record header
        elif mode == "after-handshake":
            await asyncio.wait_for(writer.start_tls(self.tls), 5)  # start_tls resumes reading
            await asyncio.wait_for(reader.read(1), 5)  # the WebSocket upgrade request
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), 2)


def _transport(writer: asyncio.StreamWriter) -> asyncio.Transport:
    # A socket's stream transport reads too; the stream API types it as write-only.
    return cast(asyncio.Transport, writer.transport)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


def front_tls(plane_state: Path) -> ssl.SSLContext:
    """A balancer's TLS: the plane's own certificate, no client certificate asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(plane_state / "server.pem", plane_state / "server-key.pem")
    return ctx


@dataclass
class Sample:
    """One distinct status report (state and error changed) and when it was seen."""

    at: float
    report: dict[str, Any]


@dataclass
class StatusWatch:
    """Polls the status file and keeps every distinct (state, last_error, attempts) it shows."""

    path: Path
    samples: list[Sample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def latest(self) -> dict[str, Any]:
        return self.samples[-1].report if self.samples else {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        last: tuple[object, ...] | None = None
        while True:
            report = read_status(self.path)
            key = (report.get("state"), report.get("last_error"), report.get("attempts"), report.get("pid"))
            if report and key != last:
                self.samples.append(Sample(time.monotonic(), report))
                last = key
            await asyncio.sleep(0.01)

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = read_status(self.path)
            if report and predicate(report):
                return report
            await asyncio.sleep(0.01)
        raise AssertionError(f"status never matched within {timeout:.0f}s; last: {self.latest()}")


def read_status(path: Path) -> dict[str, Any]:
    """The status file's JSON ({} while it is missing; the writer renames, so never torn)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def gateway_config(
    path: Path, plane_url: str, state_dir: Path, status: Path, *, base: float, cap: float, heartbeat: float
) -> Path:
    """A gateway.yaml for `gateway run` with its status file in the test's directory."""
    path.write_text(
        f"plane_url: {plane_url}\nstate_dir: {state_dir}\ntargets: {path.parent / 'targets.yaml'}\n"
        f"heartbeat_interval: {heartbeat}\nbackoff_base: {base}\nbackoff_cap: {cap}\n"
        f"status_file: {status}\nstatus_interval: 1\ndrain_timeout: 2\n"
    )
    return path


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`gateway run` as its own process, logging to `log`."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )


@dataclass
class OutageResult:
    """What one outage did, for the test's assertions and the bench's figures."""

    samples: list[Sample]
    refused_phase_attempts: int  # failed attempts while nothing listened
    closing_phase_attempts: int  # failed attempts while the front closed every connection
    front_refused: dict[str, int]
    back_after_s: float  # from the restarted plane listening to the tunnel up again
    attempts_before_back: int  # failed attempts in the whole outage (status file)
    pids: set[int]
    gateway_alive: bool
    final: dict[str, Any]


async def run_outage(
    workdir: Path,
    *,
    refused_s: float,
    closing_s: float,
    base: float,
    cap: float,
    heartbeat: float = 1.0,
    say: Callable[[str], None] = lambda text: None,
    look: Callable[[str], Awaitable[None]] | None = None,
) -> OutageResult:
    """Plane up -> balancer and plane gone (`refused_s`) -> balancer closing every connection
    (`closing_s`) -> plane back behind it; `gateway run` is never restarted.

    The status file is ROOT/run/gateway/status.json with ROOT = workdir/"root" (a tree for
    `firstboot --root`); `look(phase)` runs at the end of each phase, the gateway still running.
    """

    async def looked(phase: str) -> None:
        if look is not None:
            await look(phase)

    backend, front_port = plane_helpers.free_port(), plane_helpers.free_port()
    plane_state = workdir / "plane"
    plane = plane_helpers.Plane(plane_state, listen=f"127.0.0.1:{backend}")
    front = Front(front_port, backend, front_tls(plane_state))
    await front.start()
    front_url = f"https://127.0.0.1:{front_port}"
    state_dir, status = workdir / "gw-state", workdir / "root/run/gateway/status.json"
    proc: subprocess.Popen[bytes] | None = None
    watch = StatusWatch(status)
    try:
        reg = await asyncio.to_thread(plane_helpers.register, plane.token(url=front_url), state_dir)
        assert reg.returncode == 0, reg.stderr
        config = gateway_config(
            workdir / "gateway.yaml", front_url, state_dir, status, base=base, cap=cap, heartbeat=heartbeat
        )
        proc = start_gateway(config, workdir / "gateway.log")
        watch.start()
        await watch.wait(lambda r: r.get("state") == "connected", 30)
        say(f"tunnel up through the balancer (gateway pid {proc.pid})")
        await looked("up")

        if refused_s > 0:
            await front.stop()
            await asyncio.to_thread(plane.stop)
            say(f"plane and balancer gone: connections refused for {refused_s:g} s")
            await asyncio.sleep(refused_s)
            refused_phase = int(watch.latest().get("attempts", 0))
            await looked("refused")
            await front.start()
            say(f"balancer back without a plane: it closes every connection for {closing_s:g} s")
        else:
            refused_phase = 0
            await asyncio.to_thread(plane.stop)  # GOAWAY through the balancer, which stays up
            say(f"plane stopped behind the balancer: it closes every connection for {closing_s:g} s")
        await asyncio.sleep(closing_s)
        closing_phase = int(watch.latest().get("attempts", 0)) - refused_phase
        await looked("closing")

        plane = plane_helpers.Plane(plane_state, listen=f"127.0.0.1:{backend}")
        restarted = time.monotonic()
        say("plane restarted behind the balancer")
        attempts = int(watch.latest().get("attempts", 0))
        final = await watch.wait(lambda r: r.get("state") == "connected", max(60.0, 3 * cap))
        back_after = time.monotonic() - restarted
        attempts = max([attempts] + [int(s.report.get("attempts", 0)) for s in watch.samples])
        await looked("back")
        return OutageResult(
            samples=list(watch.samples),
            refused_phase_attempts=refused_phase,
            closing_phase_attempts=closing_phase,
            front_refused=dict(front.refused),
            back_after_s=back_after,
            attempts_before_back=attempts,
            pids={int(s.report["pid"]) for s in watch.samples if "pid" in s.report},
            gateway_alive=proc.poll() is None,
            final=final,
        )
    finally:
        await watch.stop()
        if proc is not None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await front.stop()
        await asyncio.to_thread(plane.stop)

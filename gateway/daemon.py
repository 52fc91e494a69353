"""`gateway run`: wires config, relay and tunnel into one event loop under systemd (notify, watchdog)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.filter import audit
from gateway.filter.auditfile import AuditFile
from gateway.filter.policy import PolicySet, load_policies
from gateway.health.service import HealthService
from gateway.health.support import gateway_files, gateway_tails
from gateway.identity.manager import IdentityManager
from gateway.identity.store import PairStore
from gateway.relay.relay import Relay, body_budget
from gateway.relay.ssrf import own_addresses
from gateway.relay.targets import TargetSet, load_targets
from gateway.tunnel.backoff import Backoff
from gateway.tunnel.client import Rejected, State, TunnelClient, client_ssl_context
from gateway.tunnel.proxy import redact
from gateway.update.agent import UpdateAgent
from gateway.update.helper import UpdateHelper
from gwcore import health as health_contract
from gwcore import protocol as p
from gwcore import status_file
from gwcore.atomic import write_atomic
from gwcore.control import ControlChannel
from gwcore.memtune import tune_malloc
from gwcore.streams import Stream, until_either

log = logging.getLogger(__name__)

# EX_CONFIG, the unit's RestartPreventExitStatus: only for an explicit rejection (retry_policy),
# which no restart can fix; the status console's re-register path starts the gateway again.
EXIT_REJECTED = 78


def sd_notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send one sd_notify datagram to $NOTIFY_SOCKET (False when not under systemd)."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: a full receiver queue drops this datagram instead.
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode())
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)
        return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Half the systemd watchdog timeout in seconds, or None when no watchdog is armed for us."""
    env = env if env is not None else dict(os.environ)
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.05)
    except ValueError:
        return None


def package_version() -> str:
    """The installed gateway-appliance version ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version("gateway-appliance")
    except metadata.PackageNotFoundError:
        return "unknown"


class StatusWriter:
    """Writes the status report atomically; a failure is logged once and never stops the daemon."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.version = package_version()
        self.targets: int | None = None
        self.health_fields: Callable[[], dict[str, Any]] = dict  # the health record's facts
        self._failed = False

    def write(self, report: status_file.TunnelReport) -> None:
        """Stamp the report with the daemon's own fields and replace the file."""
        health = self.health_fields()
        if report.cert_not_after is not None:
            # The identity room knows the certificate in use now; the last health record may
            # still describe the one it was renewed from.
            health.pop("cert_not_after", None)
        report = dataclasses.replace(
            report,
            **health,
            targets=self.targets,
            version=self.version,
            pid=os.getpid(),
            updated_at=time.time(),
            interval=self.interval,
        )
        try:
            # World-readable: the console reads it, and it holds no secret (the proxy URL that
            # errors could name has no credentials in it, see gateway.tunnel.proxy).
            write_atomic(self.path, status_file.encode(report), mode=0o644)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the status file %s: %s", self.path, exc)
            self._failed = True
        else:
            if self._failed:
                log.info("status file %s written again", self.path)
            self._failed = False


def setup_logging(debug: bool = False) -> None:
    """Log to journald when systemd started us (and python-systemd is there), else keep stderr."""
    if not (os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID")):
        return
    try:
        from systemd.journal import JournalHandler  # optional: Debian's python3-systemd
    except ImportError:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="gateway"))
    root.setLevel(logging.DEBUG if debug else logging.INFO)


class Daemon:
    """One gateway process: a relay, a tunnel client, and the systemd plumbing around them."""

    def __init__(self, config: GatewayConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path  # gateway.yaml, for the support bundle
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.relay: Relay | None = None
        self.client: TunnelClient | None = None
        self.health: HealthService | None = None
        self.status = StatusWriter(config.status_file, config.status_interval)
        # Control messages with the plane (docs/protocol.md §13): each room registers its handlers.
        self.control = ControlChannel("gateway")
        self.identity: IdentityManager | None = None
        self.update: UpdateAgent | None = None
        self.audit: AuditFile | None = None

    def load_inventory(self) -> tuple[TargetSet, PolicySet]:
        """Targets and policies from the configured paths (GatewayError on bad input)."""
        if self.config.targets.exists():
            targets = load_targets(self.config.targets)
        else:
            # A fresh appliance has no inventory yet; the tunnel still comes up (SIGHUP loads it later).
            log.warning("%s does not exist: no targets until it is written and reloaded", self.config.targets)
            targets = TargetSet({}, str(self.config.targets))
        missing = [d for d in self.config.policy_dirs if not d.is_dir()]
        for directory in missing:
            # The filter fails closed, so a missing directory silently denies its targets' calls.
            log.warning("metadata policy directory %s does not exist", directory)
        policies = load_policies([d for d in self.config.policy_dirs if d.is_dir()])
        for warning in policies.warnings:
            log.warning("metadata policy: %s", warning)
        if not policies.files:
            log.error("no metadata policies loaded from %s: every relayed call will be denied",
                      ", ".join(map(str, self.config.policy_dirs)))  # fmt: skip
        return targets, policies

    def reload(self) -> None:
        """SIGHUP: re-read targets and policies; on error keep the old ones and say why."""
        sd_notify("RELOADING=1")
        try:
            targets, policies = self.load_inventory()
        except GatewayError as exc:
            log.error("reload failed, keeping the previous targets and policies: %s", exc)
        else:
            assert self.relay is not None
            self.relay.reload(targets, policies, own_addresses())
            self.status.targets = len(targets.targets)
            self._write_status()
            log.info("reloaded %d targets and %d policy files", len(targets.targets), len(policies.files))
        sd_notify("READY=1")

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: begin a graceful shutdown."""
        log.info("shutdown requested")
        self._stop.set()

    def _write_status(self) -> None:
        if self.client is not None:
            report = self.client.report()
            if self.identity is not None:
                report = self.identity.annotate(report)
            self.status.write(report)

    def _start_identity(self) -> IdentityManager:
        """Certificate renewal, the plane's CA set and revocation (gateway.identity)."""
        state_dir = self.config.state_dir

        def client() -> TunnelClient:
            assert self.client is not None
            return self.client

        async def rotate() -> bool:
            try:
                return await client().rotate(client_ssl_context(state_dir))
            except GatewayError as exc:
                log.error("identity: cannot load the new pair: %s", exc)
                return False

        def reload_trust() -> None:
            try:
                client().use_context(client_ssl_context(state_dir))
            except GatewayError as exc:
                log.error("identity: cannot load the new CA set: %s", exc)

        identity = IdentityManager(
            PairStore(state_dir),
            self.control,
            rotate=rotate,
            reload_trust=reload_trust,
            reject=lambda error, action, code: client().reject(error, action, code),
            tunnel_up=lambda: client().state is State.CONNECTED,
            on_change=self._write_status,
        )
        identity.register()
        return identity

    def _on_state(self, state: State, reason: str) -> None:
        sd_notify(f"STATUS=tunnel {state}{': ' + reason if reason else ''}")
        if self.health is not None:
            self.health.on_state(state)
        if self.update is not None:
            self.update.on_state(state)
        self._write_status()

    def _on_open(self, stream: Stream) -> None:
        # Reserved names ("@support") are the gateway's own; targets.yaml names never start with "@".
        head = stream.request
        if head is not None and head.target.startswith(health_contract.RESERVED_PREFIX) and self.health:
            self.health.on_reserved(stream)
            return
        assert self.relay is not None
        self.relay.on_open(stream)

    async def run(self) -> int:
        """Run until stopped; the exit code is 0, or EXIT_REJECTED when the plane refused us."""
        cfg = self.config
        try:
            targets, policies = self.load_inventory()
            ssl_context = client_ssl_context(cfg.state_dir)
            self.identity = self._start_identity()
        except GatewayError as exc:
            # The console shows why the gateway is not running, not a stale or missing report.
            self.status.write(
                status_file.TunnelReport(
                    state=str(State.STOPPED),
                    plane_url=str(cfg.plane_url),
                    since=time.time(),
                    last_error=str(exc),
                )
            )
            raise
        self.status.targets = len(targets.targets)
        loop = asyncio.get_running_loop()
        if cfg.audit_log is not None:
            self.audit = AuditFile(
                cfg.audit_log, loop, max_bytes=cfg.audit_log_max_mib << 20, keep=cfg.audit_log_keep
            )
            audit.use_file(self.audit.write)
        self.relay = Relay(targets, policies, own_addresses(), budget=body_budget(cfg.buffer_budget_mib))
        limits = p.Limits(
            max_streams=cfg.max_streams, heartbeat_ms=max(100, int(cfg.heartbeat_interval * 1000))
        )
        self.client = TunnelClient(
            cfg.plane_url,
            ssl_context,
            self._on_open,
            limits=limits,
            backoff=Backoff(cfg.backoff_base, cfg.backoff_cap),
            proxy_url=cfg.proxy_url,
            drain_timeout=cfg.drain_timeout,
            on_state=self._on_state,
            control=self.control,
        )
        self.health = HealthService(
            self.client,
            self.relay,
            interval=cfg.health_interval,
            state_dir=cfg.state_dir,
            package_version=self.status.version,
            on_update=self._write_status,
            offer_after=cfg.support_offer_after,
            support_socket=cfg.support_socket,
            support_files=gateway_files(self.config_path, cfg.targets, cfg.status_file, cfg.state_dir),
            support_tails=gateway_tails(cfg.audit_log),
            audit_dropped=lambda: None if self.audit is None else self.audit.dropped,
        )
        self.status.health_fields = self.health.status_fields
        self.update = UpdateAgent(
            self.control,
            updates_dir=cfg.update_dir,
            helper=UpdateHelper(cfg.update_socket),
            # A fresh context per download: a renewal or a new CA set since start is used.
            ssl_context=lambda: client_ssl_context(cfg.state_dir),
            proxy_url=cfg.proxy_url,
        )
        self.update.register()
        log.info(
            "gateway starting: plane %s, proxy %s, %d targets, filter decisions to %s",
            cfg.plane_url,
            redact(cfg.proxy_url),
            len(targets.targets),
            cfg.audit_log or "the journal",
        )
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        tunnel = asyncio.create_task(self.client.run(), name="tunnel")
        self._tasks.append(asyncio.create_task(self._notify_ready(tunnel), name="notify-ready"))
        interval = watchdog_interval()
        if interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        self._tasks.append(asyncio.create_task(self._report_periodically(), name="status-report"))
        self._tasks.append(asyncio.create_task(self.identity.run(), name="identity"))
        self._tasks.append(asyncio.create_task(self.health.run(), name="health"))
        self._tasks.append(asyncio.create_task(self.update.run(), name="update"))
        stop = asyncio.create_task(self._stop.wait(), name="stop-wait")
        try:
            await asyncio.wait({tunnel, stop}, return_when=asyncio.FIRST_COMPLETED)
            sd_notify("STOPPING=1")
            if not tunnel.done():
                await self.client.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(tunnel), 5.0)
            return self._exit_code(tunnel)
        finally:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for task in (tunnel, stop, *self._tasks):
                task.cancel()
            for task in (tunnel, stop, *self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks.clear()
            await self.health.close()
            await self.update.close()
            await self.control.close()
            await self.relay.close()
            if self.audit is not None:
                audit.use_file(None)
                self.audit.close()
            self._write_status()  # the last word: stopped, or rejected and why

    def _exit_code(self, tunnel: asyncio.Task[None]) -> int:
        if not tunnel.done() or tunnel.cancelled():
            return 0
        exc = tunnel.exception()
        if isinstance(exc, Rejected):
            # The reason and what to do were logged when the tunnel stopped.
            log.error(
                "exiting with %d: systemd leaves the gateway stopped until it is re-registered", EXIT_REJECTED
            )
            return EXIT_REJECTED
        if exc is not None:
            log.error("tunnel failed: %s: %s", type(exc).__name__, exc)
            return 1
        return 0

    async def _notify_ready(self, tunnel: asyncio.Task[None]) -> None:
        assert self.client is not None
        await until_either(tunnel, self.client.first_attempt)
        state = self.client.state
        sd_notify(f"READY=1\nSTATUS=tunnel {state}")
        log.info("ready (tunnel %s)", state if state is not State.CONNECTED else "connected")

    async def _report_periodically(self) -> None:
        # Between state changes too: open streams and counters move, and a fresh updated_at is
        # how the console tells a live daemon from a dead one's leftover file.
        while True:
            await asyncio.sleep(self.status.interval)
            self._write_status()

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the loop itself: if the loop wedges, the pings stop and systemd restarts us.
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def run_daemon(config: GatewayConfig, debug: bool = False, config_path: Path | None = None) -> int:
    """Blocking entry for `gateway run`."""
    setup_logging(debug)
    if not Path(config.state_dir).is_dir():
        raise GatewayError(f"{config.state_dir}: state directory not found", "register the gateway first")
    tune_malloc()
    return asyncio.run(Daemon(config, config_path).run())

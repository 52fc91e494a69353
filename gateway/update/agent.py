"""The gateway's update agent: follows the plane's `update-offer`s and reports `update-status`
(docs/protocol.md §13.5, docs/updates.md "The update agent").

For an offer it downloads the bundle (gateway.update.download: mTLS, proxy, resumable, verified),
then, if the offer says install, asks the root helper (gateway.update.helper) to install it, and if
it says reboot, to reboot. Every step change is reported; a failed download is retried with
backoff; a wrong checksum, a refusal or a failed install is reported as failed with its reason.
After each boot, and on every new tunnel, it reports the updater's recorded outcome (healthy,
rolled-back, failed), with the rollout id it kept on /var for that purpose.

The daemon wires it: `register()` on the control channel, `on_state` from the tunnel's state
callback, `run()` as a task, `close()` on shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from gateway.tunnel.backoff import Backoff
from gateway.tunnel.client import State
from gateway.tunnel.proxy import proxy_settings
from gateway.update import model
from gateway.update.download import DownloadError, download
from gateway.update.helper import HelperError, UpdateHelper
from gwcore.atomic import write_atomic
from gwcore.control import ControlChannel, ControlError, Message
from gwcore.update import (
    UPDATE_OFFER,
    MessageError,
    UpdateOffer,
    UpdateState,
    UpdateStatus,
    one_line,
    parse_update_offer,
)

log = logging.getLogger(__name__)

AGENT_FILE = "agent.json"  # the offer being followed: its rollout id survives the reboot
TRIAL_POLL = 10.0  # seconds between looks at a trial boot's verdict
STATUS_TIMEOUT = 30.0
OUTBOX = 32
OS_RELEASE = Path("/usr/lib/os-release")
CMDLINE = Path("/proc/cmdline")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class UpdateAgent:
    """Downloads, installs and reboots as the plane offers; reports each step."""

    def __init__(
        self,
        control: ControlChannel,
        *,
        updates_dir: Path,
        helper: UpdateHelper,
        ssl_context: Callable[[], ssl.SSLContext],
        proxy_url: URL | None = None,
        os_release: Path = OS_RELEASE,
        cmdline: Path = CMDLINE,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        trial_poll: float = TRIAL_POLL,
    ) -> None:
        self.control = control
        self.updates_dir = updates_dir
        self.helper = helper
        self._ssl_context = ssl_context
        self.proxy, self.proxy_auth = proxy_settings(proxy_url)
        self.running = model.image_version(_read(os_release))
        self.slot = model.booted_slot(_read(cmdline))
        self.backoff = backoff or Backoff(base=5.0, cap=300.0)
        self._clock = clock
        self.trial_poll = trial_poll
        self.state = UpdateState.IDLE
        self.target: str | None = None
        self.rollout: str | None = None
        self.progress: float | None = None
        self.reason: str | None = None
        self.sent = 0  # statuses the plane acknowledged
        self._offer: UpdateOffer | None = None
        self._job: asyncio.Task[None] | None = None
        self._settled = True
        self._loaded = False  # the updater's record read (until then there is nothing to report)
        self._ready = asyncio.Event()  # set with _loaded: offers wait for it
        self._dirty = asyncio.Event()
        # Reports not yet taken by the plane, oldest first; bounded (a long outage keeps the newest).
        self._outbox: collections.deque[UpdateStatus] = collections.deque(maxlen=OUTBOX)
        self._sending = asyncio.Lock()
        self._plane_takes_status = True
        self._tasks: set[asyncio.Task[None]] = set()

    # --- wiring ---------------------------------------------------------------------------------

    def register(self) -> None:
        """Serve the plane's update offers on the control channel."""
        self.control.register(UPDATE_OFFER, self._on_offer)

    def on_state(self, state: State) -> None:
        """The tunnel's state changed: on every new connection, report (the outcome of a reboot)."""
        if state is State.CONNECTED:
            self._plane_takes_status = True
            if self._loaded and not self._outbox:
                self._outbox.append(self.status())
            self._dirty.set()

    def status(self) -> UpdateStatus:
        """The update-status to report now."""
        return UpdateStatus(
            running=self.running,
            slot=self.slot,
            target=self.target,
            rollout=self.rollout,
            state=self.state,
            progress=self.progress,
            reason=self.reason,
            at=self._clock(),
        )

    async def run(self) -> None:
        """Read the updater's outcome, then send every change (and the state on each new tunnel)."""
        await self._load_outcome()
        self._loaded = True
        self._ready.set()
        while True:
            await self._wait_dirty()
            if not self._settled and self._job is None:
                await self._load_outcome()
            await self._send()

    async def close(self) -> None:
        """Cancel the job and what else runs."""
        tasks = [t for t in (self._job, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _wait_dirty(self) -> None:
        # An unjudged trial boot is looked at again every TRIAL_POLL seconds.
        timeout = None if self._settled else self.trial_poll
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._dirty.wait(), timeout)
        self._dirty.clear()

    # --- reporting ------------------------------------------------------------------------------

    def _set(self, state: UpdateState, *, reason: str | None = None, progress: float | None = None) -> None:
        if (state, reason, progress) != (self.state, self.reason, self.progress):
            target = f" {self.target}" if self.target else ""
            log.info("update: %s%s%s", state, target, f": {reason}" if reason else "")
        changed = state is not self.state
        self.state, self.reason, self.progress = state, (one_line(reason) if reason else None), progress
        snapshot = self.status()
        if self._outbox and not changed:
            self._outbox[-1] = snapshot  # progress within a step: the latest is enough
        else:
            self._outbox.append(snapshot)  # every step change reaches the plane, in order
        self._dirty.set()

    async def _send(self) -> bool:
        """Send the reports waiting, in order; False if some are left (no tunnel, refused)."""
        async with self._sending:  # the job's own send before a reboot and the loop's, one at a time
            return await self._send_waiting()

    async def _send_waiting(self) -> bool:
        while self._outbox:
            if not self.control.ready or not self._plane_takes_status:
                return False
            status = self._outbox[0]
            try:
                await self.control.request(status.message(), timeout=STATUS_TIMEOUT)
            except ControlError as exc:
                if exc.code == "unknown-type":
                    log.info(
                        "update: the plane does not take update-status; not sending it on this connection"
                    )
                    self._plane_takes_status = False
                    return False
                if exc.code in ("disconnected", "unavailable", "timeout"):
                    return False  # sent again on the next tunnel
                log.warning("update: update-status not taken: %s", exc)  # malformed: do not loop on it
            if self._outbox and self._outbox[0] is status:
                self._outbox.popleft()
            self.sent += 1
        return True

    async def _load_outcome(self) -> None:
        """The updater's record (through the helper) as this boot's state."""
        try:
            status = await self.helper.status()
        except HelperError as exc:
            log.warning("update: cannot read the updater's record: %s", exc)
            self._settled = True
            return
        found = model.outcome(status, self.running, self.slot)
        self._settled = found.settled
        same = (found.state, found.target, found.reason) == (self.state, self.target, self.reason)
        if self._loaded and same:
            return  # a trial still being judged: nothing new to report
        kept = self._load_agent_file()
        self.target = found.target
        self.rollout = kept.get("rollout") if kept.get("target") == found.target else None
        if found.state is UpdateState.IDLE and kept.get("target"):
            staged = self.updates_dir / model.bundle_name(str(kept["target"]))
            if staged.is_file():
                self.target, self.rollout = str(kept["target"]), kept.get("rollout")
                self._set(UpdateState.DOWNLOADED)
                return
        self._set(found.state, reason=found.reason)

    def _load_agent_file(self) -> dict[str, Any]:
        try:
            data = json.loads((self.updates_dir / AGENT_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if k in ("target", "rollout") and isinstance(v, str)}

    def _save_agent_file(self) -> None:
        try:
            write_atomic(
                self.updates_dir / AGENT_FILE,
                json.dumps({"target": self.target, "rollout": self.rollout}).encode(),
                mode=0o600,
            )
        except OSError as exc:
            log.warning("update: cannot write %s: %s", self.updates_dir / AGENT_FILE, exc)

    # --- offers ---------------------------------------------------------------------------------

    async def _on_offer(self, message: Message) -> None:
        try:
            offer = parse_update_offer(message)
        except MessageError as exc:
            log.warning("update: offer ignored: %s", exc)
            return
        # The plane offers right after HELLO; what this boot's record says (a rollback of this very
        # release) decides what to do with it, and reading it takes seconds under emulation.
        await self._ready.wait()
        if offer.version == self.running:
            self._stay(offer)
            return
        before = self._offer
        same = before is not None and (before.version, before.sha256) == (offer.version, offer.sha256)
        if same and self._job is not None and not self._job.done():
            self._offer = offer  # the flags (install, reboot) are read at each step
            return
        if model.gave_up_on(offer, model.Outcome(self.state, self.target), self.rollout):
            log.warning(
                "update: %s rolled back here in rollout %s: not installing it again",
                offer.version,
                offer.rollout,
            )
            self._outbox.append(self.status())
            self._dirty.set()
            return
        if self.state is UpdateState.INSTALLED and self.target == offer.version and not offer.reboot:
            self._offer = offer
            self._dirty.set()
            return
        await self._cancel_job()
        self._offer = offer
        self._job = asyncio.create_task(self._follow(offer), name="update-job")

    def _stay(self, offer: UpdateOffer) -> None:
        """The offer is the running version: drop whatever was staged for another."""
        self._spawn(self._drop_staged(offer))

    async def _drop_staged(self, offer: UpdateOffer) -> None:
        await self._cancel_job()
        self._offer = None
        removed = self._clean(keep=None)
        if self.state in (UpdateState.DOWNLOADING, UpdateState.DOWNLOADED, UpdateState.FAILED) or removed:
            self.target, self.rollout = None, offer.rollout
            self._save_agent_file()
            self._set(UpdateState.IDLE)

    async def _cancel_job(self) -> None:
        job, self._job = self._job, None
        if job is not None and not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _clean(self, keep: str | None) -> int:
        """Remove bundles and parts of other versions than `keep`; how many were removed."""
        removed = 0
        with contextlib.suppress(OSError):
            for path in self.updates_dir.iterdir():
                name = path.name
                if name.endswith((model.BUNDLE, model.BUNDLE + model.PART)) and not (
                    keep and name in (model.bundle_name(keep), model.bundle_name(keep) + model.PART)
                ):
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    # --- the job: download, install, reboot --------------------------------------------------------

    async def _follow(self, offer: UpdateOffer) -> None:
        installed = self.state is UpdateState.INSTALLED and self._settled and self.target == offer.version
        self.target, self.rollout = offer.version, offer.rollout
        self._save_agent_file()
        self._clean(keep=offer.version)
        if not installed:
            bundle = await self._fetch(offer)
            if bundle is None:
                return
            self._set(UpdateState.DOWNLOADED)
            if not self._current(offer).install:
                return
            self._set(UpdateState.INSTALLING)
            try:
                reply = await self.helper.install(bundle, self._current(offer).downgrade)
            except HelperError as exc:
                self._set(UpdateState.FAILED, reason=str(exc))
                return
            if not reply["ok"]:
                self._set(UpdateState.FAILED, reason=str(reply.get("reason") or "the install failed"))
                return
            self._set(UpdateState.INSTALLED)
        if not self._current(offer).reboot:
            return
        self._set(UpdateState.REBOOTING)
        await self._send()  # the plane hears it before the tunnel goes
        try:
            reply = await self.helper.reboot()
        except HelperError as exc:
            self._set(UpdateState.FAILED, reason=str(exc))
            return
        if not reply["ok"]:
            self._set(UpdateState.FAILED, reason=f"reboot: {reply.get('reason')}")

    def _current(self, offer: UpdateOffer) -> UpdateOffer:
        # A later offer for the same bundle may have changed install/reboot while this job ran.
        return self._offer if self._offer is not None and self._offer.version == offer.version else offer

    async def _fetch(self, offer: UpdateOffer) -> Path | None:
        """The verified bundle on disk, retrying a failed download with backoff; None if it failed."""
        dest = self.updates_dir / model.bundle_name(offer.version)
        self.updates_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if dest.is_file():
            # Staged earlier (a download-only offer): rename it back to a part, which download()
            # verifies again rather than trusting it.
            os.replace(dest, dest.with_name(dest.name + model.PART))
        self.backoff.reset()
        reported = 0
        self._set(UpdateState.DOWNLOADING, progress=0.0)

        def progress(done: int) -> None:
            nonlocal reported
            if model.progress_due(done, offer.size, reported):
                reported = done
                self._set(UpdateState.DOWNLOADING, progress=round(done / offer.size, 3))

        while True:
            problem = self._space_problem(dest, offer.size)
            if problem:
                self._set(UpdateState.FAILED, reason=problem)
                return None
            try:
                connector = aiohttp.TCPConnector(ssl=self._ssl_context())
                async with aiohttp.ClientSession(connector=connector) as session:
                    started = time.monotonic()
                    path = await download(
                        session,
                        offer.url,
                        dest,
                        size=offer.size,
                        sha256=offer.sha256,
                        proxy=str(self.proxy) if self.proxy else None,
                        proxy_auth=self.proxy_auth,
                        on_progress=progress,
                    )
                log.info(
                    "update: %s downloaded and verified (%d bytes, %.1f s)",
                    offer.version,
                    offer.size,
                    time.monotonic() - started,
                )
                return path
            except DownloadError as exc:
                if exc.permanent:
                    self._set(UpdateState.FAILED, reason=exc.message)
                    return None
                delay = self.backoff.next_delay()
                log.warning("update: %s; retrying in %.0f s", exc.message, delay)
                self._set(UpdateState.DOWNLOADING, progress=self.progress, reason=f"retrying: {exc.message}")
                await asyncio.sleep(delay)
            except Exception as exc:  # a certificate that cannot be loaded, a bug: reported, not fatal
                log.exception("update: download of %s failed", offer.version)
                self._set(UpdateState.FAILED, reason=f"download: {type(exc).__name__}: {exc}")
                return None

    def _space_problem(self, dest: Path, size: int) -> str | None:
        part = dest.with_name(dest.name + model.PART)
        have = part.stat().st_size if part.exists() else 0
        st = os.statvfs(self.updates_dir)
        free = st.f_bavail * st.f_frsize
        # The rest of the download, and the root helper's copy of the bundle while it installs.
        if free < size - have + size:
            need = (size - have + size) >> 20
            return f"not enough space in {self.updates_dir}: {need} MiB more needed, {free >> 20} MiB free"
        return None

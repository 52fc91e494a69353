"""The gateway's side of the root helper (image/: appliance-update.socket, `python3 -m updater
serve-request`): one JSON line out, one JSON line back, over a unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

DEFAULT_SOCKET = Path("/run/appliance-update.sock")
MAX_REPLY = 1024 * 1024  # the updater's status JSON is a few KiB
INSTALL_TIMEOUT = 3600.0
TIMEOUT = 120.0


class HelperError(GatewayError):
    """The helper could not be asked, or did not answer one line of JSON."""


class UpdateHelper:
    """Asks the root helper to install, reboot, or report the updater's record."""

    def __init__(self, socket_path: Path = DEFAULT_SOCKET) -> None:
        self.socket_path = socket_path

    async def ask(self, request: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
        """Send one request and return the reply object ({"ok": bool, "reason": str, ...})."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=MAX_REPLY)
                try:
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise HelperError(f"update helper {self.socket_path}: no answer in {timeout:.0f} s") from None
        except (OSError, ValueError) as exc:  # ValueError: a line beyond the limit
            raise HelperError(f"update helper {self.socket_path}: {exc}") from None
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise HelperError(f"update helper {self.socket_path}: no valid answer")
        return reply

    async def install(self, bundle: Path, downgrade: bool) -> dict[str, Any]:
        """Install a verified bundle from the updates directory (the helper takes the file)."""
        request = {"op": "install", "bundle": str(bundle), "downgrade": downgrade}
        return await self.ask(request, INSTALL_TIMEOUT)

    async def reboot(self) -> dict[str, Any]:
        """Reboot into the installed slot."""
        return await self.ask({"op": "reboot"})

    async def status(self) -> dict[str, Any]:
        """The updater's `status` JSON (HelperError when the helper fails)."""
        reply = await self.ask({"op": "status"})
        status = reply.get("status")
        if not reply["ok"] or not isinstance(status, dict):
            raise HelperError(f"update helper: status: {reply.get('reason') or 'no status'}")
        return status

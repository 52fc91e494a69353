"""The plane's state directory: atomic file writes, a cross-process lock, and the gateway registry."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gwcore.atomic import write_atomic
from gwcore.safeload import loads_json
from mgmtplane.errors import PlaneError

log = logging.getLogger(__name__)

GATEWAYS_FILE = "gateways.json"
LOCK_FILE = ".lock"


def write_json_atomic(path: Path, value: Any, mode: int = 0o644) -> None:
    """Write `value` as indented JSON to `path` atomically."""
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path, default: Any) -> Any:
    """Read a JSON state file; a missing file gives `default`, a corrupt one a one-line PlaneError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise PlaneError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return loads_json(text)
    except ValueError as exc:
        raise PlaneError(f"{path}: invalid JSON: {exc}") from exc


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state dir's exclusive lock (serve and `token create` run as separate processes)."""
    ensure_state_dir(state_dir)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state dir (0700) if missing; it holds the CA key and the admin token."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PlaneError(f"{state_dir}: cannot create state dir: {exc.strerror}") from exc
    if not state_dir.is_dir():
        raise PlaneError(f"{state_dir}: not a directory")


@dataclass(frozen=True)
class GatewayRecord:
    """One registered gateway, as stored in gateways.json."""

    gateway_id: str
    hostname: str
    registered_at: str  # ISO 8601, UTC
    cert_serial: str  # hex
    cert_fingerprint: str  # "sha256:<hex>" of the certificate's DER
    token_id: str = ""

    def to_json(self) -> dict[str, str]:
        """The record as a JSON-ready dict."""
        return asdict(self)


def _record_from_json(path: Path, key: str, raw: Any) -> GatewayRecord:
    if not isinstance(raw, dict):
        raise PlaneError(f"{path}: gateways.{key}: expected an object")
    try:
        return GatewayRecord(
            gateway_id=str(raw["gateway_id"]),
            hostname=str(raw["hostname"]),
            registered_at=str(raw["registered_at"]),
            cert_serial=str(raw["cert_serial"]),
            cert_fingerprint=str(raw["cert_fingerprint"]),
            token_id=str(raw.get("token_id", "")),
        )
    except KeyError as exc:
        raise PlaneError(f"{path}: gateways.{key}: missing field {exc.args[0]}") from exc


class Registry:
    """Registered gateways, persisted in `<state_dir>/gateways.json` (re-read on every call)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / GATEWAYS_FILE

    def _load(self) -> dict[str, GatewayRecord]:
        data = read_json(self.path, {"gateways": {}})
        gateways = data.get("gateways") if isinstance(data, dict) else None
        if not isinstance(gateways, dict):
            raise PlaneError(f"{self.path}: gateways: expected an object")
        return {key: _record_from_json(self.path, key, raw) for key, raw in gateways.items()}

    def add(self, record: GatewayRecord) -> None:
        """Store (or replace) a gateway's record."""
        with state_lock(self.state_dir):
            records = self._load()
            records[record.gateway_id] = record
            write_json_atomic(self.path, {"gateways": {k: r.to_json() for k, r in records.items()}})
        log.info("registered gateway %s (%s)", record.gateway_id, record.hostname)

    def get(self, gateway_id: str) -> GatewayRecord | None:
        """The record of one gateway, or None."""
        return self._load().get(gateway_id)

    def all(self) -> list[GatewayRecord]:
        """Every registered gateway, oldest registration first."""
        return sorted(self._load().values(), key=lambda r: (r.registered_at, r.gateway_id))

"""The plane's state directory: atomic file writes, a cross-process lock, and the gateway registry."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
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


ACTIVE = "active"
REVOKED = "revoked"
# A deleted gateway is remembered (a tombstone) until its last certificate would have expired, so
# that the hub can say "deleted" rather than "unknown"; after that TLS refuses it anyway.
TOMBSTONE_MIN = dt.timedelta(days=1)


def utc_now_iso() -> str:
    """Now, as the registry writes times (ISO 8601, UTC, whole seconds)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class GatewayRecord:
    """One registered gateway, as stored in gateways.json."""

    gateway_id: str
    hostname: str
    registered_at: str  # ISO 8601, UTC
    cert_serial: str  # hex, of the current certificate
    cert_fingerprint: str  # "sha256:<hex>" of the current certificate's DER
    token_id: str = ""
    # The identity lifecycle (docs/operate.md); records written before it read with these defaults.
    state: str = ACTIVE  # or REVOKED
    revoked_at: str = ""
    key_hash: str = ""  # SPKI hash of the current certificate's key
    issuer: str = ""  # SPKI hash of the CA that signed the current certificate
    cert_not_after: str = ""  # ISO 8601, UTC
    # Certificates still admitted while a renewal completes (the gateway may not have stored the
    # new one yet); cleared once the gateway presents the current certificate.
    previous: tuple[str, ...] = ()
    renewed_at: str = ""
    renewals: int = 0
    site: str = ""  # the site it enrolled into (its join token's; docs/sites.md), "" for none

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        data = asdict(self)
        data["previous"] = list(self.previous)
        return data


_STRINGS = ("token_id", "state", "revoked_at", "key_hash", "issuer", "cert_not_after", "renewed_at", "site")


def _record_from_json(path: Path, key: str, raw: Any) -> GatewayRecord:
    if not isinstance(raw, dict):
        raise PlaneError(f"{path}: gateways.{key}: expected an object")
    try:
        previous = raw.get("previous", [])
        if not isinstance(previous, list) or not all(isinstance(f, str) for f in previous):
            raise PlaneError(f"{path}: gateways.{key}: previous: expected a list of fingerprints")
        renewals = raw.get("renewals", 0)
        if isinstance(renewals, bool) or not isinstance(renewals, int) or renewals < 0:
            raise PlaneError(f"{path}: gateways.{key}: renewals: expected a count")
        optional = {name: str(raw[name]) for name in _STRINGS if raw.get(name) is not None}
        return GatewayRecord(
            gateway_id=str(raw["gateway_id"]),
            hostname=str(raw["hostname"]),
            registered_at=str(raw["registered_at"]),
            cert_serial=str(raw["cert_serial"]),
            cert_fingerprint=str(raw["cert_fingerprint"]),
            previous=tuple(previous),
            renewals=renewals,
            **optional,
        )
    except KeyError as exc:
        raise PlaneError(f"{path}: gateways.{key}: missing field {exc.args[0]}") from exc


def _tombstones(path: Path, raw: Any) -> dict[str, dict[str, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise PlaneError(f"{path}: deleted: expected an object of objects")
    return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in raw.items()}


def _tombstone_until(record: GatewayRecord) -> str:
    floor = dt.datetime.now(dt.UTC) + TOMBSTONE_MIN
    try:
        until = dt.datetime.fromisoformat(record.cert_not_after)
    except ValueError:
        until = floor
    return max(until, floor).replace(microsecond=0).isoformat()


class Registry:
    """Registered gateways, persisted in `<state_dir>/gateways.json` (re-read on every call)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / GATEWAYS_FILE

    def _load_all(self) -> tuple[dict[str, GatewayRecord], dict[str, dict[str, str]]]:
        data = read_json(self.path, {"gateways": {}})
        gateways = data.get("gateways") if isinstance(data, dict) else None
        if not isinstance(gateways, dict):
            raise PlaneError(f"{self.path}: gateways: expected an object")
        records = {key: _record_from_json(self.path, key, raw) for key, raw in gateways.items()}
        return records, _tombstones(self.path, data.get("deleted"))

    def _load(self) -> dict[str, GatewayRecord]:
        return self._load_all()[0]

    def _save(self, records: dict[str, GatewayRecord], deleted: dict[str, dict[str, str]]) -> None:
        now = utc_now_iso()
        kept = {k: v for k, v in deleted.items() if v.get("until", "") > now and k not in records}
        data: dict[str, Any] = {"gateways": {k: r.to_json() for k, r in records.items()}}
        if kept:
            data["deleted"] = kept
        write_json_atomic(self.path, data)

    def add(self, record: GatewayRecord) -> None:
        """Store (or replace) a gateway's record."""
        with state_lock(self.state_dir):
            records, deleted = self._load_all()
            records[record.gateway_id] = record
            self._save(records, deleted)
        log.info("registered gateway %s (%s)", record.gateway_id, record.hostname)

    def update(
        self, gateway_id: str, change: Callable[[GatewayRecord], GatewayRecord | None]
    ) -> GatewayRecord | None:
        """Apply `change` to one record under the lock (it returns the new record, or None to leave
        it as it is); returns the record as stored, or None when the gateway is unknown."""
        with state_lock(self.state_dir):
            records, deleted = self._load_all()
            record = records.get(gateway_id)
            if record is None:
                return None
            changed = change(record)
            if changed is None or changed == record:
                return record
            records[gateway_id] = changed
            self._save(records, deleted)
            return changed

    def remove(self, gateway_id: str) -> GatewayRecord | None:
        """Delete a gateway, leaving a tombstone; returns the record it had, or None."""
        with state_lock(self.state_dir):
            records, deleted = self._load_all()
            record = records.pop(gateway_id, None)
            if record is None:
                return None
            deleted[gateway_id] = {"deleted_at": utc_now_iso(), "until": _tombstone_until(record)}
            self._save(records, deleted)
        log.info("deleted gateway %s (%s)", gateway_id, record.hostname)
        return record

    def was_deleted(self, gateway_id: str) -> bool:
        """Whether the gateway was deleted (and its tombstone still stands)."""
        tomb = self._load_all()[1].get(gateway_id)
        return tomb is not None and tomb.get("until", "") > utc_now_iso()

    def get(self, gateway_id: str) -> GatewayRecord | None:
        """The record of one gateway, or None."""
        return self._load().get(gateway_id)

    def all(self) -> list[GatewayRecord]:
        """Every registered gateway, oldest registration first."""
        return sorted(self._load().values(), key=lambda r: (r.registered_at, r.gateway_id))

"""gateway.yaml: one frozen GatewayConfig, every setting declared once in SETTINGS, one-line errors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from gateway.errors import GatewayError
from gateway.filter.policy import default_policy_dirs
from gwcore import paths
from gwcore.safeload import read_yaml_file
from gwcore.settings import CLASS_DEFAULT, REQUIRED, InvalidAt, Parser, Setting, integer, section
from gwcore.status_file import DEFAULT_INTERVAL as DEFAULT_STATUS_INTERVAL
from gwcore.status_file import DEFAULT_PATH as DEFAULT_STATUS_PATH

DEFAULT_CONFIG = paths.CONFIG


def default_audit_log() -> Path | None:
    """audit.log in the unit's LogsDirectory= (/var/log/gateway on the appliance); None elsewhere
    (a development run, a test): decisions then go through logging, as before the file existed."""
    logs = os.environ.get("LOGS_DIRECTORY", "").split(":")[0]
    return Path(logs) / "audit.log" if logs.startswith("/") else None


@dataclass(frozen=True)
class GatewayConfig:
    """The daemon's settings (firstboot writes the first five; the rest have defaults)."""

    plane_url: URL
    state_dir: Path = paths.STATE_DIR
    proxy_url: URL | None = None
    targets: Path = paths.TARGETS
    policy_dirs: tuple[Path, ...] = field(default_factory=lambda: tuple(default_policy_dirs()))
    heartbeat_interval: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_streams: int = 1024
    drain_timeout: float = 20.0
    status_file: Path = DEFAULT_STATUS_PATH
    status_interval: float = DEFAULT_STATUS_INTERVAL
    # Bytes for buffered bodies across all streams; None: a quarter of the unit's memory limit.
    buffer_budget_mib: int | None = None
    # The operate lane (docs/operate.md): a health record every health_interval seconds, a support
    # bundle offered after support_offer_after failed reconnects, built by the helper at support_socket.
    health_interval: float = 30.0
    support_offer_after: int = 30
    support_socket: Path = Path("/run/gateway-support.sock")
    # The update lane (docs/updates.md): bundles are downloaded into update_dir and installed by
    # the root helper at update_socket.
    update_dir: Path = Path("/var/lib/gateway/updates")
    update_socket: Path = Path("/run/appliance-update.sock")
    # The filter's audit log (docs/metadata-policy.md, Audit): None (`audit_log: null`) logs every
    # decision through logging instead; rotated at audit_log_max_mib, audit_log_keep old files kept.
    audit_log: Path | None = field(default_factory=default_audit_log)
    audit_log_max_mib: int = 64
    audit_log_keep: int = 4


def _url(schemes: tuple[str, ...], optional: bool = False) -> Parser:
    def parse(value: object, key: str) -> URL | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise InvalidAt(key, "expected a URL")
        try:
            url = URL(value)
        except ValueError as exc:
            raise InvalidAt(key, f"invalid URL: {exc}") from None
        if url.scheme not in schemes or not url.host:
            raise InvalidAt(key, f"expected a {' or '.join(s + '://' for s in schemes)} URL with a host")
        return url

    return parse


def _path(value: object, key: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidAt(key, "expected an absolute path")
    return Path(value)


def _optional_path(value: object, key: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or value.endswith("/"):
        raise InvalidAt(key, "expected an absolute file path, or null for none")
    return Path(value)


def _paths(value: object, key: str) -> tuple[Path, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidAt(key, "expected a non-empty list of absolute paths")
    return tuple(_path(v, f"{key}[{i}]") for i, v in enumerate(value))


def _number(lo: float, hi: float) -> Parser:
    def parse(value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise InvalidAt(key, f"expected a number between {lo:g} and {hi:g}")
        return float(value)

    return parse


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidAt(key, "expected an integer between 1 and 65535")
    return int(value)


# Every setting once (gwcore.settings): the loader, its errors and the docs follow this table; the
# defaults are GatewayConfig's own.
SETTINGS: tuple[Setting, ...] = (
    Setting("plane_url", _url(("https",)), REQUIRED, "the plane, https://host[:port]"),
    Setting("state_dir", _path, CLASS_DEFAULT, "identity directory"),
    Setting("proxy_url", _url(("http",), optional=True), CLASS_DEFAULT, "outbound CONNECT proxy"),
    Setting("targets", _path, CLASS_DEFAULT, "targets.yaml"),
    Setting("policy_dirs", _paths, CLASS_DEFAULT, "metadata policy directories, in order"),
    Setting("heartbeat_interval", _number(0.2, 300), CLASS_DEFAULT, "seconds between pings"),
    Setting("backoff_base", _number(0.01, 60), CLASS_DEFAULT, "first reconnect delay, seconds"),
    Setting("backoff_cap", _number(0.1, 3600), CLASS_DEFAULT, "longest reconnect delay, seconds"),
    Setting("max_streams", _count, CLASS_DEFAULT, "concurrent streams"),
    Setting("drain_timeout", _number(0, 600), CLASS_DEFAULT, "seconds to finish calls on GOAWAY"),
    Setting("status_file", _path, CLASS_DEFAULT, "the status report"),
    Setting("status_interval", _number(0.1, 300), CLASS_DEFAULT, "seconds between status writes"),
    Setting("buffer_budget_mib", _count, CLASS_DEFAULT, "MiB for buffered bodies"),
    Setting("health_interval", _number(1, 3600), CLASS_DEFAULT, "seconds between health records"),
    Setting("support_offer_after", _count, CLASS_DEFAULT, "failed reconnects before a bundle is offered"),
    Setting("support_socket", _path, CLASS_DEFAULT, "the support-bundle helper's socket"),
    Setting("update_dir", _path, CLASS_DEFAULT, "where update bundles are downloaded"),
    Setting("update_socket", _path, CLASS_DEFAULT, "the update helper's socket"),
    Setting("audit_log", _optional_path, CLASS_DEFAULT, "the filter's audit log file (null: the journal)"),
    Setting("audit_log_max_mib", integer(1, 4096), CLASS_DEFAULT, "MiB at which the audit log rotates"),
    Setting("audit_log_keep", integer(1, 20), CLASS_DEFAULT, "rotated audit logs kept"),
)
_PARSE = section(GatewayConfig, SETTINGS, noun="setting")


def parse_config(data: Any, source: str) -> GatewayConfig:
    """Validate a parsed gateway.yaml; errors read `source: key: problem`."""
    try:
        config: GatewayConfig = _PARSE(data, "")
        if config.backoff_cap < config.backoff_base:
            raise InvalidAt("backoff_cap", "must not be below backoff_base")
    except InvalidAt as exc:
        raise GatewayError(f"{source}: {exc.path}: {exc.problem}") from None
    return config


def load_config(path: Path) -> GatewayConfig:
    """Read and validate gateway.yaml."""
    return parse_config(read_yaml_file(path, "run `firstboot register` first", GatewayError), str(path))

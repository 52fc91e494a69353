"""gateway.yaml: one frozen GatewayConfig, every setting declared once in SETTINGS, one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from gateway.errors import GatewayError
from gateway.filter.policy import default_policy_dirs
from gwcore import paths
from gwcore.safeload import read_yaml_file
from gwcore.status_file import DEFAULT_INTERVAL as DEFAULT_STATUS_INTERVAL
from gwcore.status_file import DEFAULT_PATH as DEFAULT_STATUS_PATH

DEFAULT_CONFIG = paths.CONFIG


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


def _url(value: Any, key: str, schemes: tuple[str, ...]) -> URL:
    if not isinstance(value, str) or not value:
        raise GatewayError(f"{key}: expected a URL")
    try:
        url = URL(value)
    except ValueError as exc:
        raise GatewayError(f"{key}: invalid URL: {exc}") from None
    if url.scheme not in schemes or not url.host:
        raise GatewayError(f"{key}: expected a {' or '.join(s + '://' for s in schemes)} URL with a host")
    return url


def _path(value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise GatewayError(f"{key}: expected an absolute path")
    return Path(value)


def _paths(value: Any, key: str) -> tuple[Path, ...]:
    if not isinstance(value, list) or not value:
        raise GatewayError(f"{key}: expected a non-empty list of absolute paths")
    return tuple(_path(v, f"{key}[{i}]") for i, v in enumerate(value))


def _number(lo: float, hi: float) -> Callable[[Any, str], float]:
    def parse(value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise GatewayError(f"{key}: expected a number between {lo:g} and {hi:g}")
        return float(value)

    return parse


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise GatewayError(f"{key}: expected an integer between 1 and 65535")
    return int(value)


# key -> parser; the dataclass supplies the defaults. Declared once, used by the loader and the docs.
SETTINGS: dict[str, Callable[[Any, str], Any]] = {
    "plane_url": lambda v, k: _url(v, k, ("https",)),
    "state_dir": _path,
    "proxy_url": lambda v, k: None if v is None else _url(v, k, ("http",)),
    "targets": _path,
    "policy_dirs": _paths,
    "heartbeat_interval": _number(0.2, 300),
    "backoff_base": _number(0.01, 60),
    "backoff_cap": _number(0.1, 3600),
    "max_streams": _count,
    "drain_timeout": _number(0, 600),
    "status_file": _path,
    "status_interval": _number(0.1, 300),
    "buffer_budget_mib": _count,
}


def parse_config(data: Any, source: str) -> GatewayConfig:
    """Validate a parsed gateway.yaml; errors read `source: key: problem`."""
    if not isinstance(data, dict):
        raise GatewayError(f"{source}: expected a mapping of settings")
    values: dict[str, Any] = {}
    for key, raw in data.items():
        parser = SETTINGS.get(str(key))
        if parser is None:
            raise GatewayError(f"{source}: {key}: unknown setting (known: {', '.join(SETTINGS)})")
        try:
            values[str(key)] = parser(raw, str(key))
        except GatewayError as exc:
            raise GatewayError(f"{source}: {exc.message}") from None
    if "plane_url" not in values:
        raise GatewayError(f"{source}: plane_url: required setting is missing")
    config = GatewayConfig(**values)
    if config.backoff_cap < config.backoff_base:
        raise GatewayError(f"{source}: backoff_cap: must not be below backoff_base")
    return config


def load_config(path: Path) -> GatewayConfig:
    """Read and validate gateway.yaml."""
    return parse_config(read_yaml_file(path, "run `firstboot register` first", GatewayError), str(path))

"""Target inventory: targets.yaml -> frozen, validated Target records (one-line errors)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from gateway.errors import GatewayError
from gateway.filter.policy import TARGET_KINDS_HELP, is_target_kind
from gateway.relay.ssrf import IPNetwork, parse_allow
from gwcore.safeload import read_yaml_file

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_FINGERPRINT_RE = re.compile(r"^sha256:([0-9A-Fa-f]{2}(:?[0-9A-Fa-f]{2}){31})$")
_TARGET_KEYS = frozenset({"name", "url", "kind", "tls", "timeout", "allow_private"})


@dataclass(frozen=True)
class TlsTrust:
    """How the target's certificate is trusted: a CA file, a SHA-256 pin, the system store, or not at all."""

    ca_file: Path | None = None
    fingerprint: bytes | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Target:
    """One reachable host: the only places the relay will send requests."""

    name: str
    url: URL
    kind: str
    tls: TlsTrust = field(default_factory=TlsTrust)
    connect_timeout: float = 5.0
    total_timeout: float = 60.0
    allow_private: tuple[IPNetwork, ...] = ()

    @property
    def base_path(self) -> str:
        """The URL path requests are appended to, without a trailing slash."""
        return self.url.raw_path.rstrip("/")


@dataclass(frozen=True)
class TargetSet:
    """The inventory, by name."""

    targets: Mapping[str, Target]
    source: str = "<none>"

    def get(self, name: str) -> Target | None:
        """The target called `name`, or None."""
        return self.targets.get(name)


def load_targets(path: Path) -> TargetSet:
    """Read and validate a targets.yaml file."""
    return parse_targets(read_yaml_file(path, error=GatewayError), str(path))


def parse_targets(data: Any, source: str) -> TargetSet:
    """Validate a parsed targets document; errors name `source` and the offending key."""
    if data is None:
        return TargetSet({}, source)
    if not isinstance(data, dict) or set(data) - {"targets"}:
        raise GatewayError(f"{source}: expected a mapping with one key, `targets`")
    items = data.get("targets")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise GatewayError(f"{source}: targets: expected a list")
    targets: dict[str, Target] = {}
    for i, item in enumerate(items):
        target = _parse_target(item, f"{source}: targets[{i}]")
        if target.name in targets:
            raise GatewayError(f"{source}: targets[{i}].name: duplicate target {target.name!r}")
        targets[target.name] = target
    return TargetSet(targets, source)


def _parse_target(item: Any, where: str) -> Target:
    if not isinstance(item, dict):
        raise GatewayError(f"{where}: expected a mapping")
    unknown = set(item) - _TARGET_KEYS
    if unknown:
        raise GatewayError(f"{where}: unknown key {sorted(map(str, unknown))[0]!r}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise GatewayError(f"{where}.name: expected a name of letters, digits, '.', '_' or '-'")
    url = _parse_url(item.get("url"), f"{where}.url")
    kind = item.get("kind", "http")
    if not isinstance(kind, str) or not is_target_kind(kind):
        raise GatewayError(f"{where}.kind: {kind!r} is not one of {TARGET_KINDS_HELP}")
    tls = _parse_tls(item.get("tls"), f"{where}.tls", url.scheme == "https")
    connect, total = _parse_timeouts(item.get("timeout"), f"{where}.timeout")
    allow_raw = item.get("allow_private") or []
    if not isinstance(allow_raw, list):
        raise GatewayError(f"{where}.allow_private: expected a list of addresses or CIDRs")
    allow = parse_allow(allow_raw, f"{where}.allow_private")
    return Target(name, url, kind, tls, connect, total, allow)


def _parse_url(value: Any, where: str) -> URL:
    if not isinstance(value, str) or not value:
        raise GatewayError(f"{where}: expected a URL like https://host[:port][/path]")
    try:
        url = URL(value)
    except ValueError as exc:
        raise GatewayError(f"{where}: invalid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise GatewayError(f"{where}: expected an http:// or https:// URL with a host")
    if url.user or url.password:
        raise GatewayError(f"{where}: credentials in the URL are not allowed")
    if url.query_string or url.fragment:
        raise GatewayError(f"{where}: a base URL has no query or fragment")
    return url


def _parse_tls(value: Any, where: str, is_https: bool) -> TlsTrust:
    if value is None:
        return TlsTrust()
    if not isinstance(value, dict):
        raise GatewayError(f"{where}: expected a mapping with ca_file, fingerprint or insecure")
    unknown = set(value) - {"ca_file", "fingerprint", "insecure"}
    if unknown:
        raise GatewayError(f"{where}: unknown key {sorted(map(str, unknown))[0]!r}")
    chosen = [k for k in ("ca_file", "fingerprint") if value.get(k)]
    insecure = value.get("insecure", False)
    if not isinstance(insecure, bool):
        raise GatewayError(f"{where}.insecure: expected true or false")
    if len(chosen) + int(insecure) > 1:
        raise GatewayError(f"{where}: choose one of ca_file, fingerprint or insecure")
    if chosen and not is_https:
        raise GatewayError(f"{where}: TLS settings on a plain http:// target")
    ca_file = value.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str) or not ca_file.startswith("/"):
            raise GatewayError(f"{where}.ca_file: expected an absolute path")
        return TlsTrust(ca_file=Path(ca_file))
    fingerprint = value.get("fingerprint")
    if fingerprint is not None:
        match = _FINGERPRINT_RE.match(str(fingerprint))
        if match is None:
            raise GatewayError(f"{where}.fingerprint: expected sha256: followed by 32 hex bytes")
        return TlsTrust(fingerprint=bytes.fromhex(match.group(1).replace(":", "")))
    return TlsTrust(insecure=insecure)


def _parse_timeouts(value: Any, where: str) -> tuple[float, float]:
    if value is None:
        return 5.0, 60.0
    if not isinstance(value, dict) or set(value) - {"connect", "total"}:
        raise GatewayError(f"{where}: expected a mapping with connect and/or total (seconds)")
    out = []
    for key, default in (("connect", 5.0), ("total", 60.0)):
        raw = value.get(key, default)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 3600:
            raise GatewayError(f"{where}.{key}: expected seconds between 0 and 3600")
        out.append(float(raw))
    return out[0], out[1]

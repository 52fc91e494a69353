"""The first-boot settings, resolved: the deploy-time keys (gwcore.deploy: the table, its
validators, masks) read from seeds and the wizard, checked across fields, into one frozen Settings."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from firstboot.errors import FirstbootError
from gwcore.deploy import (
    BY_KEY,
    KEYS,
    REQUIRED,
    SETTINGS,
    InvalidSetting,
    NetworkMode,
    split_list,
    token_of,
    validate_value,
)

# ---------------------------------------------------------------- the resolved settings


@dataclass(frozen=True)
class Settings:
    """Validated, cross-checked settings; `sources` says where each key came from."""

    plane_url: str
    join_token: str
    hostname: str | None = None
    mode: NetworkMode = NetworkMode.DHCP
    address: str | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    ntp: tuple[str, ...] = ()
    proxy_url: str | None = None
    ssh_key: str | None = None
    password_hash: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def raw(self) -> dict[str, str]:
        """The settings as key -> string (unset keys omitted), the form seeds and answers use."""
        out: dict[str, str] = {}
        for s in SETTINGS:
            value = getattr(self, s.attr)
            if isinstance(value, tuple):
                value = ",".join(value)
            if value:
                out[s.key] = str(value)
        return out

    def digest_input(self) -> str:
        """A stable string of the values, for detecting changed settings between boots."""
        return json.dumps(self.raw(), sort_keys=True)


def check_fields(values: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Validate each present, non-empty value; returns (normalised, problems). Unknown keys are problems."""
    good: dict[str, str] = {}
    problems: list[str] = []
    for key, raw in values.items():
        if key not in BY_KEY:
            problems.append(f"{key}: unknown setting (known: {', '.join(KEYS)})")
            continue
        if not raw.strip():
            continue
        try:
            good[key] = validate_value(key, raw)
        except InvalidSetting as exc:
            problems.append(str(exc))
    return good, problems


def check_cross(values: Mapping[str, str]) -> list[str]:
    """Cross-field rules over already-validated values (a check_inputs() pass)."""
    problems: list[str] = []
    mode = values.get("network.mode", NetworkMode.DHCP.value)
    if mode == NetworkMode.STATIC:
        for key in ("network.address", "network.gateway"):
            if key not in values:
                problems.append(f"{key}: required when network.mode is static")
        if "network.address" in values and "network.gateway" in values:
            net = ipaddress.ip_interface(values["network.address"]).network
            gw = ipaddress.ip_address(values["network.gateway"])
            if gw.version != net.version or gw not in net:
                problems.append(f"network.gateway: {gw} is not inside the subnet {net} of network.address")
            elif gw == ipaddress.ip_interface(values["network.address"]).ip:
                problems.append(f"network.gateway: {gw} is the appliance's own address")
    else:
        for key in ("network.address", "network.gateway"):
            if key in values:
                problems.append(f"{key}: only used when network.mode is static (it is {mode})")
    token = values.get("gateway.join_token")
    if token is not None and "gateway.plane_url" in values:
        tok_url = token_of(token).plane_url
        if tok_url != values["gateway.plane_url"]:
            problems.append(
                f"gateway.plane_url: {values['gateway.plane_url']} does not match the join token's {tok_url} "
                "(leave it empty to use the token's)"
            )
    return problems


def missing(values: Mapping[str, str]) -> list[str]:
    """Required keys that have no value yet (the wizard asks for these)."""
    return [key for key in REQUIRED if not values.get(key, "").strip()]


def build(values: Mapping[str, str], sources: Mapping[str, str] | None = None) -> Settings:
    """Validate everything and return Settings; FirstbootError names the first problem."""
    good, problems = check_fields(values)
    problems += [f"{key}: required (give it as a seed or in the wizard)" for key in missing(good)]
    if not problems:
        problems += check_cross(good)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise FirstbootError(problems[0] + more)
    token = good["gateway.join_token"]
    plane_url = good.get("gateway.plane_url") or token_of(token).plane_url
    srcs = dict(sources or {})
    if "gateway.plane_url" not in good:
        srcs["gateway.plane_url"] = "join-token"
    return Settings(
        plane_url=plane_url,
        join_token=token,
        hostname=good.get("network.hostname"),
        mode=NetworkMode(good.get("network.mode", NetworkMode.DHCP)),
        address=good.get("network.address"),
        gateway=good.get("network.gateway"),
        dns=tuple(split_list(good.get("network.dns", ""))),
        ntp=tuple(split_list(good.get("network.ntp", ""))),
        proxy_url=good.get("proxy.url"),
        ssh_key=good.get("admin.ssh_key"),
        password_hash=good.get("admin.password_hash"),
        sources={k: v for k, v in srcs.items() if k in good or k == "gateway.plane_url"},
    )

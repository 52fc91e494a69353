"""Seed sources: a table of small modules, asked in order; the first source that gives a key wins."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.system import System
from gwcore.deploy import KEYS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedContext:
    """What a source may look at: the system (for --root) and explicit overrides from the command line."""

    system: System
    credentials_dir: Path | None = None
    ovf_env_file: Path | None = None
    # When an explicit file is given (plan --ovf-env), hardware probing is skipped.
    probe: bool = True


@dataclass(frozen=True)
class SeedSource:
    name: str
    read: Callable[[SeedContext], Mapping[str, str]]


@dataclass(frozen=True)
class Resolved:
    """Values by key and the source each one came from."""

    values: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)


def sources() -> list[SeedSource]:
    """The registry, in precedence order."""
    from firstboot.seeds import credentials, ovfenv

    return [credentials.SOURCE, ovfenv.SOURCE]


def merge(layers: list[tuple[str, Mapping[str, str]]]) -> Resolved:
    """Pure precedence: the first layer that gives a non-empty value for a key wins."""
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for name, layer in layers:
        for key, value in layer.items():
            if key not in KEYS:
                log.warning("%s: ignoring unknown key %s", name, key)
                continue
            if key not in values and value.strip():
                values[key] = value
                origin[key] = name
    return Resolved(values, origin)


def resolve(ctx: SeedContext) -> Resolved:
    """Read every source in order and merge them."""
    layers = []
    for source in sources():
        got = source.read(ctx)
        log.info("seed source %s gave %d key(s): %s", source.name, len(got), ", ".join(sorted(got)) or "-")
        layers.append((source.name, got))
    return merge(layers)

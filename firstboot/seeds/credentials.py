"""Seed source 1: systemd credentials ($CREDENTIALS_DIRECTORY, filled by ImportCredential=)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from firstboot.errors import FirstbootError
from firstboot.seeds import SeedContext, SeedSource
from gwcore.deploy import KEYS

MAX_BYTES = 64 * 1024


def read_dir(directory: Path) -> dict[str, str]:
    """Read files named by the setting keys; a trailing newline is dropped."""
    out: dict[str, str] = {}
    for key in KEYS:
        path = directory / key
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise FirstbootError(f"{path}: cannot read credential: {exc.strerror}") from None
        if len(raw) > MAX_BYTES:
            raise FirstbootError(f"{path}: credential is larger than {MAX_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FirstbootError(f"{path}: credential is not UTF-8 text") from None
        out[key] = text.removesuffix("\n").removesuffix("\r")
    return out


def _read(ctx: SeedContext) -> Mapping[str, str]:
    directory = ctx.credentials_dir
    if directory is None:
        env = os.environ.get("CREDENTIALS_DIRECTORY")
        directory = Path(env) if env else None
    if directory is None or not directory.is_dir():
        return {}
    return read_dir(directory)


SOURCE = SeedSource("credentials", _read)

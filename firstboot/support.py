"""`firstboot support-bundle`: journal + config tarball with secrets redacted, for support."""

from __future__ import annotations

import argparse
import io
import json
import re
import tarfile
import time
from pathlib import Path
from typing import Any

from firstboot.system import System, atomic_write
from gwcore.redact import mask_url_passwords, mask_url_value
from gwcore.safeload import loads_json, loads_yaml

OUT_DIR = "/var/lib/gateway-support"
# Config files worth shipping; identity private keys are never included.
FILES = (
    "/etc/os-release",
    "/etc/hostname",
    "/etc/gateway/gateway.yaml",
    "/etc/gateway/targets.yaml",
    "/etc/systemd/network/10-firstboot.network",
    "/etc/systemd/timesyncd.conf.d/50-firstboot.conf",
    "/var/lib/firstboot/state.json",
    "/var/lib/firstboot/last-error",
    "/var/lib/gateway/identity.json",
    "/run/gateway/status.json",
)
_SECRET_KEY = re.compile(r"(pass|secret|token|key|hash|authorization|cookie)", re.IGNORECASE)
_TOKEN = re.compile(r"GWJ1\.[A-Za-z0-9_-]+")
REDACTED = "<redacted>"


def redact_text(text: str) -> str:
    """Redact URL passwords (up to the last '@' of each URL) and join tokens in free text (pure)."""
    return _TOKEN.sub("GWJ1." + REDACTED, mask_url_passwords(text, REDACTED))


def redact_value(value: str) -> str:
    """Redact one structured value: a value that starts with a URL is that URL, spaces and all (pure)."""
    return _TOKEN.sub("GWJ1." + REDACTED, mask_url_value(value, REDACTED))


def redact(data: Any) -> Any:
    """Redact values under secret-looking keys, recursively (pure, like cloud-init redact_sensitive_keys)."""
    if isinstance(data, dict):
        return {
            k: REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, str):
        return redact_value(data)
    return data


def redact_file(name: str, raw: bytes) -> bytes:
    """Redact a config file by its format: YAML/JSON structurally, everything else as text."""
    text = raw.decode("utf-8", "replace")
    try:
        if name.endswith(".json"):
            return (json.dumps(redact(loads_json(text)), indent=2) + "\n").encode()
        if name.endswith((".yaml", ".yml")):
            import yaml  # here: the support bundle is rare, and PyYAML is slow to import

            return yaml.safe_dump(redact(loads_yaml(text)), sort_keys=False).encode()
    except (ValueError, RecursionError):  # ParseError; RecursionError: deeper than redact() goes
        pass
    return redact_text(text).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def create_bundle(system: System) -> Path:
    """Write the bundle (0600) under /var/lib/gateway-support and return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in FILES:
            try:
                raw = system.path(name).read_bytes()
            except OSError:
                continue
            _add(tar, "bundle" + name, redact_file(name, raw))
        for argv, out in (
            (["journalctl", "-b", "--no-pager", "-o", "short-iso", "-n", "20000"], "journal.txt"),
            (["systemctl", "--no-pager", "--failed"], "failed-units.txt"),
            (["systemctl", "--no-pager", "status", "gateway.service", "firstboot.service"], "units.txt"),
            (["networkctl", "--no-pager", "status"], "network.txt"),
        ):
            try:
                proc = system.run(argv, check=False, timeout=60)
            except Exception as exc:  # a missing tool must not stop the bundle
                text = f"{argv[0]}: {exc}\n"
            else:
                text = proc.stdout + proc.stderr
            _add(tar, f"bundle/{out}", redact_text(text).encode())
    path = system.path(OUT_DIR) / f"support-{stamp}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, buf.getvalue(), mode=0o600)
    return path


def cmd_support_bundle(args: argparse.Namespace) -> int:
    """Create a support bundle and print its path."""
    print(create_bundle(System.for_args(args.root)))
    return 0


def add_parser(sub: Any) -> None:
    """Register `firstboot support-bundle`."""
    p = sub.add_parser(
        "support-bundle", help="write logs + config (secrets redacted) to /var/lib/gateway-support"
    )
    p.set_defaults(func=cmd_support_bundle)

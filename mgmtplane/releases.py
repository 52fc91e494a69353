"""Releases on the plane: signed RAUC bundles the rollouts offer (docs/updates.md, "Publishing").

`mgmtplane release add BUNDLE` copies the bundle into `<state_dir>/releases/<version>.raucb`
(hashing it on the way), has the host's RAUC verify the copy's signature against the vendor's
keyring and read its signed manifest (version, compatible), and records it in `releases.json`.
The copy is checked, not the operator's file, so what is served is exactly what was verified.
`GET /v1/releases/{version}/bundle` serves it to gateways (their client certificate, admitted by
the registry) and to the admin token, with `Range: bytes=N-` for resumed downloads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gwcore.update import valid_version
from mgmtplane.errors import PlaneError
from mgmtplane.hub import peer_common_name
from mgmtplane.registry import read_json, state_lock, write_json_atomic

log = logging.getLogger(__name__)

RELEASES_DIR = "releases"
RELEASES_FILE = "releases.json"
DEFAULT_PRODUCT = "gateway"  # appliance.yaml's `name`: the `compatible` of our bundles
KEYRING_ENV = "APPLIANCE_SIGNING_KEYRING"  # the vendor's CA, as the build takes it
CHUNK = 1024 * 1024
RAUC_TIMEOUT = 120.0


@dataclass(frozen=True)
class Release:
    """One stored release."""

    version: str
    sha256: str
    size: int
    added_at: str  # ISO 8601, UTC
    urgent: bool
    downgrade: bool
    compatible: str

    def to_json(self) -> dict[str, Any]:
        """The release as stored in releases.json and shown by the API."""
        return asdict(self)


def bundle_path(state_dir: Path, version: str) -> Path:
    """Where a release's bundle is kept."""
    return state_dir / RELEASES_DIR / f"{version}.raucb"


def _release(path: Path, key: str, raw: Any) -> Release:
    if not isinstance(raw, dict):
        raise PlaneError(f"{path}: releases.{key}: expected an object")
    try:
        release = Release(
            version=str(raw["version"]),
            sha256=str(raw["sha256"]),
            size=int(raw["size"]),
            added_at=str(raw["added_at"]),
            urgent=bool(raw.get("urgent", False)),
            downgrade=bool(raw.get("downgrade", False)),
            compatible=str(raw["compatible"]),
        )
    except KeyError as exc:
        raise PlaneError(f"{path}: releases.{key}: missing field {exc.args[0]}") from None
    except (TypeError, ValueError):
        raise PlaneError(f"{path}: releases.{key}: size: expected an integer") from None
    if release.version != key or not valid_version(key):
        raise PlaneError(f"{path}: releases.{key}: not a valid version, or not the record's own")
    return release


def load_releases(state_dir: Path) -> dict[str, Release]:
    """Every stored release by version (a missing file: none)."""
    path = state_dir / RELEASES_FILE
    data = read_json(path, {"releases": {}})
    releases = data.get("releases") if isinstance(data, dict) else None
    if not isinstance(releases, dict):
        raise PlaneError(f"{path}: releases: expected an object")
    return {key: _release(path, key, raw) for key, raw in releases.items()}


def _save(state_dir: Path, releases: dict[str, Release]) -> None:
    data = {"releases": {v: r.to_json() for v, r in sorted(releases.items())}}
    write_json_atomic(state_dir / RELEASES_FILE, data)


def default_keyring() -> Path:
    """$APPLIANCE_SIGNING_KEYRING (a vendor's CA), else this machine's development build keyring.

    The build's rule (appliance/signature_check.py), written again here: the plane imports only
    gwcore, and the paths are the documented interface (docs/updates.md).
    """
    if os.environ.get(KEYRING_ENV):
        return Path(os.environ[KEYRING_ENV])
    cache = Path(os.environ.get("APPLIANCE_CACHE_DIR", "/var/cache/gateway-appliance"))
    return cache / "dev-signing" / "keyring.pem"


def _rauc_reason(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("rauc-Message")]
    return (lines[-1] if lines else "no output")[:300]


def read_manifest(bundle: Path, keyring: Path) -> tuple[str, str]:
    """(version, compatible) of a bundle whose signature RAUC verified against `keyring`."""
    argv = ["rauc", f"--keyring={keyring}", "info", "--output-format=json", str(bundle)]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=RAUC_TIMEOUT, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError:
        raise PlaneError("rauc not found: it verifies bundles (Debian package rauc)") from None
    except subprocess.TimeoutExpired:
        raise PlaneError(f"rauc info took over {RAUC_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        raise PlaneError(f"refused: {_rauc_reason(proc.stderr + proc.stdout)}")
    try:
        data = json.loads(proc.stdout)
        return str(data["version"]), str(data["compatible"])
    except (ValueError, KeyError, TypeError):
        raise PlaneError("refused: RAUC printed no readable manifest") from None


def _copy_hashing(source: Path, dest: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as src, dest.open("xb") as out:
        os.fchmod(out.fileno(), 0o644)
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def add_release(
    state_dir: Path,
    bundle: Path,
    *,
    keyring: Path,
    product: str = DEFAULT_PRODUCT,
    urgent: bool = False,
    downgrade: bool = False,
) -> Release:
    """Verify and store a bundle; PlaneError (naming the bundle) when it is refused."""
    if not bundle.is_file():
        raise PlaneError(f"{bundle}: not a file")
    if not keyring.is_file():
        raise PlaneError(f"{keyring}: no keyring to verify bundles against", hint="pass --keyring")
    directory = state_dir / RELEASES_DIR
    with state_lock(state_dir):
        directory.mkdir(mode=0o755, exist_ok=True)
    incoming = directory / f".incoming-{secrets.token_hex(6)}.raucb"
    try:
        try:
            sha, size = _copy_hashing(bundle, incoming)
        except OSError as exc:
            raise PlaneError(f"{bundle}: cannot read: {exc.strerror}") from None
        try:
            version, compatible = read_manifest(incoming, keyring)
        except PlaneError as exc:
            raise PlaneError(f"{bundle}: {exc.message}") from None
        if compatible != product:
            raise PlaneError(
                f"{bundle}: refused: the bundle is for {compatible!r}, this plane's product is {product!r}"
            )
        if not valid_version(version):
            raise PlaneError(f"{bundle}: refused: version {version!r} is not a release version")
        release = Release(version, sha, size, _now(), urgent, downgrade, compatible)
        with state_lock(state_dir):
            releases = load_releases(state_dir)
            old = releases.get(version)
            if old is not None and old.sha256 != sha:
                raise PlaneError(
                    f"{bundle}: release {version} exists with other bytes (sha256 {old.sha256[:16]}…)",
                    hint=f"mgmtplane release remove {version} first",
                )
            if old is not None:
                release = Release(version, sha, size, old.added_at, urgent, downgrade, compatible)
            os.replace(incoming, bundle_path(state_dir, version))
            releases[version] = release
            _save(state_dir, releases)
    finally:
        incoming.unlink(missing_ok=True)
    log.info("release %s added (%d bytes, sha256 %s)", release.version, release.size, release.sha256)
    return release


def remove_release(state_dir: Path, version: str, in_use: Callable[[str], str | None]) -> Release:
    """Forget a release and delete its bundle; refused while `in_use(version)` names a rollout."""
    with state_lock(state_dir):
        releases = load_releases(state_dir)
        release = releases.pop(version, None)
        if release is None:
            raise PlaneError(f"no release {version}", hint="see 'mgmtplane release list'")
        user = in_use(version)
        if user is not None:
            raise PlaneError(
                f"release {version} is the target of {user}", hint="halt it or start another first"
            )
        _save(state_dir, releases)
        bundle_path(state_dir, version).unlink(missing_ok=True)
    return release


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


# --- the bundle route -------------------------------------------------------------------------------

Admit = Callable[[web.Request, str], Awaitable[tuple[str, str] | None]]


def bundle_route(state_dir: Path, admin_ok: Callable[[web.Request], bool], admit: Admit) -> Any:
    """GET /v1/releases/{version}/bundle: for a gateway's admitted client certificate or the admin
    token; `Range: bytes=N-` gives 206 (aiohttp's FileResponse streams the file from disk)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if not admin_ok(request):
            transport = request.transport
            gateway_id = peer_common_name(transport.get_extra_info("ssl_object") if transport else None)
            if gateway_id is None:
                return _error(401, "unauthorized", "needs a gateway client certificate or the admin token")
            refused = await admit(request, gateway_id)
            if refused is not None:
                log.warning("gateway %s: bundle download refused: %s", gateway_id, refused[0])
                return _error(403, *refused)
        version = request.match_info["version"]
        if not valid_version(version):
            return _error(404, "release-unknown", "no such release")
        release = (await asyncio.to_thread(load_releases, state_dir)).get(version)
        path = bundle_path(state_dir, version)
        if release is None or not path.is_file():
            return _error(404, "release-unknown", f"no release {version}")
        response = web.FileResponse(path, chunk_size=256 * 1024)
        response.headers["Content-Type"] = "application/octet-stream"
        response.headers["X-Release-Sha256"] = release.sha256
        return response

    return handler


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)

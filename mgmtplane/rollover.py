"""The plane's CA set and its rollover: add a new CA, sign with it, retire the old one.

Outside a rollover there is one CA (`ca.pem`, `ca-key.pem`): it issues the server certificate,
join tokens pin it, and it signs every gateway certificate. A rollover goes through phases, each a
command (`mgmtplane ca rollover start|reissue|retire|cancel`), each committed by one atomic write
of `ca-rollover.json`:

    phase     trusted (client certs; pushed)   signs renewals   server cert, token pin, registration
    (none)    old                              old              old
    added     old + new (cross-cert old->new)  old              old
    reissue   old + new                        new              old
    retire    new                              new              new

`start` writes the new CA (`ca-next.pem`, `ca-next-key.pem`) and its cross-certificate
(`ca-next-cross.pem`, the new CA's name and key signed by the old one) before the phase file, so
that a crash leaves either no rollover or a complete one. `retire` writes the phase `retiring`
first (from then on the new CA is the only one, wherever its files are), then copies the new CA
over `ca.pem` and `ca-key.pem`, removes the `ca-next*` files and finally the phase file: every
crash point loads the same CA set. Readers hold the state lock, as writers do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gwcore.atomic import write_atomic
from mgmtplane.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    PlaneCA,
    load_ca_files,
    load_or_create_ca,
    new_ca,
    write_ca,
)
from mgmtplane.errors import PlaneError
from mgmtplane.registry import read_json, state_lock, write_json_atomic

ROLLOVER_FILE = "ca-rollover.json"
NEXT_CERT = "ca-next.pem"
NEXT_KEY = "ca-next-key.pem"
NEXT_CROSS = "ca-next-cross.pem"

NONE = "none"
ADDED = "added"
REISSUE = "reissue"
RETIRING = "retiring"  # transient: retire() is moving the new CA into place
PHASES = (NONE, ADDED, REISSUE, RETIRING)


@dataclass(frozen=True)
class CASet:
    """The plane's CAs and their roles in the current phase."""

    phase: str
    server: PlaneCA  # issues the server certificate; join tokens pin it; registrations are signed by it
    signing: PlaneCA  # signs renewed gateway certificates
    trusted: tuple[PlaneCA, ...]  # client certificates from these are accepted; pushed to gateways
    proofs: tuple[bytes, ...]  # cross-certificates (PEM) that vouch for trusted CAs gateways may not know
    started_at: str = ""

    @property
    def bundle_pem(self) -> bytes:
        """Every trusted CA certificate, the server's first (GET /v1/ca; the TLS verify locations)."""
        ordered = [self.server, *[c for c in self.trusted if c is not self.server]]
        return b"".join(c.cert_pem for c in ordered)

    def key(self) -> tuple[object, ...]:
        """What identifies this set (to see whether it changed)."""
        return (
            self.phase,
            *(c.spki_hash for c in self.trusted),
            self.signing.spki_hash,
            self.server.spki_hash,
        )

    def issuer_of(self, cert: x509.Certificate) -> PlaneCA | None:
        """The trusted CA that signed `cert`, or None."""
        for ca in self.trusted:
            try:
                cert.verify_directly_issued_by(ca.cert)
            except Exception:  # noqa: S112 - any failure means "not this one"
                continue
            return ca
        return None


def _phase(state_dir: Path) -> tuple[str, str]:
    path = state_dir / ROLLOVER_FILE
    data = read_json(path, {"phase": NONE})
    phase = data.get("phase") if isinstance(data, dict) else None
    if phase not in PHASES:
        raise PlaneError(f"{path}: phase: expected one of {', '.join(PHASES[1:])}, got {phase!r}")
    return str(phase), str(data.get("started_at", ""))


def _next(state_dir: Path) -> tuple[PlaneCA, bytes]:
    ca = load_ca_files(state_dir / NEXT_CERT, state_dir / NEXT_KEY)
    try:
        cross = (state_dir / NEXT_CROSS).read_bytes()
        x509.load_pem_x509_certificate(cross)
    except (OSError, ValueError) as exc:
        raise PlaneError(f"{state_dir / NEXT_CROSS}: missing or not a certificate") from exc
    return ca, cross


def _load_unlocked(state_dir: Path) -> CASet:
    phase, started = _phase(state_dir)
    if phase == NONE:
        old = load_ca_files(state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE)
        return CASet(NONE, old, old, (old,), ())
    if phase == RETIRING:
        if (state_dir / NEXT_CERT).exists():
            new, _cross = _next(state_dir)
        else:
            new = load_ca_files(state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE)
        return CASet(RETIRING, new, new, (new,), (), started)
    old = load_ca_files(state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE)
    new, cross = _next(state_dir)
    signing = old if phase == ADDED else new
    return CASet(phase, old, signing, (old, new), (cross,), started)


def load_ca_set(state_dir: Path, create: bool = True) -> CASet:
    """The CA set of the state dir (creating the first CA on first use, if `create`)."""
    if not (state_dir / CA_CERT_FILE).exists() and create:
        # Only when missing: during retire, ca.pem and ca-key.pem may be out of step for a moment
        # (the phase file says to read the new CA from ca-next*), which loading them would refuse.
        load_or_create_ca(state_dir)  # takes the lock itself and checks again
    elif not (state_dir / CA_CERT_FILE).exists():
        raise PlaneError(
            f"{state_dir}: no plane CA here", hint="run 'mgmtplane serve --state-dir' once to create it"
        )
    with state_lock(state_dir):
        return _load_unlocked(state_dir)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def start(state_dir: Path) -> CASet:
    """Phase `added`: a new CA, trusted beside the old one and vouched for by it."""
    load_ca_set(state_dir)  # the first CA, if there is none yet
    with state_lock(state_dir):
        current = _load_unlocked(state_dir)
        if current.phase != NONE:
            raise PlaneError(
                f"a CA rollover is already in phase {current.phase}", hint="see 'mgmtplane ca status'"
            )
        new = new_ca()
        write_ca(new, state_dir / NEXT_CERT, state_dir / NEXT_KEY)
        write_atomic(state_dir / NEXT_CROSS, current.server.cross_sign(new), mode=0o644)
        write_json_atomic(state_dir / ROLLOVER_FILE, {"phase": ADDED, "started_at": _now_iso()})
        return _load_unlocked(state_dir)


def reissue(state_dir: Path) -> CASet:
    """Phase `reissue`: renewals are signed by the new CA (gateways are asked to renew soon)."""
    with state_lock(state_dir):
        current = _load_unlocked(state_dir)
        if current.phase != ADDED:
            raise PlaneError(f"reissue needs phase {ADDED}, the rollover is in phase {current.phase}",
                             hint="start one with 'mgmtplane ca rollover start'")  # fmt: skip
        write_json_atomic(state_dir / ROLLOVER_FILE, {"phase": REISSUE, "started_at": current.started_at})
        return _load_unlocked(state_dir)


def retire(state_dir: Path) -> CASet:
    """The end: the new CA is the only one; the old one is deleted (its key with it)."""
    with state_lock(state_dir):
        current = _load_unlocked(state_dir)
        if current.phase not in (REISSUE, RETIRING):
            raise PlaneError(f"retire needs phase {REISSUE}, the rollover is in phase {current.phase}")
        if current.phase == REISSUE:
            write_json_atomic(
                state_dir / ROLLOVER_FILE, {"phase": RETIRING, "started_at": current.started_at}
            )
        new = current.signing
        write_ca(new, state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE)
        for name in (NEXT_CROSS, NEXT_CERT, NEXT_KEY, ROLLOVER_FILE):
            with contextlib.suppress(FileNotFoundError):
                (state_dir / name).unlink()
        return _load_unlocked(state_dir)


def cancel(state_dir: Path) -> CASet:
    """Undo `start` (only before `reissue`: after it, gateways may hold certificates of the new CA)."""
    with state_lock(state_dir):
        current = _load_unlocked(state_dir)
        if current.phase != ADDED:
            raise PlaneError(f"cancel works in phase {ADDED} only; the rollover is in phase {current.phase}")
        (state_dir / ROLLOVER_FILE).unlink()
        for name in (NEXT_CROSS, NEXT_CERT, NEXT_KEY):
            with contextlib.suppress(FileNotFoundError):
                (state_dir / name).unlink()
        return _load_unlocked(state_dir)

"""Single-use, expiring join tokens: made by `mgmtplane token create`, redeemed by POST /v1/register."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgmtplane.errors import PlaneError
from mgmtplane.registry import read_json, state_lock, write_json_atomic

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
# Used and expired records are kept this long so a late retry hears "used"/"expired", not "unknown".
RETENTION_SECONDS = 7 * 86400
MAX_TTL_SECONDS = 30 * 86400

_TTL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenError(PlaneError):
    """A join token that cannot be redeemed; `code` is the stable wire code, `status` the HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def parse_ttl(text: str) -> int:
    """Seconds from a TTL like `90`, `30s`, `15m`, `1h` or `2d`; raises PlaneError."""
    match = _TTL_RE.match(text)
    if not match:
        raise PlaneError(f"--ttl: {text!r} is not a duration", hint="use e.g. 30s, 15m, 1h or 2d")
    seconds = float(match.group(1)) * _TTL_UNITS[match.group(2)]
    if seconds < 1:
        raise PlaneError(f"--ttl: {text!r} is shorter than one second")
    if seconds > MAX_TTL_SECONDS:
        raise PlaneError(f"--ttl: {text!r} is longer than 30 days")
    return int(seconds)


def secret_id(secret: str) -> str:
    """The stored key of a secret: its SHA-256 (the secret itself is never written to disk)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored: hashed secret, times, and who redeemed it."""

    token_id: str  # sha256 hex of the secret
    created_at: int
    expires_at: int
    used_at: int | None = None
    gateway_id: str | None = None
    key_hash: str | None = None  # SPKI hash of the key that redeemed it
    # Made for an existing gateway (`token create --gateway ID`): it enrols that id again, e.g.
    # after a revocation or an outage past the certificate's expiry.
    for_gateway: str | None = None
    site: str | None = None  # the site the gateway enrols into (docs/sites.md)

    def status(self, now: float) -> str:
        """`used`, `expired` or `valid`."""
        if self.used_at is not None:
            return "used"
        return "expired" if now >= self.expires_at else "valid"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (without its own key)."""
        return {
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "used_at": self.used_at,
            "gateway_id": self.gateway_id,
            "key_hash": self.key_hash,
            "for_gateway": self.for_gateway,
            "site": self.site,
        }


@dataclass(frozen=True)
class Redemption:
    """The result of redeeming a token: the gateway id to sign for; `replay` if it was already issued."""

    gateway_id: str
    token_id: str
    replay: bool
    site: str | None = None


class TokenStore:
    """Hashed tokens in `<state_dir>/tokens.json`, read and written under the state dir lock."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.path = state_dir / TOKENS_FILE
        self._clock = clock

    def _load(self) -> dict[str, TokenRecord]:
        data = read_json(self.path, {"tokens": {}})
        raw_tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(raw_tokens, dict):
            raise PlaneError(f"{self.path}: tokens: expected an object")
        records: dict[str, TokenRecord] = {}
        for token_id, raw in raw_tokens.items():
            try:
                records[token_id] = TokenRecord(
                    token_id=token_id,
                    created_at=int(raw["created_at"]),
                    expires_at=int(raw["expires_at"]),
                    used_at=None if raw.get("used_at") is None else int(raw["used_at"]),
                    gateway_id=raw.get("gateway_id"),
                    key_hash=raw.get("key_hash"),
                    for_gateway=raw.get("for_gateway"),
                    site=raw.get("site"),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise PlaneError(f"{self.path}: tokens.{token_id[:12]}: malformed record ({exc})") from exc
        return records

    def _save(self, records: dict[str, TokenRecord]) -> None:
        # 0600: the hashes alone do not grant anything, but nobody else needs to read them.
        write_json_atomic(self.path, {"tokens": {k: r.to_json() for k, r in records.items()}}, mode=0o600)

    def create(
        self, ttl_seconds: int, for_gateway: str | None = None, site: str | None = None
    ) -> tuple[str, int]:
        """Mint a token secret valid for `ttl_seconds`, for a new gateway or to enrol `for_gateway`
        again, into `site` if given; returns (secret, expires_at unix time)."""
        now = self._clock()
        secret = secrets.token_urlsafe(32)
        # Round the expiry up so a token never lives shorter than asked.
        expires_at = int(now) + ttl_seconds + (1 if now % 1 else 0)
        token_id = secret_id(secret)
        with state_lock(self.state_dir):
            records = {k: r for k, r in self._load().items() if r.expires_at + RETENTION_SECONDS > now}
            records[token_id] = TokenRecord(
                token_id=token_id,
                created_at=int(now),
                expires_at=expires_at,
                for_gateway=for_gateway,
                site=site,
            )
            self._save(records)
        for_whom = f" for gateway {for_gateway}" if for_gateway else ""
        log.info("created join token %s%s, expires at %s", token_id[:12], for_whom, expires_at)
        return secret, expires_at

    def peek(self, secret: str) -> TokenRecord | None:
        """The stored record of a token secret, or None (nothing is consumed)."""
        return self._load().get(secret_id(secret))

    def redeem(self, secret: str, key_hash: str, new_gateway_id: str) -> Redemption:
        """Consume a token once for the key `key_hash`; raises TokenError (unknown, used or expired).

        The gateway id is `new_gateway_id`, or the one the token was made for. The same key may
        redeem its own token again: a gateway that lost power after the plane signed but before it
        stored the certificate can then finish without a new token.
        """
        token_id = secret_id(secret)
        with state_lock(self.state_dir):
            records = self._load()
            record = records.get(token_id)
            if record is None:
                raise TokenError("token-unknown", "join token is unknown to this plane", 401)
            now = self._clock()
            status = record.status(now)
            if status == "used":
                if record.key_hash == key_hash and record.gateway_id:
                    return Redemption(record.gateway_id, token_id, replay=True, site=record.site)
                raise TokenError("token-used", "join token was already used", 403)
            if status == "expired":
                raise TokenError("token-expired", "join token has expired", 410)
            gateway_id = record.for_gateway or new_gateway_id
            records[token_id] = TokenRecord(
                token_id=token_id,
                created_at=record.created_at,
                expires_at=record.expires_at,
                used_at=int(now),
                gateway_id=gateway_id,
                key_hash=key_hash,
                for_gateway=record.for_gateway,
                site=record.site,
            )
            self._save(records)
        return Redemption(gateway_id=gateway_id, token_id=token_id, replay=False, site=record.site)

    def all(self) -> list[TokenRecord]:
        """Every stored token record, newest first."""
        return sorted(self._load().values(), key=lambda r: (-r.created_at, r.token_id))

"""The gateway registry and the state-dir helpers (atomic writes)."""

from __future__ import annotations

import os
import stat

import pytest

from gwcore.atomic import write_atomic
from mgmtplane.cli import parse_listen
from mgmtplane.errors import PlaneError
from mgmtplane.registry import GatewayRecord, Registry


def _record(gateway_id: str, at: str) -> GatewayRecord:
    return GatewayRecord(gateway_id, "host-" + gateway_id, at, "abc", "sha256:00", "tok")


def test_registry_persists_and_replaces(tmp_path) -> None:
    Registry(tmp_path).add(_record("b", "2026-01-02T00:00:00+00:00"))
    Registry(tmp_path).add(_record("a", "2026-01-01T00:00:00+00:00"))
    Registry(tmp_path).add(GatewayRecord("b", "renamed", "2026-01-02T00:00:00+00:00", "def", "sha256:11"))
    registry = Registry(tmp_path)
    assert [r.gateway_id for r in registry.all()] == ["a", "b"]
    got = registry.get("b")
    assert got is not None and got.hostname == "renamed" and got.cert_serial == "def"
    assert registry.get("missing") is None


def test_registry_corrupt_file_named(tmp_path) -> None:
    (tmp_path / "gateways.json").write_text('{"gateways": {"x": {"gateway_id": "x"}}}')
    with pytest.raises(PlaneError, match=r"gateways\.json: gateways\.x: missing field hostname"):
        Registry(tmp_path).all()


def test_write_atomic_mode_and_no_temp_left(tmp_path) -> None:
    target = tmp_path / "secret"
    write_atomic(target, b"one", mode=0o600)
    write_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secret"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("plane.local:443", ("plane.local", 443)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8443", "host:", "host:99999", "::1:8443", "host:port"])
def test_parse_listen_errors(text: str) -> None:
    with pytest.raises(PlaneError, match="--listen"):
        parse_listen(text)

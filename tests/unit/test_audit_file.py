"""The audit log file: one write per loop turn, rotation without loss, write errors counted, not raised."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.filter import audit, auditfile
from gateway.filter.auditfile import AuditFile
from gateway.filter.metadata_filter import FilterRequest, FilterResponse, check_request, filter_response
from gateway.filter.policy import load_policies

pytestmark = pytest.mark.unit

POLICY = """\
kind: http
rules:
  - name: things
    path: /things
    json:
      - "[].id"
  - name: raw
    path: /raw
    passthrough: true
"""
LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z filter (allowed|denied|request) .*\n")


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every os.write the audit writer makes: (fd, bytes written), the real write still done."""
    calls: list[tuple[int, int]] = []
    real = os.write

    def counted(fd: int, data: Any) -> int:
        n = real(fd, data)
        calls.append((fd, n))
        return n

    monkeypatch.setattr(auditfile.os, "write", counted)
    return calls


@pytest.fixture
def to_file() -> Iterator[None]:
    yield
    audit.use_file(None)


def test_lines_of_one_loop_turn_are_one_write(tmp_path: Path, writes: list[tuple[int, int]]) -> None:
    async def main() -> AuditFile:
        out = AuditFile(tmp_path / "audit.log", asyncio.get_running_loop())
        for i in range(500):
            out.write(f"line {i}\n")
        assert not (tmp_path / "audit.log").exists()  # nothing before the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        out.write("next turn\n")
        await asyncio.sleep(0)
        out.close()
        return out

    out = asyncio.run(main())
    assert len(writes) == 2
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert lines == [f"line {i}" for i in range(500)] + ["next turn"]
    assert (out.written, out.dropped) == (501, 0)
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o640


def test_a_big_turn_is_written_in_bounded_batches(tmp_path: Path, writes: list[tuple[int, int]]) -> None:
    async def main() -> None:
        out = AuditFile(tmp_path / "audit.log", asyncio.get_running_loop(), flush_bytes=1000)
        for i in range(100):
            out.write(f"{i:09d}\n")  # 10 bytes: 1000 bytes every 100 lines
        for i in range(100, 150):
            out.write(f"{i:09d}\n")
        await asyncio.sleep(0)
        out.close()

    asyncio.run(main())
    assert [n for _, n in writes] == [1000, 500]
    assert (tmp_path / "audit.log").read_text().splitlines() == [f"{i:09d}" for i in range(150)]


def test_rotation_keeps_n_files_and_loses_no_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("from an earlier run\n")

    async def main() -> None:
        out = AuditFile(path, asyncio.get_running_loop(), max_bytes=1000, keep=3)
        for i in range(600):  # 6,000 bytes: six rotations of 1000 bytes at a 10-byte line per turn
            out.write(f"{i:09d}\n")
            if i % 7 == 0:
                await asyncio.sleep(0)
        out.close()

    asyncio.run(main())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.log",
        "audit.log.1",
        "audit.log.2",
        "audit.log.3",
    ]
    kept = [
        line
        for name in ("audit.log.3", "audit.log.2", "audit.log.1", "audit.log")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    # The oldest files were replaced; what is kept is a contiguous, ordered tail with no gap.
    numbers = [int(line) for line in kept]
    assert numbers == list(range(numbers[0], 600))
    assert all((tmp_path / f"audit.log.{n}").stat().st_size >= 1000 for n in (1, 2, 3))
    assert all((tmp_path / f"audit.log.{n}").stat().st_size < 1000 + 80 for n in (1, 2, 3))


def test_a_failing_write_is_counted_warned_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.filter.auditfile")
    monkeypatch.setattr(auditfile, "RETRY_AFTER", 0.0)

    async def main() -> AuditFile:
        out = AuditFile(Path("/dev/full"), asyncio.get_running_loop())
        for turn in range(5):
            for i in range(10):
                out.write(f"{turn} {i}\n")
            await asyncio.sleep(0)
        out.close()
        return out

    out = asyncio.run(main())
    assert (out.written, out.dropped) == (0, 50)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot write the audit log /dev/full" in warnings[0]


def test_a_missing_directory_drops_until_it_is_there_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a read-only directory: CI runs as root, which writes there anyway. A file where the
    # directory should be fails for root too (ENOTDIR), and is then replaced by the directory.
    caplog.set_level(logging.WARNING, logger="gateway.filter.auditfile")
    monkeypatch.setattr(auditfile, "RETRY_AFTER", 0.0)
    logs = tmp_path / "logs"
    logs.write_text("not a directory")

    async def main() -> AuditFile:
        out = AuditFile(logs / "audit.log", asyncio.get_running_loop())
        for i in range(3):
            out.write(f"lost {i}\n")
            await asyncio.sleep(0)
        logs.unlink()
        logs.mkdir()
        out.write("kept\n")
        await asyncio.sleep(0)
        out.close()
        return out

    out = asyncio.run(main())
    assert (out.written, out.dropped) == (1, 3)
    assert (logs / "audit.log").read_text() == "kept\n"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "Not a directory" in messages[0]
    assert "written again; 3 lines dropped" in messages[1]


def test_allowed_decisions_leave_the_journal_when_the_file_is_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, to_file: None
) -> None:
    (tmp_path / "p.yaml").write_text(textwrap.dedent(POLICY))
    policies = load_policies([tmp_path])
    ok = FilterRequest("GET", "/things?owner=CANARY-QUERY", {})
    body = b'[{"id": "t1", "secret": "CANARY-VALUE"}]'
    allowed = filter_response(
        policies, "http", ok, FilterResponse(200, {"content-type": "application/json"}, body)
    )
    raw = FilterRequest("GET", "/raw", {})
    bad = FilterRequest("DELETE", "/things\nfilter allowed target=forged", {})
    caplog.set_level(logging.INFO, logger="gateway.filter.audit")

    def decide() -> None:
        audit.log_decision("lab1", "http", ok, check_request(policies, "http", ok))
        audit.log_decision("lab1", "http", ok, allowed)
        audit.log_decision("lab1", "http", raw, check_request(policies, "http", raw))
        audit.log_decision("lab1", "http", bad, check_request(policies, "http", bad))

    decide()  # no file: logging, as before
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]
    caplog.clear()

    lines: list[str] = []
    audit.use_file(lines.append)
    decide()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # only the denial
    assert all(LINE.fullmatch(line) for line in lines)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "filter allowed target=lab1 kind=http method=GET path=/things rule=things status=200 kept=1"
        " removed=1\n",
        "filter request target=lab1 kind=http method=GET path=/raw rule=raw passthrough=True\n",
        "filter denied target=lab1 kind=http method=DELETE path=/things\\nfilter allowed target=forged"
        " rule=- reason=request path has characters a server may interpret differently\n",
    ]
    assert "CANARY" not in "".join(lines)


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert audit.timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert audit.timestamp(1_800_000_000.9996) == "2027-01-15T08:00:00.999Z"
    assert audit.timestamp(1_800_000_001.25) == "2027-01-15T08:00:01.250Z"


@pytest.mark.parametrize(
    ("yaml_value", "problem"),
    [
        ("audit_log: var/log/a.log", "audit_log: expected an absolute file path, or null for none"),
        ("audit_log: 3", "audit_log: expected an absolute file path, or null for none"),
        ("audit_log: /var/log/gateway/", "audit_log: expected an absolute file path, or null for none"),
        ("audit_log_max_mib: 0", "audit_log_max_mib: expected an integer from 1 to 4096, got 0"),
        ("audit_log_keep: true", "audit_log_keep: expected an integer from 1 to 20, got true"),
        ("audit_log_keep: 21", "audit_log_keep: expected an integer from 1 to 20, got 21"),
    ],
)
def test_bad_audit_settings_are_one_line_errors(yaml_value: str, problem: str) -> None:
    key, value = yaml_value.split(": ", 1)
    data = {"plane_url": "https://plane.example", key: yaml.safe_load(value)}
    with pytest.raises(GatewayError) as err:
        parse_config(data, "/etc/gateway/gateway.yaml")
    assert str(err.value).splitlines()[0] == f"/etc/gateway/gateway.yaml: {problem}"


def test_the_audit_log_defaults_to_the_units_logs_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGS_DIRECTORY", "/var/log/gateway")
    config = parse_config({"plane_url": "https://plane.example"}, "g.yaml")
    assert config.audit_log == Path("/var/log/gateway/audit.log")
    assert parse_config({"plane_url": "https://plane.example", "audit_log": None}, "g.yaml").audit_log is None
    monkeypatch.delenv("LOGS_DIRECTORY")
    assert parse_config({"plane_url": "https://plane.example"}, "g.yaml").audit_log is None

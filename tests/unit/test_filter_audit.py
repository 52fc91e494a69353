"""The audit log: target, rule and counts for every decision, never a removed value."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from gateway.filter.audit import log_decision
from gateway.filter.metadata_filter import (
    Allowed,
    FilterRequest,
    FilterResponse,
    check_request,
    filter_response,
    header_value,
)
from gateway.filter.policy import load_policies

POLICY = """\
kind: http
rules:
  - name: things
    path: /things
    json:
      - "[].id"
"""


def test_every_decision_is_logged_without_removed_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "p.yaml").write_text(textwrap.dedent(POLICY))
    policies = load_policies([tmp_path])
    caplog.set_level(logging.DEBUG, logger="gateway.filter.audit")
    req = FilterRequest("GET", "/things?owner=CANARY-QUERY", {"Authorization": "CANARY-AUTH"})
    log_decision("lab1", "http", req, check_request(policies, "http", req))
    body = b'[{"id": "t1", "secret": "CANARY-VALUE"}, {"id": "t2", "CANARY-KEY": 1}]'
    out = filter_response(
        policies, "http", req, FilterResponse(200, {"content-type": "application/json"}, body)
    )
    assert isinstance(out, Allowed) and (out.kept, out.removed) == (2, 2)
    assert header_value(out) == "things; removed=2"
    log_decision("lab1", "http", req, out)
    denied = FilterRequest("DELETE", "/things", {})
    log_decision("lab1", "http", denied, check_request(policies, "http", denied))
    text = caplog.text
    assert "CANARY" not in text
    msgs = [r.getMessage() for r in caplog.records]
    assert (
        msgs[0]
        == "filter request target=lab1 kind=http method=GET path=/things rule=things passthrough=False"
    )
    assert msgs[1] == (
        "filter allowed target=lab1 kind=http method=GET path=/things rule=things status=200 kept=2 removed=2"
    )
    assert msgs[2].startswith(
        "filter denied target=lab1 kind=http method=DELETE path=/things rule=- reason=no rule"
    )
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.INFO, logging.WARNING]

"""mgmtplane forward's pure parts: which Host names it serves, which headers it sends, its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from mgmtplane.errors import PlaneError
from mgmtplane.forward import Forward, ForwardConfig, _local_host, build_config, resolve_gateway
from mgmtplane.registry import GatewayRecord, Registry


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8080", True),
        ("127.0.0.2", True),
        ("localhost:9443", True),
        ("[::1]:9443", True),
        ("[::1]", True),
        ("attacker.example", False),
        ("attacker.example:8080", False),
        ("127.0.0.1.attacker.example:80", False),
        ("10.0.0.1:80", False),
        ("", False),
    ],
)
def test_only_loopback_host_names_are_served(host: str, ok: bool) -> None:
    assert _local_host(host) is ok


CONFIG = ForwardConfig("https://plane:8443", Path("/ca.pem"), "ADMIN-TOKEN", "gw-id", "t1", "127.0.0.1", 0)


def test_the_callers_credentials_become_x_target_headers_and_the_admin_token_is_the_planes() -> None:
    headers = CIMultiDict(
        [
            ("Host", "127.0.0.1:9443"),
            ("Authorization", "Basic dXNlcjpwdw=="),
            ("Cookie", 'vmware_soap_session="abc"'),
            ("X-Target-Authorization", "Bearer smuggled"),
            ("X-Target-Cookie", "smuggled=1"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Expect", "100-continue"),
            ("SOAPAction", "urn:vim25/6.5"),
        ]
    )
    request = make_mocked_request("POST", "/sdk", headers=headers)
    out = Forward(CONFIG, session=None)._headers(request)  # type: ignore[arg-type]
    assert out[0] == ("Authorization", "Bearer ADMIN-TOKEN")
    assert out[1:] == [
        ("X-Target-Authorization", "Basic dXNlcjpwdw=="),
        ("X-Target-Cookie", 'vmware_soap_session="abc"'),
        ("SOAPAction", "urn:vim25/6.5"),
    ]


def _state(tmp_path: Path) -> Path:
    (tmp_path / "plane.json").write_text(json.dumps({"url": "https://127.0.0.1:8443"}))
    (tmp_path / "ca.pem").write_text("not read here")
    (tmp_path / "admin-token").write_text("tok\n")
    return tmp_path


def test_config_comes_from_the_state_dir(tmp_path: Path) -> None:
    config = build_config(_state(tmp_path), "gw-1", "vc", ("127.0.0.1", 0))
    assert (config.plane_url, config.admin_token, config.ca_file) == (
        "https://127.0.0.1:8443",
        "tok",
        tmp_path / "ca.pem",
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"listen": ("0.0.0.0", 0)}, "is not a loopback address"),
        ({"listen": ("192.168.1.5", 0)}, "is not a loopback address"),
        ({"target": "a/b"}, "is not a target name"),
        ({"url": "http://plane"}, "must be an https:// URL"),
        ({"token_file": Path("/nonexistent/t")}, "/nonexistent/t: no admin token"),
        ({"ca_file": Path("/nonexistent/ca.pem")}, "plane CA certificate not found"),
    ],
)
def test_config_errors_name_the_flag_or_file(tmp_path: Path, change: dict[str, object], words: str) -> None:
    kwargs: dict[str, object] = {"listen": ("127.0.0.1", 0), "target": "vc"}
    kwargs.update(change)
    listen, target = kwargs.pop("listen"), kwargs.pop("target")
    with pytest.raises(PlaneError, match=words):
        build_config(_state(tmp_path), "gw-1", target, listen, **kwargs)  # type: ignore[arg-type]


def test_an_empty_or_multiline_token_file_is_refused(tmp_path: Path) -> None:
    state = _state(tmp_path)
    (state / "admin-token").write_text("two\nlines\n")
    with pytest.raises(PlaneError, match="not a bearer token"):
        build_config(state, "gw-1", "vc", ("127.0.0.1", 0))


def _register(state: Path, gateway_id: str, hostname: str) -> None:
    Registry(state).add(GatewayRecord(gateway_id, hostname, "2026-01-01T00:00:00Z", "01", "sha256:00"))


def test_a_gateway_is_named_by_id_or_by_its_unique_hostname(tmp_path: Path) -> None:
    state = _state(tmp_path)
    assert resolve_gateway(state, "any-id") == "any-id"  # no registry here: the plane judges the id
    _register(state, "id-1", "gw-a")
    _register(state, "id-2", "gw-b")
    _register(state, "id-3", "gw-b")
    assert resolve_gateway(state, "id-2") == "id-2"
    assert resolve_gateway(state, "gw-a") == "id-1"
    with pytest.raises(PlaneError, match="names 2 gateways"):
        resolve_gateway(state, "gw-b")
    with pytest.raises(PlaneError, match="neither a registered gateway id nor a hostname"):
        resolve_gateway(state, "gw-c")


def test_a_corrupt_registry_is_a_one_line_error(tmp_path: Path) -> None:
    state = _state(tmp_path)
    (state / "gateways.json").write_text("{not json")
    with pytest.raises(PlaneError, match="gateways.json: invalid JSON"):
        resolve_gateway(state, "gw-a")

"""gateway.yaml: the keys firstboot writes, defaults for the rest, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from yarl import URL

from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError

FIRSTBOOT = """\
plane_url: https://plane.example.com:8443
state_dir: /var/lib/gateway
proxy_url: http://user:pass@proxy:3128
targets: /etc/gateway/targets.yaml
policy_dirs: [/usr/share/gateway/policies, /etc/gateway/policies.d]
"""


def test_firstboot_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(FIRSTBOOT)
    cfg = load_config(path)
    assert cfg.plane_url == URL("https://plane.example.com:8443")
    assert cfg.proxy_url is not None and cfg.proxy_url.user == "user"
    assert cfg.policy_dirs == (Path("/usr/share/gateway/policies"), Path("/etc/gateway/policies.d"))
    assert cfg.heartbeat_interval == 10.0 and cfg.max_streams == 1024


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("plane_url: https://p\nproxy_url: null\n")
    cfg = load_config(path)
    assert cfg.state_dir == Path("/var/lib/gateway") and cfg.proxy_url is None
    assert cfg.policy_dirs[0].name == "policies" and cfg.policy_dirs[1] == Path("/etc/gateway/policies.d")
    with pytest.raises(AttributeError):
        cfg.state_dir = Path("/x")  # type: ignore[misc]
    assert isinstance(cfg, GatewayConfig)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("state_dir: /x", r"plane_url: missing \(required\)"),
        ("plane_url: http://p", "plane_url: expected a https:// URL"),
        ("plane_url: https://p\nproxy_url: socks5://x", "proxy_url: expected a http:// URL"),
        ("plane_url: https://p\nstate_dir: relative", "state_dir: expected an absolute path"),
        ("plane_url: https://p\npolicy_dirs: []", "policy_dirs: expected a non-empty list"),
        ("plane_url: https://p\npolicy_dirs: [/a, b]", r"policy_dirs\[1\]: expected an absolute path"),
        ("plane_url: https://p\nheartbeat_interval: 0", "heartbeat_interval: expected a number"),
        ("plane_url: https://p\nmax_streams: true", "max_streams: expected an integer"),
        ("plane_url: https://p\nbackoff_base: 5\nbackoff_cap: 1", "backoff_cap: must not be below"),
        ("plane_url: https://p\ncolour: red", "colour: unknown setting"),
        ("- a list", r"\(top level\): expected a mapping, got a list"),
        ("plane_url: [unclosed", r":1: "),
    ],
)
def test_bad_configs(tmp_path: Path, doc: str, message: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(doc)
    with pytest.raises(GatewayError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_config_hints_at_registration(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="firstboot register"):
        load_config(tmp_path / "gateway.yaml")

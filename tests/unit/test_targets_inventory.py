"""targets.yaml: valid inventories load into frozen records; every bad input is a one-line error."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from yarl import URL

from gateway.errors import GatewayError
from gateway.relay.relay import Relay, target_url
from gateway.relay.targets import TlsTrust, load_targets, parse_targets
from gwcore.httpwire import HOP_BY_HOP, strip_hop_headers

PIN = "sha256:" + ":".join(["AB", "CD", "EF", "01", "23", "45", "67", "89"] * 4)
GOOD = f"""
targets:
  - name: vcenter1
    url: https://vcenter.lab.local/base/
    kind: vsphere
    tls: {{ca_file: /etc/gateway/ca/vc.pem}}
    timeout: {{connect: 3, total: 30}}
    allow_private: [127.0.0.1, 10.0.0.0/8]
  - name: bmc-7
    url: https://10.0.0.7
    kind: redfish
    tls: {{fingerprint: "{PIN}"}}
  - name: nova
    url: http://nova.lab:8774
    kind: openstack-nova
"""


def test_good_inventory(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(GOOD)
    inv = load_targets(path)
    vc = inv.get("vcenter1")
    assert (
        vc is not None and vc.kind == "vsphere" and vc.tls == TlsTrust(ca_file=Path("/etc/gateway/ca/vc.pem"))
    )
    assert (vc.connect_timeout, vc.total_timeout) == (3.0, 30.0)
    assert vc.allow_private == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
    bmc = inv.get("bmc-7")
    assert bmc is not None and bmc.tls.fingerprint == bytes.fromhex("ABCDEF0123456789" * 4)
    nova = inv.get("nova")
    assert nova is not None and (nova.connect_timeout, nova.total_timeout) == (5.0, 60.0)
    assert inv.get("missing") is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("targets: {}", "targets: expected a list"),
        ("other: 1", "expected a mapping with one key"),
        ("targets: [{name: a, url: ftp://x}]", r"targets\[0\].url: expected an http:// or https:// URL"),
        ("targets: [{name: a}]", r"targets\[0\].url: expected a URL"),
        ("targets: [{name: 'a b', url: http://x}]", r"targets\[0\].name"),
        ("targets: [{name: a, url: 'http://u:p@x'}]", "credentials in the URL"),
        ("targets: [{name: a, url: http://x, kind: vmware}]", r"targets\[0\].kind: 'vmware' is not one of"),
        ("targets: [{name: a, url: http://x, colour: red}]", "unknown key 'colour'"),
        (
            "targets: [{name: a, url: http://x}, {name: a, url: http://y}]",
            r"targets\[1\].name: duplicate target 'a'",
        ),
        ("targets: [{name: a, url: https://x, tls: {fingerprint: sha1:00}}]", "fingerprint: expected sha256"),
        (
            "targets: [{name: a, url: https://x, tls: {ca_file: rel.pem}}]",
            "ca_file: expected an absolute path",
        ),
        (
            "targets: [{name: a, url: https://x, tls: {ca_file: /a.pem, insecure: true}}]",
            "choose one of ca_file, fingerprint or insecure",
        ),
        ("targets: [{name: a, url: http://x, tls: {ca_file: /a.pem}}]", "TLS settings on a plain http://"),
        ("targets: [{name: a, url: http://x, timeout: {connect: 0}}]", "timeout.connect: expected seconds"),
        ("targets: [{name: a, url: http://x, timeout: {total: yes}}]", "timeout.total: expected seconds"),
        ("targets: [{name: a, url: http://x, allow_private: [nope]}]", r"allow_private\[0\]: 'nope'"),
        ("targets: [{name: a, url: 'http://x/?q=1'}]", "no query or fragment"),
    ],
)
def test_bad_inventories(tmp_path: Path, doc: str, message: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(doc)
    with pytest.raises(GatewayError, match=message) as info:
        load_targets(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n  - name: [unclosed\n")
    with pytest.raises(GatewayError, match=rf"{path}:\d+: "):
        load_targets(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="file not found"):
        load_targets(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/vcenter/vm?x=1", "https://h:8443/base/api/vcenter/vm?x=1"),
        ("//evil.example/x", "https://h:8443/base//evil.example/x"),
        ("/@evil.example", "https://h:8443/base/@evil.example"),
        ("/a%2F..%2Fb", "https://h:8443/base/a%2F..%2Fb"),
    ],
)
def test_request_paths_never_change_the_host(path: str, expected: str) -> None:
    target = parse_targets({"targets": [{"name": "t", "url": "https://h:8443/base/"}]}, "t").targets["t"]
    url = target_url(target, path)
    assert url.host == "h" and url.port == 8443
    assert str(url) == expected


def test_hop_by_hop_headers_are_dropped() -> None:
    headers = [
        ("Connection", "close, X-Private"),
        ("X-Private", "1"),
        ("Host", "a"),
        ("Accept", "*/*"),
        ("TE", "x"),
    ]
    assert strip_hop_headers(headers) == [("Accept", "*/*")]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Server", "nginx"), ("Content-Type", "application/json"), ("ETag", '"1"')],
        # Every Connection header counts, in any case and spacing, wherever it sits.
        [("X-A", "1"), ("connection", " X-a ,keep-alive"), ("X-B", "2"), ("CONNECTION", "x-b"), ("X-C", "3")],
        [("Keep-Alive", "timeout=5"), ("Upgrade", "h2c"), ("Trailer", "X"), ("Host", "h"), ("x-d", "4")],
        [("Connection", ""), ("Connection", ",,"), ("X-E", "5")],
    ],
)
def test_hop_by_hop_headers_follow_the_obvious_rule(headers: list[tuple[str, str]]) -> None:
    named = {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
    expected = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP | named]
    assert strip_hop_headers(headers) == expected
    assert strip_hop_headers(iter(headers)) == expected  # any iterable, read once


def test_url_type() -> None:
    inv = parse_targets({"targets": [{"name": "t", "url": "http://h"}]}, "t")
    assert isinstance(inv.targets["t"].url, URL)
    assert parse_targets(None, "empty").targets == {}


def test_target_kinds_are_the_filters_kinds() -> None:
    """One rule (gateway.filter.policy.is_target_kind): every policy kind is a target kind, any other
    OpenStack service too; a kind with a trailing newline is not (the old `^...$` let it through)."""
    from gateway.filter.policy import Kind

    for kind in [*Kind, "openstack-placement"]:
        assert parse_targets({"targets": [{"name": "t", "url": "https://10.0.0.1", "kind": str(kind)}]}, "x")
    for bad in ("vsphere\n", "openstack-", "esxi"):
        with pytest.raises(GatewayError, match=r"^x: targets\[0\]\.kind: .* is not one of vsphere, "):
            parse_targets({"targets": [{"name": "t", "url": "https://10.0.0.1", "kind": bad}]}, "x")


def test_relay_url_cache_follows_the_target_not_its_name() -> None:
    # Relay._url remembers URLs per target name and path; a reloaded target of the same name with
    # another URL must never be sent to the old host.
    relay = Relay(parse_targets({"targets": [{"name": "t", "url": "https://h:8443/base/"}]}, "t"), None)
    old = relay.targets.get("t")
    assert old is not None
    assert str(relay._url(old, "/x?y=1")) == "https://h:8443/base/x?y=1"
    assert relay._url(old, "/x?y=1") is relay._url(old, "/x?y=1")
    relay.reload(parse_targets({"targets": [{"name": "t", "url": "https://k:9443/"}]}, "t"), None)
    new = relay.targets.get("t")
    assert new is not None
    assert str(relay._url(new, "/x?y=1")) == "https://k:9443/x?y=1"
    with pytest.raises(ValueError, match="changes the host"):
        relay._url(new, "@evil/x")
    long_path = "/" + "p" * 300
    assert str(relay._url(new, long_path)) == "https://k:9443" + long_path
    assert all(len(path) <= 256 for _name, path in relay._urls)

"""The policy loader: shipped policies load, bad files give one `file:line: problem` error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.filter.jsonpath import ITEMS, SUBTREE, WILD, PathSyntaxError, compile_paths, parse_json_path
from gateway.filter.policy import Kind, check_policy_dirs, default_policy_dirs, load_policies

SHIPPED = default_policy_dirs()[0]


def test_shipped_policies_load_and_cover_every_vendor_kind() -> None:
    policies = load_policies([SHIPPED])
    assert set(policies.rules) == set(Kind) - {Kind.HTTP}
    for kind, rules in policies.rules.items():
        assert rules, kind
        for rule in rules:
            # Shipped vendor policies never stream a body unfiltered.
            assert not rule.passthrough, rule.source
            assert rule.max_body_bytes > 0
    assert policies.warnings == ()


def test_default_dirs_are_package_then_etc() -> None:
    dirs = default_policy_dirs()
    assert dirs[0].name == "policies" and (dirs[0] / "openstack-nova.yaml").is_file()
    assert dirs[1] == Path("/etc/gateway/policies.d")


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("kind: nova\nrules: []\n", 1, "unknown kind 'nova'"),
        ("rules: []\n", 1, "'kind' is required"),
        ("kind: http\nrules:\n  - name: a\n    path: /x\n    jsn: [a]\n", 5, "unknown key 'jsn'"),
        ("kind: http\nrules:\n  - name: a\n    path: x\n", 4, "must start with '/'"),
        ("kind: http\nrules:\n  - name: a\n    path: /a/**/b\n", 4, "'**' must be the last"),
        ("kind: http\nrules:\n  - name: A B\n    path: /a\n", 3, "name 'A B'"),
        ("kind: http\nrules:\n  - name: a\n    path: /a\n    methods: [POST]\n", 5, "write-like"),
        ("kind: http\nrules:\n  - name: a\n    path: /a\n    methods: [FETCH]\n", 5, "unknown method"),
        ("kind: http\nrules:\n  - name: a\n    path: /a\n    json:\n      - a..b\n", 6, "path 'a..b'"),
        ("kind: http\nrules:\n  - name: a\n    path: /a\n    json:\n      - a.**.b\n", 6, "'**' must be"),
        ("kind: http\nrules:\n  - name: a\n    path: /a\n    max_body_bytes: -1\n", 5, "integer"),
        (
            "kind: redfish\nrules:\n  - name: a\n    path: /a\n    passthrough: true\n",
            5,
            "only allowed for kind",
        ),
        ("kind: http\nrules:\n  - name: a\n    deny: true\n    path: /a\n    json: [a]\n", 3, "deny rule"),
        ("kind: http\nkind: http\nrules: []\n", 2, "duplicate key 'kind'"),
        ("kind: http\nrules:\n  - name: a\n    path: /a\n  - name: a\n    path: /b\n", 5, "already used"),
        ("kind: http\nrules: [\n", 3, "invalid YAML"),
        ("", 1, "empty policy file"),
        ("kind: http\nrules: {}\n", 2, "expected a list"),
        ("kind: http\nrules:\n  - name: a\n    path: /a\n    xml: {properties: [x]}\n", 5, "'elements'"),
    ],
)
def test_bad_policy_is_one_line_with_file_and_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GatewayError) as info:
        load_policies([tmp_path])
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message and "\n" not in message
    errors, _ = check_policy_dirs([tmp_path])
    assert errors and errors[0].startswith(f"{path}:")


def test_local_file_masks_shipped_file_of_same_name(tmp_path: Path) -> None:
    _write(tmp_path, "kind: openstack-nova\nrules: []\n", "openstack-nova.yaml")
    policies = load_policies([SHIPPED, tmp_path])
    assert policies.rules_for("openstack-nova") == ()
    assert policies.rules_for("openstack-cinder")


def test_passthrough_on_http_warns(tmp_path: Path) -> None:
    _write(tmp_path, "kind: http\nrules:\n  - name: raw\n    path: /raw\n    passthrough: true\n")
    policies = load_policies([tmp_path])
    assert policies.rules_for("http")[0].passthrough
    assert len(policies.warnings) == 1 and "passthrough" in policies.warnings[0]
    _, warnings = check_policy_dirs([tmp_path])
    assert warnings == list(policies.warnings)


def test_unquoted_odata_key_warns(tmp_path: Path) -> None:
    # YAML strips the double quotes of `- "@odata.id"`, leaving the two steps `@odata` and `id`.
    _write(tmp_path, 'kind: redfish\nrules:\n  - name: a\n    path: /a\n    json:\n      - "@odata.id"\n')
    policies = load_policies([tmp_path])
    assert len(policies.warnings) == 1 and "quote it" in policies.warnings[0]
    _write(tmp_path, "kind: redfish\nrules:\n  - name: a\n    path: /a\n    json:\n      - '\"@odata.id\"'\n")
    assert load_policies([tmp_path]).warnings == ()


def test_write_methods_need_allow_write(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "kind: http\nrules:\n  - name: a\n    path: /a\n    methods: [post]\n    allow_write: true\n",
    )
    rule = load_policies([tmp_path]).rules_for("http")[0]
    assert rule.methods == frozenset({"POST"})


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("servers[].id", ["servers", ITEMS, "id"]),
        ("value[].name", ["value", ITEMS, "name"]),
        ("[].vm", [ITEMS, "vm"]),
        ("[][]", [ITEMS, ITEMS]),
        ("a.*.b", ["a", WILD, "b"]),
        ('Members[]."@odata.id"', ["Members", ITEMS, "@odata.id"]),
        ("a.**", ["a", SUBTREE]),
        ("**", [SUBTREE]),
        ("OS-EXT-STS:vm_state", ["OS-EXT-STS:vm_state"]),
    ],
)
def test_path_syntax(text: str, steps: list[str]) -> None:
    assert parse_json_path(text) == steps


@pytest.mark.parametrize("text", ["", " a", "a.", ".a", "a[", "a[0]", 'a.""', "a.**.b", "a]", "a b"])
def test_bad_path_syntax(text: str) -> None:
    with pytest.raises(PathSyntaxError):
        parse_json_path(text)


def test_wildcard_merges_with_named_sibling() -> None:
    allow = compile_paths(["a.*.x", "a.b.y"])
    assert allow.root.allows(["a", "b", "x"]) and allow.root.allows(["a", "b", "y"])
    assert allow.root.allows(["a", "c", "x"]) and not allow.root.allows(["a", "c", "y"])
    assert not allow.root.allows(["a", "b"]) and not allow.root.allows(["a", "b", "x", "z"])

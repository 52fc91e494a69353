"""The appliance spec: good and bad specs with their exact one-line errors, and the summary."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import ApplianceError
from appliance.spec import (
    PROPERTY_KEYS,
    DiskController,
    Firmware,
    Nic,
    PropertyType,
    Spec,
    format_settings_help,
    format_summary,
    load_spec,
    parse_spec,
)
from gwcore.deploy import KEYS as FIRSTBOOT_KEYS
from gwcore.deploy import InvalidSetting, validate_value

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = yaml.safe_load((REPO / "appliance.yaml").read_text())

Mutation = Callable[[dict[str, Any]], None]


def _set(dotted: str, value: object) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        *parents, last = dotted.split("/")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value

    return apply


def _delete(dotted: str) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        *parents, last = dotted.split("/")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[int(last) if isinstance(node, list) else last]

    return apply


def _prop_index(key: str) -> int:
    return next(i for i, p in enumerate(BASE["properties"]) if p["key"] == key)


MODE = _prop_index("network.mode")
TOKEN = _prop_index("gateway.join_token")
ADDR = _prop_index("network.address")


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: object) -> Spec:
    monkeypatch.chdir(tmp_path)
    Path("appliance.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(Path("appliance.yaml"))


def test_repo_spec_loads() -> None:
    spec = load_spec(REPO / "appliance.yaml")
    assert spec.name == "gateway"
    assert spec.artifact_stem == f"gateway-{spec.version}"
    assert tuple(p.key for p in spec.properties) == PROPERTY_KEYS
    assert spec.hardware.firmware is Firmware.BIOS
    assert spec.hardware.nic is Nic.VMXNET3
    assert spec.hardware.disk_controller is DiskController.PVSCSI
    assert spec.property("gateway.join_token").password
    assert spec.property("admin.password_hash").type is PropertyType.PASSWORD
    assert spec.property("network.mode").value_map == ("dhcp", "static")
    assert spec.source == REPO / "appliance.yaml"
    assert isinstance(spec.packages, tuple)


def test_spec_is_frozen() -> None:
    spec = load_spec(REPO / "appliance.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hardware.vcpus = 8  # type: ignore[misc]


def test_defaults_fill_missing_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = copy.deepcopy(BASE)
    del data["hardware"], data["product"], data["packages"], data["debian_release"]
    spec = _load(tmp_path, monkeypatch, data)
    assert spec.hardware.memory_mib == 2048
    assert spec.hardware.vmx_version == 14
    assert spec.debian_release == "trixie"
    assert spec.product.product == "Gateway Appliance"
    assert spec.packages == ()


GOOD: list[tuple[str, Mutation, Callable[[Spec], object], object]] = [
    ("efi", _set("hardware/firmware", "efi"), lambda s: s.hardware.firmware, Firmware.EFI),
    ("sata", _set("hardware/disk_controller", "sata"), lambda s: s.hardware.disk_controller, "sata"),
    ("e1000e", _set("hardware/nic", "e1000e"), lambda s: s.hardware.nic, Nic.E1000E),
    ("bookworm", _set("debian_release", "bookworm"), lambda s: s.debian_release, "bookworm"),
    ("packages", _set("packages", ["htop", "libc6-dev"]), lambda s: s.packages, ("htop", "libc6-dev")),
    ("version suffix", _set("version", "1.2.3~rc1"), lambda s: s.artifact_stem, "gateway-1.2.3~rc1"),
    (
        "static default",
        _set(f"properties/{ADDR}/default", "192.0.2.5/24"),
        lambda s: s.properties[ADDR].default,
        "192.0.2.5/24",
    ),
    (
        "fixed",
        _set(f"properties/{MODE}/user_configurable", False),
        lambda s: s.properties[MODE].user_configurable,
        False,
    ),
]


@pytest.mark.parametrize(("mutate", "get", "want"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_specs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mutate: Mutation,
    get: Callable[[Spec], object],
    want: object,
) -> None:
    data = copy.deepcopy(BASE)
    mutate(data)
    assert get(_load(tmp_path, monkeypatch, data)) == want


BAD: list[tuple[Mutation, str]] = [
    (_set("hardware/memory_mib", "2G"), "hardware.memory_mib: expected an integer >= 512, got '2G'"),
    (_set("hardware/memory_mib", 256), "hardware.memory_mib: expected an integer >= 512, got 256"),
    (_set("hardware/vcpus", 0), "hardware.vcpus: expected an integer from 1 to 128, got 0"),
    (_set("hardware/vcpus", True), "hardware.vcpus: expected an integer from 1 to 128, got true"),
    (_set("hardware/disk_gib", 1.5), "hardware.disk_gib: expected an integer from 2 to 2048, got 1.5"),
    (_set("hardware/firmware", "uefi"), "hardware.firmware: expected one of bios, efi, got 'uefi'"),
    (
        _set("hardware/nic", "rtl8139"),
        "hardware.nic: expected one of vmxnet3, e1000, e1000e, virtio, got 'rtl8139'",
    ),
    (
        _set("hardware/disk_controller", "nvme"),
        "hardware.disk_controller: expected one of pvscsi, lsilogic, lsilogicsas, sata, ide, got 'nvme'",
    ),
    (_set("hardware/vmx_version", 9), "hardware.vmx_version: expected an integer from 10 to 21, got 9"),
    (_set("hardware/cpus", 2), "hardware.cpus: unknown key, did you mean 'vcpus'?"),
    (_set("hardware", []), "hardware: expected a mapping, got a list"),
    (_set("hardware", None), "hardware: expected a mapping, got null"),
    (
        _set("colour", "blue"),
        "colour: unknown key (known: debian_release, hardware, name, packages, product, properties, "
        "signing, version)",
    ),
    (_set("signing/key", 5), "signing.key: expected a path (quote it), got 5"),
    (_set("signing/private_key", "k.pem"), "signing.private_key: unknown key (known: cert, key, keyring)"),
    (_delete("name"), "name: missing (required)"),
    (_set("name", "Gateway"), "name: expected a name of [a-z0-9-], got 'Gateway'"),
    (_set("name", "gw_1"), "name: expected a name of [a-z0-9-], got 'gw_1'"),
    (_set("version", 1.0), "version: expected a version like 0.1.0 (quote it), got 1.0"),
    (_set("version", "1.0/x"), "version: expected a version like 0.1.0, got '1.0/x'"),
    (_set("debian_release", "sid"), "debian_release: expected one of trixie, bookworm, got 'sid'"),
    (
        _set("product/vendor_url", "ftp://x"),
        "product.vendor_url: expected an http(s) URL or an empty string, got 'ftp://x'",
    ),
    (_set("product/product", ""), "product.product: expected a non-empty string, got ''"),
    (_set("packages", "htop"), "packages: expected a list, got 'htop'"),
    (_set("packages", ["htop", "Bad Name"]), "packages[1]: expected a Debian package name, got 'Bad Name'"),
    (_set("packages", ["htop", "htop"]), "packages: duplicate package htop"),
    (_delete("properties"), "properties: missing (required)"),
    (_delete(f"properties/{ADDR}"), "properties: missing network.address"),
    (
        _set("properties/0/key", "gateway.colour"),
        "properties[0].key: unknown property 'gateway.colour' (first boot does not read it)",
    ),
    (
        _set("properties/1/key", "gateway.plane_url"),
        "properties[1].key: duplicate key 'gateway.plane_url' (also properties[0])",
    ),
    (_set("properties/0/lable", "x"), "properties[0].lable: unknown key, did you mean 'label'?"),
    (_delete("properties/0/label"), "properties[0].label: missing (required)"),
    (
        _set("properties/0/type", "secret"),
        "properties[0].type: expected one of string, boolean, int, password, got 'secret'",
    ),
    (
        _set(f"properties/{TOKEN}/type", "string"),
        f"properties[{TOKEN}].type: gateway.join_token is a secret: expected password, got string",
    ),
    (
        _set(f"properties/{TOKEN}/default", "abc"),
        f"properties[{TOKEN}].default: a password property must not have a default",
    ),
    (_set("properties/0/default", 5), "properties[0].default: expected a string value, got 5"),
    (
        _set("properties/0/default", [1]),
        "properties[0].default: expected a string, boolean or integer, got a list",
    ),
    (
        _set("properties/0/user_configurable", "yes please"),
        "properties[0].user_configurable: expected true or false, got 'yes please'",
    ),
    (
        _set("properties/0/qualifiers", "MinLen(x)"),
        "properties[0].qualifiers: bad qualifier at 'MinLen(x)': expected MinLen(n), MaxLen(n), MinValue(n), "
        'MaxValue(n) or ValueMap{"a","b"}',
    ),
    (
        _set("properties/0/qualifiers", "MinValue(1)"),
        "properties[0].qualifiers: MinValue applies to int properties, not string",
    ),
    (
        _set(f"properties/{MODE}/qualifiers", 'ValueMap{"dhcp"}'),
        f'properties[{MODE}].qualifiers: expected ValueMap{{"dhcp","static"}}',
    ),
    (
        _set(f"properties/{MODE}/default", "auto"),
        f"properties[{MODE}].default: 'auto' is not in the ValueMap",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_bad_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutate: Mutation, message: str) -> None:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ApplianceError) as info:
        _load(tmp_path, monkeypatch, data)
    assert str(info.value) == f"appliance.yaml: {message}"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: [unclosed\n",
            "appliance.yaml: line 2: invalid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        ("name: a\nname: b\n", "appliance.yaml: line 2: invalid YAML: duplicate key 'name' (line 2)"),
        ("- a\n- b\n", "appliance.yaml: (top level): expected a mapping, got a list"),
        ("", "appliance.yaml: (top level): expected a mapping, got null"),
        ("name: " + "[" * 20000, "appliance.yaml: invalid YAML: nested too deeply"),
    ],
)
def test_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("appliance.yaml").write_text(text)
    with pytest.raises(ApplianceError) as info:
        load_spec(Path("appliance.yaml"))
    assert str(info.value) == message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ApplianceError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_parse_spec_is_pure() -> None:
    spec = parse_spec(copy.deepcopy(BASE), Path("somewhere/spec.yaml"))
    assert spec.source == Path("somewhere/spec.yaml")
    with pytest.raises(ApplianceError, match=r"^somewhere/spec.yaml: name: missing \(required\)$"):
        parse_spec({k: v for k, v in BASE.items() if k != "name"}, Path("somewhere/spec.yaml"))


def test_summary_lists_every_setting() -> None:
    spec = load_spec(REPO / "appliance.yaml")
    text = format_summary(spec)
    for key in (
        "name",
        "version",
        "artifact_stem",
        "hardware.memory_mib",
        "hardware.disk_controller",
        "product.vendor",
        "packages",
        *PROPERTY_KEYS,
    ):
        assert key in text, key
    assert "hardware.memory_mib       2048" in text
    assert "properties (11):" in text
    assert "gateway.join_token   password MaxLen(4096)  Join token" in text


def test_settings_help_comes_from_the_table() -> None:
    text = format_settings_help()
    assert "hardware.memory_mib: memory in MiB (default 2048)" in text
    assert "name: artifact name (required)" in text
    assert "properties[].qualifiers:" in text


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10_000), st.floats(allow_nan=False), st.text(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(path=st.lists(st.sampled_from(["hardware", "product", "properties", "0", "3", "key", "type",
                                      "default", "qualifiers", "name", "version", "vcpus", "packages"]),
                     min_size=1, max_size=3),
       value=_VALUES)  # fmt: skip
def test_any_mutation_gives_a_one_line_error_or_a_spec(path: list[str], value: object) -> None:
    data = copy.deepcopy(BASE)
    node: Any = data
    for part in path[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return
    if isinstance(node, dict):
        node[path[-1]] = value
    try:
        spec = parse_spec(data, Path("appliance.yaml"))
    except ApplianceError as exc:
        text = str(exc)
        assert text.startswith("appliance.yaml: ") and "\n" not in text and "Traceback" not in text
    else:
        assert isinstance(spec, Spec)


def test_odd_unknown_keys_stay_on_one_line() -> None:
    data = copy.deepcopy(BASE)
    data["hardware"]["bad\nkey"] = 1
    with pytest.raises(ApplianceError) as info:
        parse_spec(data, Path("appliance.yaml"))
    assert str(info.value).startswith("appliance.yaml: hardware.'bad\\nkey': unknown key")


def test_summary_keeps_one_line_per_setting() -> None:
    data = copy.deepcopy(BASE)
    data["product"]["annotation"] = "first line\nsecond   line\n"
    text = format_summary(parse_spec(data, Path("appliance.yaml")))
    assert "product.annotation        first line second line" in text.splitlines()


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, "http://plane"),
        (ADDR, "192.0.2.5"),
        (ADDR, "192.0.2.500/24"),
        (_prop_index("proxy.url"), "ftp://x"),
    ],
)
def test_defaults_must_pass_first_boots_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: int, value: str
) -> None:
    key = BASE["properties"][index]["key"]
    with pytest.raises(InvalidSetting) as first_boot:
        validate_value(key, value)
    data = copy.deepcopy(BASE)
    data["properties"][index]["default"] = value
    with pytest.raises(ApplianceError) as info:
        _load(tmp_path, monkeypatch, data)
    problem = first_boot.value.message.removeprefix(f"{key}: ")
    assert str(info.value) == f"appliance.yaml: properties[{index}].default: {problem}"


def test_property_keys_are_first_boots() -> None:
    assert PROPERTY_KEYS is FIRSTBOOT_KEYS

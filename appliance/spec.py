"""The appliance spec: `appliance.yaml` -> one frozen, validated dataclass tree.

Every setting is declared once, in a table of `Setting` entries (key, parser, default, help). The
tables drive parsing, validation, the defaults and `format_summary()`. Parsing is pure
(`parse_spec(data, source)`); `load_spec(path)` only adds reading the file. Property defaults are
checked with first boot's own validators (gwcore.deploy), so the OVA never offers a default
the appliance would refuse.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from appliance.errors import ApplianceError
from gwcore.deploy import KEYS, InvalidSetting, validate_value
from gwcore.safeload import ParseError, loads_yaml
from gwcore.settings import (
    REQUIRED,
    InvalidAt,
    Setting,
    boolean,
    enum,
    integer,
    list_of,
    section,
    show,
    string,
)

__all__ = [
    "PROPERTY_KEYS",
    "DebianRelease",
    "DiskController",
    "Firmware",
    "Hardware",
    "Nic",
    "Product",
    "Property",
    "PropertyType",
    "Signing",
    "Spec",
    "format_summary",
    "load_spec",
    "parse_spec",
]


class DebianRelease(StrEnum):
    TRIXIE = "trixie"
    BOOKWORM = "bookworm"


class Firmware(StrEnum):
    BIOS = "bios"
    EFI = "efi"


class Nic(StrEnum):
    VMXNET3 = "vmxnet3"
    E1000 = "e1000"
    E1000E = "e1000e"
    VIRTIO = "virtio"


class DiskController(StrEnum):
    PVSCSI = "pvscsi"
    LSILOGIC = "lsilogic"
    LSILOGICSAS = "lsilogicsas"
    SATA = "sata"
    IDE = "ide"


class PropertyType(StrEnum):
    STRING = "string"
    BOOLEAN = "boolean"
    INT = "int"
    PASSWORD = "password"


# The deploy-time properties first boot understands: first boot's own table (gwcore.deploy), the
# same object. The spec must declare exactly these, in this order (the wizard's: network, proxy,
# plane, admin): a property first boot ignores would be a silent trap for the user.
PROPERTY_KEYS: tuple[str, ...] = KEYS
# Secrets: they must be typed `password` so hypervisors mask them, and must have no default.
_SECRET_KEYS = frozenset({"gateway.join_token", "admin.password_hash"})
_NETWORK_MODES = ("dhcp", "static")


@dataclass(frozen=True)
class Hardware:
    """Virtual hardware defaults of the exported VM."""

    vcpus: int
    memory_mib: int
    disk_gib: int
    firmware: Firmware
    nic: Nic
    disk_controller: DiskController
    network: str
    vmx_version: int


@dataclass(frozen=True)
class Product:
    """OVF ProductSection texts."""

    product: str
    vendor: str
    vendor_url: str
    product_url: str
    annotation: str


@dataclass(frozen=True)
class Signing:
    """Paths of the vendor's update signing key and certificates (empty: a development build)."""

    key: str
    cert: str
    keyring: str


@dataclass(frozen=True)
class Property:
    """One OVF property accepted at deploy time."""

    key: str
    type: PropertyType
    label: str
    description: str
    default: str | bool | int
    user_configurable: bool
    qualifiers: str

    @property
    def password(self) -> bool:
        """True for secrets (rendered as ovf:password="true")."""
        return self.type is PropertyType.PASSWORD

    @property
    def value_map(self) -> tuple[str, ...]:
        """The allowed values from a ValueMap{...} qualifier, or () when unrestricted."""
        for name, arg in _split_qualifiers(self.qualifiers):
            if name == "ValueMap":
                return tuple(_VALUE_RE.findall(arg))
        return ()

    @property
    def default_text(self) -> str:
        """The default as OVF writes it (booleans as true/false)."""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


@dataclass(frozen=True)
class Spec:
    """The whole resolved appliance spec."""

    source: Path
    name: str
    version: str
    debian_release: DebianRelease
    hardware: Hardware
    product: Product
    properties: tuple[Property, ...]
    packages: tuple[str, ...] = field(default=())
    signing: Signing = field(default=Signing("", "", ""))

    @property
    def artifact_stem(self) -> str:
        """NAME-VERSION, the stem of every artifact file."""
        return f"{self.name}-{self.version}"

    def property(self, key: str) -> Property:
        """The property with this key (KeyError if absent)."""
        for prop in self.properties:
            if prop.key == key:
                return prop
        raise KeyError(key)


def _url(value: object, path: str) -> str:
    text = string()(value, path)
    if text == "":
        return text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidAt(path, f"expected an http(s) URL or an empty string, got {show(value)}")
    return text


# ---------------------------------------------------------------------------------------------
# Qualifiers: MinLen(n), MaxLen(n), MinValue(n), MaxValue(n), ValueMap{"a","b"}, comma-separated.

_QUALIFIER_RE = re.compile(r'(MinLen|MaxLen|MinValue|MaxValue)\((-?\d+)\)|(ValueMap)\{((?:"[^"]*",?)*)\}')
_VALUE_RE = re.compile(r'"([^"]*)"')


def _split_qualifiers(text: str) -> list[tuple[str, str]]:
    """Pairs (name, argument) of a qualifier string; raises ValueError where it is malformed."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _QUALIFIER_RE.match(text, pos)
        if not match:
            raise ValueError(f"bad qualifier at {text[pos:]!r}")
        if match.group(1):
            out.append((match.group(1), match.group(2)))
        else:
            out.append((match.group(3), match.group(4)))
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"bad qualifier at {text[pos:]!r}")
            pos += 1
    return out


def _qualifiers(value: object, path: str) -> str:
    text = string()(value, path)
    try:
        _split_qualifiers(text)
    except ValueError as exc:
        raise InvalidAt(
            path, f'{exc}: expected MinLen(n), MaxLen(n), MinValue(n), MaxValue(n) or ValueMap{{"a","b"}}'
        ) from None
    return text


def _default(value: object, path: str) -> str | bool | int:
    # Checked against the property's type in _check_property, once the type is known.
    if isinstance(value, str | bool | int):
        return value
    raise InvalidAt(path, f"expected a string, boolean or integer, got {show(value)}")


# ---------------------------------------------------------------------------------------------
# The tables: every setting, once.

_NAME_RE = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_VERSION_RE = r"[0-9]+(?:\.[0-9]+)*(?:[-+~][0-9A-Za-z.+~]+)?"
_PACKAGE_RE = r"[a-z0-9][a-z0-9+.-]+"

HARDWARE_SETTINGS: tuple[Setting, ...] = (
    Setting("vcpus", integer(1, 128), 2, "virtual CPUs"),
    Setting("memory_mib", integer(512), 2048, "memory in MiB"),
    Setting("disk_gib", integer(2, 2048), 8, "virtual disk size in GiB"),
    Setting("firmware", enum(Firmware), "bios", "boot firmware: bios | efi"),
    Setting("nic", enum(Nic), "vmxnet3", "NIC model: " + " | ".join(Nic)),
    Setting(
        "disk_controller", enum(DiskController), "pvscsi", "disk controller: " + " | ".join(DiskController)
    ),
    Setting("network", string(r"[^<>&\"]{1,80}", "a network name"), "VM Network", "OVF network of the NIC"),
    # vmx-14 = ESXi 6.7: old enough to import almost everywhere, new enough for every controller here.
    Setting("vmx_version", integer(10, 21), 14, "VMware virtual hardware version (vmx-NN)"),
)

PRODUCT_SETTINGS: tuple[Setting, ...] = (
    Setting("product", string(r".{1,200}", "a non-empty string"), "Gateway Appliance", "OVF product name"),
    Setting("vendor", string(), "", "OVF vendor"),
    Setting("vendor_url", _url, "", "vendor URL"),
    Setting("product_url", _url, "", "product URL"),
    Setting("annotation", string(max_len=4096), "", "OVF annotation shown in the hypervisor's UI"),
)

PROPERTY_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "key", string(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+", "a dotted key"), REQUIRED, "property key"
    ),
    Setting("type", enum(PropertyType), "string", "string | boolean | int | password"),
    Setting("label", string(r"\S.{0,199}", "a non-empty label"), REQUIRED, "label shown at deploy time"),
    Setting("description", string(max_len=2048), "", "help shown at deploy time"),
    Setting("default", _default, "", "default value"),
    Setting("user_configurable", boolean, True, "editable at deploy time"),
    Setting("qualifiers", _qualifiers, "", "OVF qualifiers, e.g. MinLen(1) or ValueMap{...}"),
)

SIGNING_SETTINGS: tuple[Setting, ...] = (
    # Paths, relative to the spec file; never the key itself. Empty: a development build signs
    # with a throwaway key (appliance/signing.py). APPLIANCE_SIGNING_KEY/_CERT/_KEYRING win.
    Setting("key", string(r"[^\n]*", "a path"), "", "update signing key (PEM), kept outside the repository"),
    Setting("cert", string(r"[^\n]*", "a path"), "", "its certificate (PEM, with the codeSigning usage)"),
    Setting("keyring", string(r"[^\n]*", "a path"), "", "CA certificate the image trusts (default: cert)"),
)

SPEC_SETTINGS: tuple[Setting, ...] = (
    Setting("name", string(_NAME_RE, "a name of [a-z0-9-]"), REQUIRED, "artifact name"),
    Setting("version", string(_VERSION_RE, "a version like 0.1.0"), REQUIRED, "appliance version"),
    Setting("debian_release", enum(DebianRelease), "trixie", "Debian release of the image"),
    Setting("hardware", section(Hardware, HARDWARE_SETTINGS), {}, "virtual hardware"),
    Setting("product", section(Product, PRODUCT_SETTINGS), {}, "OVF product section"),
    Setting("properties", list_of(section(Property, PROPERTY_SETTINGS)), REQUIRED, "OVF properties"),
    Setting("packages", list_of(string(_PACKAGE_RE, "a Debian package name")), [], "extra packages"),
    Setting("signing", section(Signing, SIGNING_SETTINGS), {}, "update signing key and certificates"),
)


# ---------------------------------------------------------------------------------------------
# Cross-field checks, after every field parsed.


def _check_value(key: str, text: str) -> str | None:
    """Why first boot would reject this default, in first boot's own words; None if it accepts it."""
    if key not in PROPERTY_KEYS:
        return None
    try:
        validate_value(key, text)
    except InvalidSetting as exc:
        # validate_value says "key: problem"; the caller already names the key.
        return exc.message.removeprefix(f"{key}: ")
    return None


def _check_property(prop: Property, path: str) -> None:
    want: tuple[type, ...] = {
        PropertyType.BOOLEAN: (bool,),
        PropertyType.INT: (int,),
        PropertyType.STRING: (str,),
        PropertyType.PASSWORD: (str,),
    }[prop.type]
    default = prop.default
    if not isinstance(default, want) or (prop.type is PropertyType.INT and isinstance(default, bool)):
        raise InvalidAt(f"{path}.default", f"expected a {prop.type} value, got {show(default)}")
    if prop.password and default != "":
        raise InvalidAt(f"{path}.default", "a password property must not have a default")
    if prop.key in _SECRET_KEYS and not prop.password:
        raise InvalidAt(f"{path}.type", f"{prop.key} is a secret: expected password, got {prop.type}")
    for name, arg in _split_qualifiers(prop.qualifiers):
        if name in ("MinLen", "MaxLen") and prop.type not in (PropertyType.STRING, PropertyType.PASSWORD):
            raise InvalidAt(f"{path}.qualifiers", f"{name} applies to string properties, not {prop.type}")
        if name in ("MinValue", "MaxValue") and prop.type is not PropertyType.INT:
            raise InvalidAt(f"{path}.qualifiers", f"{name} applies to int properties, not {prop.type}")
        if name == "MaxLen" and isinstance(default, str) and len(default) > int(arg):
            raise InvalidAt(f"{path}.default", f"longer than MaxLen({arg})")
    if prop.key == "network.mode" and sorted(prop.value_map) != sorted(_NETWORK_MODES):
        raise InvalidAt(f"{path}.qualifiers", 'expected ValueMap{"dhcp","static"}')
    if prop.value_map and prop.default_text not in prop.value_map:
        raise InvalidAt(f"{path}.default", f"{prop.default_text!r} is not in the ValueMap")
    if isinstance(default, str) and default and not prop.value_map:
        problem = _check_value(prop.key, default)
        if problem:
            raise InvalidAt(f"{path}.default", problem)


def _check_spec(spec: Spec) -> None:
    seen: dict[str, int] = {}
    for index, prop in enumerate(spec.properties):
        path = f"properties[{index}]"
        if prop.key in seen:
            raise InvalidAt(f"{path}.key", f"duplicate key {prop.key!r} (also properties[{seen[prop.key]}])")
        seen[prop.key] = index
        if prop.key not in PROPERTY_KEYS:
            raise InvalidAt(f"{path}.key", f"unknown property {prop.key!r} (first boot does not read it)")
        _check_property(prop, path)
    missing = [key for key in PROPERTY_KEYS if key not in seen]
    if missing:
        raise InvalidAt("properties", f"missing {', '.join(missing)}")
    dupes = sorted({pkg for pkg in spec.packages if spec.packages.count(pkg) > 1})
    if dupes:
        raise InvalidAt("packages", f"duplicate package {', '.join(dupes)}")


# ---------------------------------------------------------------------------------------------


def parse_spec(data: object, source: Path) -> Spec:
    """Validate already-loaded YAML data into a Spec; errors name `source`, the key and the problem."""
    try:
        spec: Spec = section(functools.partial(Spec, source=source), SPEC_SETTINGS)(data, "")
        _check_spec(spec)
    except InvalidAt as exc:
        raise ApplianceError(f"{source}: {exc.path}: {exc.problem}") from None
    return spec


def load_spec(path: Path) -> Spec:
    """Read and validate the spec file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ApplianceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ApplianceError(f"{path}: not UTF-8 text") from None
    try:
        data = loads_yaml(text)  # the one loader: duplicate keys refused, deep nesting an error
    except ParseError as exc:
        where = f"line {exc.line}: " if exc.line is not None else ""
        raise ApplianceError(f"{path}: {where}invalid YAML: {exc.reason}") from None
    return parse_spec(data, path)


# ---------------------------------------------------------------------------------------------


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, str):
        # One line per setting, even for a multi-line annotation.
        return " ".join(value.split()) if value.strip() else '""'
    return str(value)


def format_summary(spec: Spec) -> str:
    """The resolved spec as aligned `key  value` lines, driven by the settings tables."""
    rows: list[tuple[str, str]] = [("spec", str(spec.source)), ("artifact_stem", spec.artifact_stem)]
    for setting in SPEC_SETTINGS:
        value = getattr(spec, setting.key)
        if setting.key in ("hardware", "product", "signing"):
            sub = {"hardware": HARDWARE_SETTINGS, "product": PRODUCT_SETTINGS, "signing": SIGNING_SETTINGS}[
                setting.key
            ]
            rows += [(f"{setting.key}.{s.key}", _plain(getattr(value, s.key))) for s in sub]
        elif setting.key != "properties":
            rows.append((setting.key, _plain(value)))
    width = max(len(key) for key, _ in rows)
    lines = [f"{key.ljust(width)}  {text}" for key, text in rows]
    lines.append(f"properties ({len(spec.properties)}):")
    key_width = max((len(p.key) for p in spec.properties), default=0)
    for prop in spec.properties:
        flags = [str(prop.type)]
        if not prop.user_configurable:
            flags.append("fixed")
        if prop.qualifiers:
            flags.append(prop.qualifiers)
        default = f" default={prop.default_text!r}" if prop.default_text and not prop.password else ""
        lines.append(f"  {prop.key.ljust(key_width)}  {' '.join(flags)}{default}  {prop.label}")
    return "\n".join(lines)


def format_settings_help() -> str:
    """Every setting with its default and help, for documentation and `--help` texts."""
    lines: list[str] = []
    groups = (
        ("", SPEC_SETTINGS),
        ("hardware.", HARDWARE_SETTINGS),
        ("product.", PRODUCT_SETTINGS),
        ("properties[].", PROPERTY_SETTINGS),
        ("signing.", SIGNING_SETTINGS),
    )
    for prefix, table in groups:
        for setting in table:
            if setting.default is REQUIRED:
                default = "required"
            elif isinstance(setting.default, Mapping):
                default = "see below"
            else:
                default = f"default {show(setting.default)}"
            lines.append(f"{prefix}{setting.key}: {setting.help} ({default})")
    return "\n".join(lines)

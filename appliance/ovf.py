"""The OVF 1.x descriptor: spec + disk facts -> XML, rendered from `templates/appliance.ovf.j2`.

The virtual hardware is planned here in Python (which controller, which InstanceIDs, which RASD
fields) so the template stays declarative and the RASD element order the schema demands lives in
one place. `validate_ovf()` checks a descriptor against the DMTF schema.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from appliance.errors import ApplianceError
from appliance.spec import DiskController, Firmware, Nic, Property, PropertyType, Spec
from appliance.vmdk import VmdkInfo

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "appliance.ovf.j2"
VMDK_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
OS_DEBIAN_64 = 96  # CIM_OperatingSystem: Debian 64-Bit
# VMware and the ISO image: both ways the OVF environment can reach the guest.
TRANSPORTS = "com.vmware.guestInfo iso"
ENV_NS = "http://schemas.dmtf.org/ovf/environment/1"

# CIM RASD elements must appear in the schema's (alphabetical) order.
_RASD_ORDER = (
    "Address",
    "AddressOnParent",
    "AllocationUnits",
    "AutomaticAllocation",
    "Caption",
    "Connection",
    "Description",
    "ElementName",
    "HostResource",
    "InstanceID",
    "Parent",
    "ResourceSubType",
    "ResourceType",
    "VirtualQuantity",
)

# controller -> (ResourceType, ResourceSubType or "", label). 6 = parallel SCSI HBA, 20 = other
# storage (SATA), 5 = IDE. The subtypes are the names VMware's importer and virt-v2v know.
_CONTROLLERS: dict[DiskController, tuple[int, str, str]] = {
    DiskController.PVSCSI: (6, "VirtualSCSI", "SCSI Controller"),
    DiskController.LSILOGIC: (6, "lsilogic", "SCSI Controller"),
    DiskController.LSILOGICSAS: (6, "lsilogicsas", "SCSI Controller"),
    DiskController.SATA: (20, "vmware.sata.ahci", "SATA Controller"),
    DiskController.IDE: (5, "", "IDE Controller"),
}
_NICS: dict[Nic, str] = {
    Nic.VMXNET3: "VmxNet3",
    Nic.E1000: "E1000",
    Nic.E1000E: "E1000e",
    Nic.VIRTIO: "virtio",
}
# OVF (DSP0243) property types; a password is a string the UI masks.
_PROPERTY_TYPES: dict[PropertyType, str] = {
    PropertyType.STRING: "string",
    PropertyType.PASSWORD: "string",
    PropertyType.BOOLEAN: "boolean",
    PropertyType.INT: "sint32",
}
_CATEGORIES = {
    "gateway": "Management plane",
    "network": "Network",
    "proxy": "Proxy",
    "admin": "Administration",
}


@dataclass(frozen=True)
class DiskInfo:
    """The disk as the OVF describes it: file name in the OVA, file size, capacity, used bytes."""

    href: str
    size: int
    capacity: int
    populated_size: int

    @classmethod
    def from_vmdk(cls, info: VmdkInfo, href: str | None = None) -> DiskInfo:
        """Describe a VMDK written by appliance.vmdk (href defaults to its file name)."""
        return cls(href or info.path.name, info.file_size, info.capacity, info.populated_size)


@dataclass(frozen=True)
class Item:
    """One virtual hardware Item: RASD fields in schema order, and VMware extra config."""

    fields: tuple[tuple[str, str], ...]
    required: bool = True
    config: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PropertyView:
    """A spec property as the template writes it."""

    key: str
    ovf_type: str
    label: str
    description: str
    value: str
    user_configurable: bool
    qualifiers: str
    password: bool
    category: str  # non-empty on the first property of a group


def _item(required: bool = True, config: tuple[tuple[str, str], ...] = (), **fields: object) -> Item:
    unknown = set(fields) - set(_RASD_ORDER)
    assert not unknown, unknown
    ordered = tuple((name, str(fields[name])) for name in _RASD_ORDER if fields.get(name) is not None)
    return Item(ordered, required, config)


def hardware_items(spec: Spec) -> tuple[Item, ...]:
    """The virtual hardware: CPU, memory, controllers, disk, CD-ROM (ISO transport) and NIC."""
    hw = spec.hardware
    items = [
        _item(
            InstanceID=1,
            ResourceType=3,
            AllocationUnits="hertz * 10^6",
            Description="Number of virtual CPUs",
            ElementName=f"{hw.vcpus} virtual CPU(s)",
            VirtualQuantity=hw.vcpus,
        ),
        _item(
            InstanceID=2,
            ResourceType=4,
            AllocationUnits="byte * 2^20",
            Description="Memory size",
            ElementName=f"{hw.memory_mib} MB of memory",
            VirtualQuantity=hw.memory_mib,
        ),
    ]
    rtype, subtype, label = _CONTROLLERS[hw.disk_controller]
    items.append(
        _item(
            InstanceID=3,
            ResourceType=rtype,
            ResourceSubType=subtype or None,
            Address=0,
            Description=label,
            ElementName=f"{label} 0",
        )
    )
    # The ISO transport needs a CD-ROM drive; it sits on its own IDE controller (IDE 1 when the
    # disk is on IDE 0), which every hypervisor here offers.
    cd_address = 1 if hw.disk_controller is DiskController.IDE else 0
    items.append(
        _item(
            InstanceID=4,
            ResourceType=5,
            Address=cd_address,
            Description="IDE Controller",
            ElementName=f"IDE Controller {cd_address}",
        )
    )
    items.append(
        _item(
            InstanceID=5,
            ResourceType=17,
            AddressOnParent=0,
            ElementName="Hard Disk 1",
            HostResource="ovf:/disk/vmdisk1",
            Parent=3,
        )
    )
    items.append(
        _item(
            required=False,
            InstanceID=6,
            ResourceType=15,
            AddressOnParent=0,
            AutomaticAllocation="false",
            ElementName="CD-ROM 1",
            Parent=4,
        )
    )
    nic = _NICS[hw.nic]
    items.append(
        _item(
            InstanceID=7,
            ResourceType=10,
            AddressOnParent=7,
            AutomaticAllocation="true",
            Connection=hw.network,
            Description=f'{nic} ethernet adapter on "{hw.network}"',
            ElementName="Ethernet 1",
            ResourceSubType=nic,
        )
    )
    return tuple(items)


def vmware_config(spec: Spec) -> tuple[tuple[str, str], ...]:
    """vmw:Config key/values of the VirtualHardwareSection (BIOS is the default: nothing to say)."""
    config: list[tuple[str, str]] = [("tools.syncTimeWithHost", "false")]
    if spec.hardware.firmware is Firmware.EFI:
        config += [("firmware", "efi"), ("bootOptions.efiSecureBootEnabled", "false")]
    return tuple(config)


def vmware_os_type(spec: Spec) -> str:
    """A vmw:osType the target hardware version knows (newer Debian ids came with newer ESXi)."""
    vmx = spec.hardware.vmx_version
    if vmx >= 20:
        return "debian12_64Guest"
    if vmx >= 17:
        return "debian11_64Guest"
    return "debian10_64Guest"


def property_views(properties: tuple[Property, ...]) -> tuple[PropertyView, ...]:
    """Properties for the template, with a Category heading where the key prefix changes."""
    views: list[PropertyView] = []
    previous = ""
    for prop in properties:
        group = prop.key.split(".", 1)[0]
        category = _CATEGORIES.get(group, group.capitalize()) if group != previous else ""
        previous = group
        views.append(
            PropertyView(
                key=prop.key,
                ovf_type=_PROPERTY_TYPES[prop.type],
                label=prop.label,
                description=prop.description,
                value=prop.default_text,
                user_configurable=prop.user_configurable,
                qualifiers=prop.qualifiers,
                password=prop.password,
                category=category,
            )
        )
    return tuple(views)


@functools.cache
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_ovf(spec: Spec, disk: DiskInfo) -> str:
    """The OVF descriptor for `spec` with `disk` as its only disk."""
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            spec=spec,
            disk=disk,
            vmdk_format=VMDK_FORMAT,
            os_id=OS_DEBIAN_64,
            os_type=vmware_os_type(spec),
            transports=TRANSPORTS,
            items=hardware_items(spec),
            vmw_config=vmware_config(spec),
            properties=property_views(spec.properties),
        )
    )


# ---------------------------------------------------------------------------------------------

_NAMESPACES = {
    "xml": ("http://www.w3.org/XML/1998/namespace", "xml.xsd"),
    "cim": ("http://schemas.dmtf.org/wbem/wscim/1/common", "common.xsd"),
    "vssd": (
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
        "CIM_VirtualSystemSettingData.xsd",
    ),
    "rasd": (
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
        "CIM_ResourceAllocationSettingData.xsd",
    ),
}


@functools.cache
def _schema(schema_dir: Path, root: str) -> object:
    import xmlschema  # a build-host/test dependency, not needed to render

    # DSP8023.xsd has its imports' schemaLocations commented out: give them here, as local files.
    locations = [(ns, str(schema_dir / name)) for ns, name in _NAMESPACES.values()]
    return xmlschema.XMLSchema(str(schema_dir / root), locations=locations)


def _validate(text: str, schema_dir: Path, root: str, what: str) -> None:
    import xmlschema

    if not (schema_dir / root).is_file():
        raise ApplianceError(f"{schema_dir}: no {root} here", hint="the DMTF OVF schemas")
    schema = _schema(schema_dir.resolve(), root)
    assert isinstance(schema, xmlschema.XMLSchema)
    errors = list(schema.iter_errors(text))
    if errors:
        first = errors[0]
        where = f" at {first.path}" if first.path else ""
        reason = (first.reason or str(first)).splitlines()[0]
        raise ApplianceError(f"{what}{where}: {reason} ({len(errors)} schema error(s))")


def validate_ovf(text: str, schema_dir: Path) -> None:
    """Validate a descriptor against the DMTF OVF envelope schema (DSP8023) in `schema_dir`."""
    _validate(text, schema_dir, "DSP8023.xsd", "OVF descriptor")


def validate_ovf_environment(text: str, schema_dir: Path) -> None:
    """Validate an ovf-env.xml against the DMTF OVF environment schema (DSP8027) in `schema_dir`."""
    _validate(text, schema_dir, "DSP8027.xsd", "OVF environment")


def render_ovf_environment(spec: Spec, values: Mapping[str, str] | None = None, *, kind: str = "QEMU") -> str:
    """The ovf-env.xml a hypervisor would hand this appliance: every property, `values` over defaults."""
    values = dict(values or {})
    known = {prop.key: prop for prop in spec.properties}
    for key, value in values.items():
        if key not in known:
            raise ApplianceError(f"OVF environment: unknown property {key!r} (known: {', '.join(known)})")
        allowed = known[key].value_map
        if allowed and value not in allowed:
            raise ApplianceError(f"OVF environment: {key}: {value!r} is not one of {', '.join(allowed)}")
    ET.register_namespace("oe", ENV_NS)
    root = ET.Element(f"{{{ENV_NS}}}Environment", {f"{{{ENV_NS}}}id": spec.name})
    platform = ET.SubElement(root, f"{{{ENV_NS}}}PlatformSection")
    ET.SubElement(platform, f"{{{ENV_NS}}}Kind").text = kind
    section = ET.SubElement(root, f"{{{ENV_NS}}}PropertySection")
    for prop in spec.properties:
        value = values.get(prop.key, prop.default_text)
        ET.SubElement(
            section, f"{{{ENV_NS}}}Property", {f"{{{ENV_NS}}}key": prop.key, f"{{{ENV_NS}}}value": value}
        )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

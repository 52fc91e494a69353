"""The OVF descriptor: XSD-valid for every controller/NIC/firmware, and saying what the spec says."""

from __future__ import annotations

import dataclasses
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.ovf import (
    VMDK_FORMAT,
    DiskInfo,
    render_ovf,
    render_ovf_environment,
    validate_ovf,
    validate_ovf_environment,
)
from appliance.spec import PROPERTY_KEYS, DiskController, Firmware, Nic, Spec, load_spec
from appliance.vmdk import VmdkInfo

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / ".." / "shared" / "schemas" / "ovf"
NS = {
    "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
    "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "vmw": "http://www.vmware.com/schema/ovf",
}
OVF = "{" + NS["ovf"] + "}"
VMW = "{" + NS["vmw"] + "}"
DISK = DiskInfo(
    href="gateway-0.1.0-disk1.vmdk", size=123_456_789, capacity=8 << 30, populated_size=1_500_000_000
)

CONTROLLERS = {
    DiskController.PVSCSI: ("6", "VirtualSCSI"),
    DiskController.LSILOGIC: ("6", "lsilogic"),
    DiskController.LSILOGICSAS: ("6", "lsilogicsas"),
    DiskController.SATA: ("20", "vmware.sata.ahci"),
    DiskController.IDE: ("5", None),
}
NICS = {Nic.VMXNET3: "VmxNet3", Nic.E1000: "E1000", Nic.E1000E: "E1000e", Nic.VIRTIO: "virtio"}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "appliance.yaml")


@pytest.fixture(scope="module")
def schemas() -> Path:
    if not (SCHEMAS / "DSP8023.xsd").is_file():
        pytest.fail(f"the DMTF OVF schemas are expected in {SCHEMAS.resolve()} (../shared beside the clone)")
    return SCHEMAS


def with_hardware(spec: Spec, **changes: object) -> Spec:
    return dataclasses.replace(spec, hardware=dataclasses.replace(spec.hardware, **changes))


def items(root: ET.Element) -> list[dict[str, str]]:
    out = []
    for item in root.iterfind(".//ovf:VirtualHardwareSection/ovf:Item", NS):
        fields = {
            child.tag.split("}")[1]: child.text or ""
            for child in item
            if child.tag.startswith("{" + NS["rasd"])
        }
        fields["required"] = item.get(f"{OVF}required", "true")
        out.append(fields)
    return out


COMBOS = list(itertools.product(DiskController, Nic, Firmware))


@pytest.mark.parametrize(("controller", "nic", "firmware"), COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_hardware_combination_validates(
    spec: Spec, schemas: Path, controller: DiskController, nic: Nic, firmware: Firmware
) -> None:
    variant = with_hardware(spec, disk_controller=controller, nic=nic, firmware=firmware)
    text = render_ovf(variant, DISK)
    validate_ovf(text, schemas)
    root = ET.fromstring(text)
    by_type: dict[str, list[dict[str, str]]] = {}
    for item in items(root):
        by_type.setdefault(item["ResourceType"], []).append(item)

    rtype, subtype = CONTROLLERS[controller]
    disk = by_type["17"][0]
    parent = next(i for i in items(root) if i["InstanceID"] == disk["Parent"])
    assert parent["ResourceType"] == rtype
    assert parent.get("ResourceSubType") == subtype
    assert disk["HostResource"] == "ovf:/disk/vmdisk1"

    (eth,) = by_type["10"]
    assert eth["ResourceSubType"] == NICS[nic]
    networks = [n.get(f"{OVF}name") for n in root.iterfind(".//ovf:NetworkSection/ovf:Network", NS)]
    assert eth["Connection"] in networks

    (cdrom,) = by_type["15"]  # the ISO transport needs a CD-ROM drive
    cd_parent = next(i for i in items(root) if i["InstanceID"] == cdrom["Parent"])
    assert cd_parent["ResourceType"] == "5"
    ide_addresses = [i["Address"] for i in by_type["5"]]
    assert len(set(ide_addresses)) == len(ide_addresses)  # two IDE controllers never share an address
    ids = [i["InstanceID"] for i in items(root)]
    assert len(set(ids)) == len(ids)

    hw = root.find(".//ovf:VirtualHardwareSection", NS)
    assert hw is not None
    config = {c.get(f"{VMW}key"): c.get(f"{VMW}value") for c in hw.findall("vmw:Config", NS)}
    if firmware is Firmware.EFI:
        assert config["firmware"] == "efi"
    else:
        assert "firmware" not in config


def test_descriptor_content(spec: Spec, schemas: Path) -> None:
    root = ET.fromstring(render_ovf(spec, DISK))
    assert root.tag == f"{OVF}Envelope"
    file = root.find("ovf:References/ovf:File", NS)
    assert file is not None
    assert file.get(f"{OVF}href") == "gateway-0.1.0-disk1.vmdk"
    assert file.get(f"{OVF}size") == "123456789"
    disk = root.find("ovf:DiskSection/ovf:Disk", NS)
    assert disk is not None
    assert disk.get(f"{OVF}capacity") == str(8 << 30)
    assert disk.get(f"{OVF}capacityAllocationUnits") == "byte"
    assert disk.get(f"{OVF}populatedSize") == "1500000000"
    assert disk.get(f"{OVF}format") == VMDK_FORMAT
    assert disk.get(f"{OVF}fileRef") == file.get(f"{OVF}id")

    assert root.findtext(".//vssd:VirtualSystemType", namespaces=NS) == "vmx-14"
    os_section = root.find(".//ovf:OperatingSystemSection", NS)
    assert os_section is not None and os_section.get(f"{OVF}id") == "96"
    hw = root.find(".//ovf:VirtualHardwareSection", NS)
    assert hw is not None and hw.get(f"{OVF}transport") == "com.vmware.guestInfo iso"

    by_type = {i["ResourceType"]: i for i in items(root)}
    assert by_type["3"]["VirtualQuantity"] == str(spec.hardware.vcpus)
    assert by_type["4"]["VirtualQuantity"] == str(spec.hardware.memory_mib)
    assert by_type["4"]["AllocationUnits"] == "byte * 2^20"

    product = root.find(".//ovf:ProductSection", NS)
    assert product is not None
    assert product.findtext("ovf:Product", namespaces=NS) == spec.product.product
    assert product.findtext("ovf:Version", namespaces=NS) == spec.version


def test_properties(spec: Spec) -> None:
    root = ET.fromstring(render_ovf(spec, DISK))
    props = {p.get(f"{OVF}key"): p for p in root.iterfind(".//ovf:ProductSection/ovf:Property", NS)}
    assert tuple(props) == PROPERTY_KEYS
    for key, prop in props.items():
        assert prop.get(f"{OVF}userConfigurable") == "true", key
        assert prop.findtext("ovf:Label", namespaces=NS), key
        assert prop.findtext("ovf:Description", namespaces=NS), key
        assert prop.get(f"{OVF}type") == "string", key
    secrets = {k for k, p in props.items() if p.get(f"{OVF}password") == "true"}
    assert secrets == {"gateway.join_token", "admin.password_hash"}
    assert props["network.mode"].get(f"{OVF}qualifiers") == 'ValueMap{"dhcp","static"}'
    assert props["network.mode"].get(f"{OVF}value") == "dhcp"
    assert props["gateway.join_token"].get(f"{OVF}qualifiers") == "MaxLen(4096)"
    assert props["network.address"].get(f"{OVF}qualifiers") is None
    categories = [c.text for c in root.iterfind(".//ovf:ProductSection/ovf:Category", NS)]
    assert categories == ["Management plane", "Network", "Proxy", "Administration"]


def test_text_is_escaped(spec: Spec, schemas: Path) -> None:
    nasty = "R&D <appliance> \"quoted\" 'single'"
    variant = dataclasses.replace(
        spec,
        product=dataclasses.replace(spec.product, annotation=nasty, vendor=nasty),
        hardware=dataclasses.replace(spec.hardware, network="Lab & Test"),
    )
    text = render_ovf(variant, DISK)
    validate_ovf(text, schemas)
    root = ET.fromstring(text)
    assert root.findtext(".//ovf:Annotation", namespaces=NS) == nasty
    assert root.findtext(".//ovf:Vendor", namespaces=NS) == nasty
    assert root.find(".//ovf:Network", NS).get(f"{OVF}name") == "Lab & Test"  # type: ignore[union-attr]


def test_efi_and_vmx_version(spec: Spec, schemas: Path) -> None:
    variant = with_hardware(spec, firmware=Firmware.EFI, vmx_version=20)
    text = render_ovf(variant, DISK)
    validate_ovf(text, schemas)
    assert '<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>' in text
    assert "<vssd:VirtualSystemType>vmx-20</vssd:VirtualSystemType>" in text
    assert 'vmw:osType="debian12_64Guest"' in text


def test_schema_errors_are_one_line(spec: Spec, schemas: Path) -> None:
    text = render_ovf(spec, DISK).replace('ovf:diskId="vmdisk1" ', "")
    with pytest.raises(ApplianceError) as info:
        validate_ovf(text, schemas)
    assert str(info.value).startswith(
        "OVF descriptor at /ovf:Envelope/ovf:DiskSection/ovf:Disk: missing required"
    )
    assert "\n" not in str(info.value)
    with pytest.raises(ApplianceError, match="no DSP8023.xsd here"):
        validate_ovf(text, Path("/nonexistent"))


def test_disk_info_from_vmdk(tmp_path: Path) -> None:
    info = VmdkInfo(
        tmp_path / "x-disk1.vmdk", capacity=4096, populated_size=0, file_size=2048, sha256="0", grains=0
    )
    assert DiskInfo.from_vmdk(info) == DiskInfo("x-disk1.vmdk", 2048, 4096, 0)
    assert DiskInfo.from_vmdk(info, "other.vmdk").href == "other.vmdk"


def test_ovf_environment_validates_and_first_boot_reads_it(spec: Spec, schemas: Path) -> None:
    from firstboot.seeds.ovfenv import parse

    values = {
        "gateway.plane_url": "https://plane.example.com",
        "gateway.join_token": 'tok&<"en>',
        "network.mode": "static",
        "network.address": "192.0.2.10/24",
    }
    text = render_ovf_environment(spec, values)
    validate_ovf_environment(text, schemas)
    parsed = parse(text)
    assert set(parsed) == set(PROPERTY_KEYS)
    for key in PROPERTY_KEYS:
        assert parsed[key] == values.get(key, spec.property(key).default_text)


def test_ovf_environment_rejects_what_the_ovf_does_not_declare(spec: Spec) -> None:
    with pytest.raises(ApplianceError, match=r"^OVF environment: unknown property 'network.colour'"):
        render_ovf_environment(spec, {"network.colour": "blue"})
    with pytest.raises(
        ApplianceError, match=r"^OVF environment: network.mode: 'auto' is not one of dhcp, static$"
    ):
        render_ovf_environment(spec, {"network.mode": "auto"})

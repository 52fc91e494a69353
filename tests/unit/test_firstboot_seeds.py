"""Seed sources against real files: credentials dir, ovf-env.xml (valid under DSP8027), and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
import xmlschema

from firstboot.errors import FirstbootError
from firstboot.seeds import SeedContext, credentials, merge, ovfenv, resolve
from firstboot.system import System
from tests.unit.test_firstboot_settings import make_token

SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas" / "ovf"
OVFENV_NS = "http://schemas.dmtf.org/ovf/environment/1"
CIM_NS = "http://schemas.dmtf.org/wbem/wscim/1/common"


def ovf_env(props: dict[str, str]) -> str:
    """An OVF environment like vSphere writes; DSP8027 wants foreign sections after the entities."""
    lines = "\n".join(f'      <Property oe:key="{k}" oe:value="{v}"/>' for k, v in props.items())
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="{OVFENV_NS}" xmlns:oe="{OVFENV_NS}"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-42">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.2</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
{lines}
   </PropertySection>
   <Entity oe:id="sibling">
      <PropertySection>
         <Property oe:key="network.hostname" oe:value="not-me"/>
      </PropertySection>
   </Entity>
   <ve:EthernetAdapterSection>
      <ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network" ve:unitNumber="7"/>
   </ve:EthernetAdapterSection>
</Environment>
"""


@pytest.fixture(scope="module")
def dsp8027() -> xmlschema.XMLSchema:
    if not (SCHEMAS / "DSP8027.xsd").exists():
        pytest.skip(f"OVF schemas not found at {SCHEMAS}")
    return xmlschema.XMLSchema(
        str(SCHEMAS / "DSP8027.xsd"), locations=[(CIM_NS, str(SCHEMAS / "common.xsd"))]
    )


def test_ovf_env_fixture_is_valid_dsp8027_and_parses(tmp_path: Path, dsp8027: xmlschema.XMLSchema) -> None:
    token = make_token()
    path = tmp_path / "ovf-env.xml"
    path.write_text(
        ovf_env({"gateway.join_token": token, "network.mode": "dhcp", "network.hostname": "gw-7"})
    )
    dsp8027.validate(str(path))
    assert ovfenv.read_file(path) == {
        "gateway.join_token": token,
        "network.mode": "dhcp",
        "network.hostname": "gw-7",
    }


def test_ovf_env_found_on_iso_tree_with_uppercase_name(tmp_path: Path) -> None:
    (tmp_path / "OVF-ENV.XML").write_text(ovf_env({"network.ntp": "ntp.example.com"}))
    found = ovfenv.find_in_dir(tmp_path)
    assert found is not None and ovfenv.read_file(found) == {"network.ntp": "ntp.example.com"}
    assert ovfenv.find_in_dir(tmp_path / "nothing") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<Environment", "x/ovf-env.xml: not a valid OVF environment: unclosed token"),
        ("<Envelope xmlns='urn:x'/>", "x/ovf-env.xml: root element is {urn:x}Envelope, expected"),
        (
            f"<Environment xmlns='{OVFENV_NS}'><PropertySection><Property/></PropertySection></Environment>",
            "x/ovf-env.xml: a Property lacks ovfenv:key or ovfenv:value",
        ),
        (
            '<!DOCTYPE x [<!ENTITY a "aaaa">]><Environment>&a;</Environment>',
            "x/ovf-env.xml: not a valid OVF environment: EntitiesForbidden",
        ),
    ],
)
def test_bad_ovf_env(text: str, message: str) -> None:
    with pytest.raises(FirstbootError) as exc:
        ovfenv.parse(text, "x/ovf-env.xml")
    assert str(exc.value).startswith(message)


def test_credentials_dir(tmp_path: Path) -> None:
    (tmp_path / "gateway.join_token").write_text("GWJ1.abc\n")
    (tmp_path / "network.mode").write_text("static")
    (tmp_path / "unrelated").write_text("x")
    assert credentials.read_dir(tmp_path) == {"gateway.join_token": "GWJ1.abc", "network.mode": "static"}
    (tmp_path / "network.dns").write_bytes(b"\xff\xfe")
    with pytest.raises(FirstbootError, match=r"network.dns: credential is not UTF-8 text$"):
        credentials.read_dir(tmp_path)


def test_credentials_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "network.hostname").write_text("gw-env")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    got = resolve(SeedContext(system=System.for_args(str(tmp_path / "root"))))
    assert got.values == {"network.hostname": "gw-env"}
    assert got.sources == {"network.hostname": "credentials"}


def test_precedence_credentials_beat_ovf_env_and_empty_values_fall_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "network.hostname").write_text("from-creds")
    (creds / "network.ntp").write_text("")  # an empty credential does not hide the OVF value
    env = tmp_path / "ovf-env.xml"
    env.write_text(
        ovf_env({"network.hostname": "from-ovf", "network.ntp": "ntp.example.com", "network.mode": "dhcp"})
    )
    got = resolve(SeedContext(system=System.for_args(str(tmp_path)), credentials_dir=creds, ovf_env_file=env))
    assert got.values == {
        "network.hostname": "from-creds",
        "network.ntp": "ntp.example.com",
        "network.mode": "dhcp",
    }
    assert got.sources == {
        "network.hostname": "credentials",
        "network.ntp": "ovf-env",
        "network.mode": "ovf-env",
    }


def test_merge_is_ordered_and_drops_unknown_keys() -> None:
    got = merge(
        [("a", {"network.mode": "static", "bogus": "1"}), ("b", {"network.mode": "dhcp", "proxy.url": "x"})]
    )
    assert dict(got.values) == {"network.mode": "static", "proxy.url": "x"}
    assert dict(got.sources) == {"network.mode": "a", "proxy.url": "b"}


def test_no_probing_in_root_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    system = System.for_args(str(tmp_path))
    assert resolve(SeedContext(system=system)).values == {}
    assert system.recorded == []  # no mount, blkid or vmware-rpctool

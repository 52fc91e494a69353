"""The shipped policies' rules that real SDKs needed: version discovery, secure boot, govc's wide properties.

Bodies are the servers' own (vcsim, sushy-tools, Keystone 22, the Glance api-ref), with a
CANARY in every value that must stay behind.
"""

from __future__ import annotations

import json

import pytest

from gateway.filter.metadata_filter import Allowed, FilterRequest, FilterResponse, filter_response
from gateway.filter.policy import PolicySet, default_policy_dirs, load_policies

JSON = {"content-type": "application/json"}
XML = {"content-type": "text/xml; charset=utf-8"}


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return load_policies(default_policy_dirs()[:1])


def run(
    shipped: PolicySet,
    kind: str,
    path: str,
    status: int,
    headers: dict[str, str],
    body: bytes,
    request: bytes | None = None,
) -> Allowed:
    method = "GET" if request is None else "POST"
    out = filter_response(
        shipped, kind, FilterRequest(method, path, {}, request), FilterResponse(status, headers, body)
    )
    assert isinstance(out, Allowed), out
    assert b"CANARY" not in out.body
    return out


def test_keystone_and_nova_version_documents_keep_the_self_link(shipped: PolicySet) -> None:
    doc = {
        "version": {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": "http://keystone:5000/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
            "extra": "CANARY",
        }
    }
    out = run(shipped, "openstack-keystone", "/v3", 200, JSON, json.dumps(doc).encode())
    assert json.loads(out.body)["version"]["links"] == [{"rel": "self", "href": "http://keystone:5000/v3/"}]
    doc["version"].update(version="2.79", min_version="2.1", id="v2.1")
    out = run(shipped, "openstack-nova", "/v2.1", 200, JSON, json.dumps(doc).encode())
    assert json.loads(out.body)["version"]["min_version"] == "2.1"


def test_glance_version_list_passes_with_its_300(shipped: PolicySet) -> None:
    doc = {
        "versions": [
            {"id": "v2.9", "status": "CURRENT", "links": [{"rel": "self", "href": "http://glance:9292/v2/"}]},
            {"id": "v2.7", "status": "SUPPORTED", "links": [], "note": "CANARY"},
        ]
    }
    out = run(shipped, "openstack-glance", "/", 300, JSON, json.dumps(doc).encode())
    assert out.status == 300
    assert [v["id"] for v in json.loads(out.body)["versions"]] == ["v2.9", "v2.7"]


def test_redfish_secure_boot_keeps_its_state_not_its_key_databases(shipped: PolicySet) -> None:
    doc = {
        "@odata.type": "#SecureBoot.v1_1_0.SecureBoot",
        "@odata.id": "/redfish/v1/Systems/1/SecureBoot",
        "Id": "SecureBoot",
        "Name": "UEFI Secure Boot",
        "SecureBootEnable": True,
        "SecureBootCurrentBoot": "Enabled",
        "SecureBootMode": "DeployedMode",
        "SecureBootDatabases": {"@odata.id": "/CANARY/SecureBootDatabases"},
        "Actions": {"#SecureBoot.ResetKeys": {"target": "/CANARY/ResetKeys"}},
        "Oem": {"Vendor": "CANARY"},
    }
    out = run(shipped, "redfish", "/redfish/v1/Systems/1/SecureBoot", 200, JSON, json.dumps(doc).encode())
    assert json.loads(out.body)["SecureBootMode"] == "DeployedMode"


def test_redfish_boot_choices_are_kept(shipped: PolicySet) -> None:
    doc = {
        "@odata.id": "/redfish/v1/Systems/1",
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "Id": "1",
        "Name": "s",
        "Boot": {
            "BootSourceOverrideTarget": "Hdd",
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"],
            "UefiTargetBootSourceOverride": "CANARY-device-path",
            "HttpBootUri": "http://CANARY@boot/image",
        },
    }
    out = run(shipped, "redfish", "/redfish/v1/Systems/1", 200, JSON, json.dumps(doc).encode())
    assert json.loads(out.body)["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"] == ["Pxe", "Hdd"]


def test_vsphere_version_discovery(shipped: PolicySet) -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<namespaces version="1.0"><namespace><name>urn:vim25</name>'
        b"<version>6.5</version><priorVersions><version>6.0</version></priorVersions>"
        b"<secret>CANARY</secret></namespace></namespaces>"
    )
    out = run(shipped, "vsphere-soap", "/sdk/vimServiceVersions.xml", 200, XML, body)
    assert b"<version>6.5</version>" in out.body and b'version="1.0"' in out.body


SOAP_REQUEST = (
    b'<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<soapenv:Body><RetrieveProperties xmlns="urn:vim25"/></soapenv:Body></soapenv:Envelope>'
)


def _retrieve_response(obj: str, name: str, val: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope'
        ' xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<RetrievePropertiesResponse xmlns="urn:vim25"><returnval>'
        f"<obj>{obj}</obj><propSet><name>{name}</name><val>{val}</val></propSet>"
        "</returnval></RetrievePropertiesResponse></soapenv:Body></soapenv:Envelope>"
    ).encode()


def test_govcs_session_check_sees_who_is_logged_in_not_the_session_key(shipped: PolicySet) -> None:
    val = (
        "<key>CANARY-session-key</key><userName>VSPHERE.LOCAL\\ops</userName><fullName>Ops</fullName>"
        "<loginTime>2026-01-01T00:00:00Z</loginTime><ipAddress>CANARY-10.1.2.3</ipAddress>"
        "<userAgent>CANARY-agent</userAgent>"
    )
    body = _retrieve_response("SessionManager", "currentSession", val)
    out = run(shipped, "vsphere-soap", "/sdk", 200, XML, body, request=SOAP_REQUEST)
    assert b"<userName>VSPHERE.LOCAL\\ops</userName>" in out.body and b"<loginTime>" in out.body


def test_govcs_datastore_info_keeps_location_not_the_nfs_principal(shipped: PolicySet) -> None:
    val = (
        "<name>nfs-1</name><url>ds:///vmfs/volumes/abc/</url><freeSpace>100</freeSpace>"
        "<nas><name>nfs-1</name><remoteHost>filer</remoteHost><remotePath>/export</remotePath>"
        "<userName>CANARY-kerberos-principal</userName></nas>"
    )
    body = _retrieve_response("datastore-1", "info", val)
    out = run(shipped, "vsphere-soap", "/sdk", 200, XML, body, request=SOAP_REQUEST)
    assert b"<remoteHost>filer</remoteHost>" in out.body and b"<freeSpace>100</freeSpace>" in out.body

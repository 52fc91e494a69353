"""Table tests for every shipped policy: metadata kept, no canary leaves, denied endpoints denied.

Fixtures under fixtures/filter/ are written field by field from the public API references
(vSphere Automation API, vSphere Web Services SDK, DMTF Redfish schema, OpenStack api-ref).
Every field that must not leave holds a value (or key) containing "CANARY".
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.filter.metadata_filter import (
    Allowed,
    Denied,
    FilterRequest,
    FilterResponse,
    check_request,
    filter_response,
)
from gateway.filter.policy import Kind, PolicySet, Rule, default_policy_dirs, load_policies

FIXTURES = Path(__file__).parent / "fixtures" / "filter"
CANARY = b"CANARY"


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return load_policies(default_policy_dirs()[:1])


@dataclass(frozen=True)
class Case:
    kind: str
    path: str
    fixture: str
    keep: tuple[str, ...]  # substrings of the output that prove metadata survived
    method: str = "GET"
    status: int = 200
    ctype: str = "application/json"
    request: str | None = None  # request body fixture (SOAP)
    headers: dict[str, str] = field(default_factory=dict)
    keep_headers: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.method}:{self.path}"


SOAP = "text/xml; charset=utf-8"
CASES = [
    # vSphere REST
    Case(
        "vsphere",
        "/api/vcenter/vm",
        "vsphere/vm-list.json",
        ('"vm-1002"', '"memory_size_MiB":32768', "POWERED_OFF"),
    ),
    Case("vsphere", "/api/vcenter/vm?power_states=POWERED_ON", "vsphere/vm-list.json", ("web-01",)),
    Case("vsphere", "/rest/vcenter/vm", "vsphere/rest-vm-list.json", ('"value":[{"vm":"vm-1001"',)),
    Case(
        "vsphere",
        "/api/vcenter/vm/vm-1001",
        "vsphere/vm.json",
        (
            "UBUNTU_64",
            "4231d1a0",
            "[datastore1] web-01/web-01.vmdk",
            "00:50:56:a1:b2:c3",
            "prod-vlan10",
            "PVSCSI",
        ),
    ),
    Case(
        "vsphere",
        "/api/vcenter/vm/vm-1001/guest/identity",
        "vsphere/guest-identity.json",
        ("web-01.corp.local",),
    ),
    Case(
        "vsphere",
        "/api/vcenter/vm/vm-1001/guest/networking/interfaces",
        "vsphere/guest-interfaces.json",
        ('"ip_address":"10.0.10.21"', '"prefix_length":24'),
    ),
    Case("vsphere", "/api/vcenter/host", "vsphere/host-list.json", ("esx01.corp.local", "CONNECTED")),
    Case("vsphere", "/api/vcenter/cluster", "vsphere/cluster-list.json", ('"drs_enabled":true',)),
    Case("vsphere", "/api/vcenter/datastore", "vsphere/datastore-list.json", ("2199023255552",)),
    Case("vsphere", "/api/vcenter/network", "vsphere/network-list.json", ("DISTRIBUTED_PORTGROUP",)),
    Case("vsphere", "/api/session", "vsphere/session.json", ("b00a4cba",), method="POST"),
    Case(
        "vsphere", "/api/vcenter/vm/vm-9", "vsphere/error.json", ("NOT_FOUND", "does not exist"), status=404
    ),
    # vSphere SOAP
    Case(
        "vsphere-soap",
        "/sdk",
        "vsphere-soap/retrieve-vms.xml",
        (
            'type="VirtualMachine">vm-1001</obj>',
            "<name>runtime.powerState</name>",
            "poweredOn",
            'xsi:type="xsd:int">2<',
            "<ipAddress>10.0.10.21</ipAddress>",
            "<path>guest.net</path>",
            'xsi:type="NoPermission"',
        ),
        method="POST",
        ctype=SOAP,
        request="vsphere-soap/retrieve-request.xml",
    ),
    Case(
        "vsphere-soap",
        "/sdk",
        "vsphere-soap/login-response.xml",
        ("svc-inventory", "<locale>en</locale>"),
        method="POST",
        ctype=SOAP,
        request="vsphere-soap/login-request.xml",
        headers={"Set-Cookie": 'vmware_soap_session="52b1"; Path=/; HttpOnly; Secure'},
        keep_headers=("set-cookie",),
    ),
    Case(
        "vsphere-soap",
        "/sdk",
        "vsphere-soap/fault.xml",
        ("ServerFaultCode", "not authenticated", "NotAuthenticatedFault", 'xsi:type="NotAuthenticated"'),
        method="POST",
        status=500,
        ctype=SOAP,
        request="vsphere-soap/retrieve-request.xml",
    ),
    # Redfish
    Case(
        "redfish", "/redfish/v1/", "redfish/root.json", ('"RedfishVersion":"1.15.0"', "/redfish/v1/Systems")
    ),
    Case(
        "redfish", "/redfish/v1/Systems", "redfish/systems.json", ('"Members@odata.count":1', "437XR1138R2")
    ),
    Case(
        "redfish",
        "/redfish/v1/Systems/437XR1138R2",
        "redfish/system.json",
        (
            '"@odata.id":"/redfish/v1/Systems/437XR1138R2"',
            '"SerialNumber":"437XR1138R2"',
            '"PowerState":"On"',
            '"TotalSystemMemoryGiB":96',
            '"BootSourceOverrideTarget"',
        ),
    ),
    Case(
        "redfish",
        "/redfish/v1/Systems/437XR1138R2/Processors/CPU1",
        "redfish/processor.json",
        ('"TotalCores":8',),
    ),
    Case(
        "redfish",
        "/redfish/v1/Systems/437XR1138R2/EthernetInterfaces/1",
        "redfish/ethernet.json",
        ("12:44:6A:3B:04:11", "192.168.0.10", "fe80::"),
    ),
    Case(
        "redfish",
        "/redfish/v1/Chassis/1U",
        "redfish/chassis.json",
        ('"ChassisType":"RackMount"', '"ServiceLabel":"U12"'),
    ),
    Case(
        "redfish",
        "/redfish/v1/Chassis/1U/Power",
        "redfish/power.json",
        ('"PowerConsumedWatts":344', '"ReadingVolts":12'),
    ),
    Case(
        "redfish",
        "/redfish/v1/Chassis/1U/Thermal",
        "redfish/thermal.json",
        ('"ReadingCelsius":41', '"Reading":2100'),
    ),
    Case("redfish", "/redfish/v1/Managers/BMC", "redfish/manager.json", ('"FirmwareVersion":"4.4.6521"',)),
    Case(
        "redfish",
        "/redfish/v1/SessionService/Sessions",
        "redfish/session.json",
        ('"UserName":"svc-inventory"',),
        method="POST",
        status=201,
        headers={
            "X-Auth-Token": "bmc-token-1",
            "Location": "/redfish/v1/SessionService/Sessions/1234567890ABCDEF",
        },
        keep_headers=("x-auth-token", "location"),
    ),
    Case(
        "redfish",
        "/redfish/v1/Systems/nope",
        "redfish/error.json",
        ("Base.1.18.ResourceNotFound",),
        status=404,
    ),
    # OpenStack
    Case(
        "openstack-keystone",
        "/v3/auth/tokens",
        "openstack/keystone-token.json",
        ('"expires_at"', '"name":"reader"', "https://nova.example.org:8774/v2.1"),
        method="POST",
        status=201,
        headers={"X-Subject-Token": "gAAAAABplaneowned"},
        keep_headers=("x-subject-token",),
    ),
    Case(
        "openstack-keystone",
        "/v3/projects",
        "openstack/keystone-projects.json",
        ('"name":"admin"', '"tags":["prod"]'),
    ),
    Case(
        "openstack-keystone",
        "/v3/users",
        "openstack/keystone-users.json",
        ('"name":"alice"', '"domain_id":"default"'),
    ),
    Case("openstack-keystone", "/v3/domains", "openstack/keystone-domains.json", ('"name":"Default"',)),
    Case(
        "openstack-nova",
        "/v2.1/servers/detail?limit=1",
        "openstack/nova-servers-detail.json",
        (
            '"status":"ACTIVE"',
            '"addr":"192.168.1.30"',
            '"OS-EXT-STS:vm_state":"active"',
            '"original_name":"m1.small"',
            '"hw:cpu_policy":"shared"',
            '"message":"No valid host was found."',
            "marker=9168",
        ),
        headers={"X-OpenStack-Request-ID": "req-abc"},
        keep_headers=("x-openstack-request-id",),
    ),
    Case(
        "openstack-nova",
        "/v2.1/flavors/detail",
        "openstack/nova-flavors-detail.json",
        ('"ram":512', "hw:numa_nodes"),
    ),
    Case(
        "openstack-cinder",
        "/v3/bab7d5c6/volumes/detail",
        "openstack/cinder-volumes-detail.json",
        ('"size":10', '"device":"/dev/vdb"', '"image_name":"cirros"', "node1@lvm#lvm"),
    ),
    Case(
        "openstack-cinder",
        "/v3/bab7d5c6/snapshots/detail",
        "openstack/cinder-snapshots-detail.json",
        ('"name":"snap-001"', "100%"),
    ),
    Case(
        "openstack-glance",
        "/v2/images",
        "openstack/glance-images.json",
        ('"disk_format":"qcow2"', '"os_distro":"cirros"', '"checksum":"c352f4e7', '"first":"/v2/images"'),
    ),
    Case(
        "openstack-neutron",
        "/v2.0/ports",
        "openstack/neutron-ports.json",
        ('"mac_address":"fa:16:3e:58:42:ed"', "ovs"),
    ),
    Case(
        "openstack-neutron",
        "/v2.0/networks",
        "openstack/neutron-networks.json",
        ('"provider:segmentation_id":1001',),
    ),
    Case(
        "openstack-neutron", "/v2.0/routers", "openstack/neutron-routers.json", ('"ip_address":"172.24.4.6"',)
    ),
    Case(
        "openstack-heat",
        "/v1/3ab5b02f/stacks/web-tier/3095aefc",
        "openstack/heat-stack.json",
        ('"stack_status":"CREATE_COMPLETE"', '"OS::stack_name":"web-tier"', '"output_key":"admin_url"'),
    ),
    Case(
        "openstack-heat",
        "/v1/3ab5b02f/stacks/web-tier/3095aefc/resources",
        "openstack/heat-resources.json",
        ('"resource_type":"OS::Heat::RandomString"',),
    ),
    Case(
        "openstack-gnocchi",
        "/v1/metric",
        "openstack/gnocchi-metrics.json",
        ('"archive_policy_name":"ceilometer-low"',),
    ),
    Case(
        "openstack-gnocchi",
        "/v1/metric/b7ac8d52/measures?start=2026-11-25T08:00:00&granularity=300",
        "openstack/gnocchi-measures.json",
        ('["2026-11-25T08:00:00+00:00",300.0,12.5]',),
    ),
    Case(
        "openstack-gnocchi",
        "/v1/resource/instance",
        "openstack/gnocchi-resources.json",
        ('"flavor_name":"m1.tiny"',),
    ),
    Case(
        "openstack-aodh",
        "/v2/alarms",
        "openstack/aodh-alarms.json",
        ('"name":"cpu_high"', '"threshold":80.0', '"comparison_operator":"gt"'),
    ),
    Case(
        "openstack-murano",
        "/v1/environments/0ce373a4",
        "openstack/murano-environment.json",
        ('"status":"ready"', '"type":"io.murano.databases.MySql"', '"name":"MySQL"'),
    ),
    Case(
        "openstack-murano",
        "/v1/catalog/packages",
        "openstack/murano-packages.json",
        ('"categories":["Databases"]',),
    ),
]


def _request(case: Case) -> FilterRequest:
    body = (FIXTURES / case.request).read_bytes() if case.request else None
    return FilterRequest(case.method, case.path, {"X-Auth-Token": "plane-token"}, body)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_shipped_policy_keeps_metadata_and_no_canary(shipped: PolicySet, case: Case) -> None:
    req = _request(case)
    rule = check_request(shipped, case.kind, req)
    assert isinstance(rule, Rule), rule
    raw = (FIXTURES / case.fixture).read_bytes()
    headers = {"Content-Type": case.ctype, "Server": "CANARY-SERVER-BANNER", **case.headers}
    out = filter_response(shipped, case.kind, req, FilterResponse(case.status, headers, raw))
    assert isinstance(out, Allowed), out
    assert out.status == case.status
    assert CANARY not in out.body, out.body
    assert not any(CANARY in v.encode() for v in out.headers.values())
    text = out.body.decode()
    for needle in case.keep:
        assert needle in text, (needle, text)
    for name in case.keep_headers:
        assert out.headers[name] == {k.lower(): v for k, v in case.headers.items()}[name]
    if CANARY in raw:
        assert out.removed > 0
    assert out.kept > 0


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: c.id)
def test_gzip_responses_filter_the_same(shipped: PolicySet, case: Case) -> None:
    req = _request(case)
    raw = (FIXTURES / case.fixture).read_bytes()
    plain = filter_response(shipped, case.kind, req, FilterResponse(200, {"content-type": case.ctype}, raw))
    zipped = FilterResponse(200, {"content-type": case.ctype, "content-encoding": "gzip"}, gzip.compress(raw))
    out = filter_response(shipped, case.kind, req, zipped)
    assert isinstance(out, Allowed) and isinstance(plain, Allowed) and out.body == plain.body


def _soap(name: str) -> bytes:
    return (FIXTURES / "vsphere-soap" / name).read_bytes()


DENIED: list[tuple[str, str, str, bytes | None, str]] = [
    # vSphere REST: guest data, consoles, files.
    ("vsphere", "GET", "/api/vcenter/vm/vm-1/guest/environment", None, "environment"),
    ("vsphere", "POST", "/api/vcenter/vm/vm-1/guest/filesystem?action=create", None, "file transfer"),
    ("vsphere", "GET", "/api/vcenter/vm/vm-1/guest/processes", None, "processes"),
    ("vsphere", "POST", "/api/vcenter/vm/vm-1/console/tickets", None, "console"),
    ("vsphere", "POST", "/api/vcenter/vm/vm-1/power?action=stop", None, "no rule"),
    ("vsphere", "GET", "/api/content/library/item/x/file", None, "content library"),
    ("vsphere", "GET", "/folder/vm1/vm1-flat.vmdk?dcPath=DC&dsName=ds1", None, "never relayed"),
    ("vsphere", "GET", "/api/vcenter/vm/vm-1/guest/ENVIRONMENT", None, "environment"),
    # vSphere SOAP: files, NFC, consoles, tickets, export leases, writes.
    ("vsphere-soap", "GET", "/folder/vm1/vm1-flat.vmdk?dcPath=DC&dsName=ds1", None, "never relayed"),
    ("vsphere-soap", "GET", "/Folder/vm1/vm1.vmx", None, "never relayed"),
    ("vsphere-soap", "GET", "/nfc/52a1/disk-0.vmdk", None, "never relayed"),
    ("vsphere-soap", "GET", "/screen?id=vm-1001", None, "never relayed"),
    ("vsphere-soap", "GET", "/guestFile?id=1&token=x", None, "never relayed"),
    ("vsphere-soap", "GET", "/mob/?moid=SessionManager", None, "never relayed"),
    ("vsphere-soap", "GET", "/host/esx.conf", None, "never relayed"),
    ("vsphere-soap", "POST", "/sdk", _soap("acquire-ticket-request.xml"), "never relayed"),
    ("vsphere-soap", "POST", "/sdk", _soap("acquire-mks-ticket-request.xml"), "never relayed"),
    ("vsphere-soap", "POST", "/sdk", _soap("acquire-clone-ticket-request.xml"), "never relayed"),
    ("vsphere-soap", "POST", "/sdk", _soap("export-vm-request.xml"), "never relayed"),
    ("vsphere-soap", "POST", "/sdk", _soap("nfc-progress-request.xml"), "never relayed"),
    ("vsphere-soap", "POST", "/sdk", _soap("power-off-request.xml"), "not allowed"),
    ("vsphere-soap", "POST", "/sdk", None, "request body"),
    ("vsphere-soap", "POST", "/sdk", b"<notsoap/>", "not a SOAP envelope"),
    ("vsphere-soap", "GET", "/sdk", None, "no rule"),
    # Redfish
    ("redfish", "GET", "/redfish/v1/Systems/1/Bios", None, "BIOS"),
    ("redfish", "PATCH", "/redfish/v1/Systems/1/Bios/Settings", None, "BIOS"),
    ("redfish", "GET", "/redfish/v1/AccountService/Accounts/1", None, "accounts"),
    ("redfish", "GET", "/redfish/v1/Managers/BMC/VirtualMedia/CD1", None, "virtual media"),
    ("redfish", "GET", "/redfish/v1/Managers/BMC/NetworkProtocol", None, "SNMP"),
    ("redfish", "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", None, "no rule"),
    ("redfish", "GET", "/redfish/v1/UpdateService/FirmwareInventory", None, "firmware"),
    # Keystone
    ("openstack-keystone", "GET", "/v3/credentials", None, "credential store"),
    ("openstack-keystone", "GET", "/v3/users/u1/credentials/OS-EC2", None, "EC2"),
    ("openstack-keystone", "GET", "/v3/users/u1/application_credentials", None, "application credentials"),
    ("openstack-keystone", "POST", "/v3/users/u1/password", None, "password"),
    ("openstack-keystone", "POST", "/v3/projects", None, "no rule"),
    # Nova
    ("openstack-nova", "POST", "/v2.1/servers/s1/remote-consoles", None, "console"),
    ("openstack-nova", "POST", "/v2.1/servers/s1/action", None, "console"),
    ("openstack-nova", "GET", "/v2.1/servers/s1/os-server-password", None, "password"),
    ("openstack-nova", "POST", "/v2.1/os-keypairs", None, "private key"),
    ("openstack-nova", "DELETE", "/v2.1/servers/s1", None, "no rule"),
    # Cinder
    ("openstack-cinder", "POST", "/v3/p1/volumes/v1/action", None, "connection secrets"),
    ("openstack-cinder", "GET", "/v3/p1/attachments/a1", None, "connection_info"),
    ("openstack-cinder", "GET", "/v3/p1/backups/b1/export_record", None, "backup"),
    # Glance
    ("openstack-glance", "GET", "/v2/images/i1/file", None, "image data"),
    ("openstack-glance", "PUT", "/v2/images/i1/file", None, "image data"),
    ("openstack-glance", "PUT", "/v2/images/i1/stage", None, "image data"),
    # Neutron
    ("openstack-neutron", "GET", "/v2.0/vpn/ipsec-site-connections", None, "pre-shared keys"),
    ("openstack-neutron", "POST", "/v2.0/ports", None, "no rule"),
    # Heat
    ("openstack-heat", "GET", "/v1/p1/stacks/web/s1/template", None, "hidden"),
    ("openstack-heat", "GET", "/v1/p1/stacks/web/s1/environment", None, "hidden"),
    ("openstack-heat", "GET", "/v1/p1/stacks/web/s1/outputs/admin_url", None, "secrets"),
    ("openstack-heat", "GET", "/v1/p1/stacks/web/s1/files", None, "user data"),
    ("openstack-heat", "GET", "/v1/p1/stacks/web/environment", None, "hidden"),
    ("openstack-heat", "GET", "/v1/p1/stacks/web/template", None, "hidden"),
    ("openstack-heat", "GET", "/v1/p1/stacks/web/outputs", None, "secrets"),
    # Telemetry
    ("openstack-gnocchi", "POST", "/v1/metric/m1/measures", None, "no rule"),
    ("openstack-gnocchi", "GET", "/v1/metric/m1/measures?filter=x", None, "query parameter"),
    ("openstack-aodh", "PUT", "/v2/alarms/a1/state", None, "no rule"),
    # Murano
    ("openstack-murano", "GET", "/v1/catalog/packages/p1/download", None, "package files"),
    ("openstack-murano", "GET", "/v1/catalog/packages/p1/logo", None, "package files"),
    ("openstack-murano", "GET", "/v1/environments/e1/model/", None, "passwords"),
]


@pytest.mark.parametrize(("kind", "method", "path", "body", "reason"), DENIED, ids=lambda v: str(v)[:60])
def test_shipped_policy_denies(
    shipped: PolicySet, kind: str, method: str, path: str, body: bytes | None, reason: str
) -> None:
    out = check_request(shipped, kind, FilterRequest(method, path, {}, body))
    assert isinstance(out, Denied) and reason.lower() in out.reason.lower(), out


def test_every_shipped_kind_has_allow_and_deny_cases() -> None:
    vendor = {k.value for k in Kind} - {"http"}
    assert {c.kind for c in CASES} == vendor
    assert {d[0] for d in DENIED} == vendor


def test_soap_ticket_response_never_leaves_even_if_request_slipped(shipped: PolicySet) -> None:
    # Defence in depth: were a ticket request ever allowed, its response element is not in the allowlist.
    req = FilterRequest("POST", "/sdk", {}, _soap("retrieve-request.xml"))
    resp = FilterResponse(200, {"content-type": SOAP}, _soap("acquire-ticket-response.xml"))
    out = filter_response(shipped, "vsphere-soap", req, resp)
    assert isinstance(out, Allowed) and CANARY not in out.body and b"AcquireTicketResponse" not in out.body


def test_soap_output_is_well_formed_and_keeps_namespaces(shipped: PolicySet) -> None:
    import defusedxml.ElementTree as DET

    req = FilterRequest("POST", "/sdk", {}, _soap("retrieve-request.xml"))
    resp = FilterResponse(200, {"content-type": SOAP}, _soap("retrieve-vms.xml"))
    out = filter_response(shipped, "vsphere-soap", req, resp)
    assert isinstance(out, Allowed)
    root = DET.fromstring(out.body)
    ns = {"s": "http://schemas.xmlsoap.org/soap/envelope/", "v": "urn:vim25"}
    names = [
        e.text
        for e in root.iterfind(
            "s:Body/v:RetrievePropertiesExResponse/v:returnval/v:objects/v:propSet/v:name", ns
        )
    ]
    assert names == ["name", "runtime.powerState", "config.hardware.numCPU", "guest.net", "name"]
    assert b'xmlns:xsd="http://www.w3.org/2001/XMLSchema"' in out.body


def test_json_output_is_valid_json(shipped: PolicySet) -> None:
    for case in CASES:
        if case.ctype != "application/json":
            continue
        req = _request(case)
        raw = (FIXTURES / case.fixture).read_bytes()
        out = filter_response(
            shipped, case.kind, req, FilterResponse(case.status, {"content-type": case.ctype}, raw)
        )
        assert isinstance(out, Allowed)
        json.loads(out.body)


def test_redirect_keeps_only_allowed_headers_and_no_body(shipped: PolicySet) -> None:
    req = FilterRequest("GET", "/v1/p1/stacks/web-tier", {})
    headers = {
        "Content-Type": "text/html",
        "Location": "https://heat/v1/p1/stacks/web-tier/3095",
        "X-Debug": "CANARY",
    }
    out = filter_response(shipped, "openstack-heat", req, FilterResponse(302, headers, b"<a>CANARY</a>"))
    assert isinstance(out, Allowed) and out.status == 302 and out.body == b""
    assert out.headers == {"location": "https://heat/v1/p1/stacks/web-tier/3095"}


def test_head_has_no_body(shipped: PolicySet) -> None:
    req = FilterRequest("HEAD", "/v2.1/servers/detail", {})
    resp = FilterResponse(200, {"Content-Type": "application/json", "Content-Length": "999"}, b"")
    out = filter_response(shipped, "openstack-nova", req, resp)
    assert isinstance(out, Allowed) and out.body == b"" and "content-length" not in out.headers


def test_every_shipped_allow_rule_is_reachable(shipped: PolicySet) -> None:
    # A concrete request built from each allow rule's own pattern must land on that rule:
    # otherwise an earlier rule shadows it (or a deny rule makes it dead).
    for kind, rules in shipped.rules.items():
        for rule in rules:
            if rule.deny:
                continue
            path = "/" + "/".join(
                "x1" if s in ("*", "**") or s.startswith("{") else s for s in rule.path.segments
            )
            body = _soap("retrieve-request.xml") if rule.soap_operations else None
            for method in sorted(rule.methods):
                found = check_request(shipped, kind.value, FilterRequest(method, path, {}, body))
                assert isinstance(found, Rule) and found.name == rule.name, (rule.source, method, path, found)

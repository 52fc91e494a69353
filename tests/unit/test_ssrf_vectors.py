"""SSRF guard: a table of address vectors, numeric host spellings resolved by the system, /proc parsers."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.relay.ssrf import (
    AddressForbidden,
    GuardedResolver,
    check_literal,
    parse_allow,
    parse_fib_trie,
    parse_if_inet6,
    refusal,
)

OWN = frozenset({ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("fd00::3")})


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 around 169.254.169.254
        ("10.1.2.3", "own addresses"),
        ("::ffff:10.1.2.3", "own addresses"),
        ("fd00::3", "own addresses"),
    ],
)
def test_refused(addr: str, why: str) -> None:
    reason = refusal(ipaddress.ip_address(addr), own=OWN)
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    "addr", ["10.0.0.5", "192.168.1.10", "172.16.0.1", "8.8.8.8", "2001:db8::1", "fd00::4"]
)
def test_allowed(addr: str) -> None:
    assert refusal(ipaddress.ip_address(addr), own=OWN) is None


def test_allow_private_overrides_and_covers_mapped_forms() -> None:
    allow = parse_allow(["127.0.0.1", "169.254.0.0/16"], "allow_private")
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allow) is None
    assert refusal(ipaddress.ip_address("169.254.169.254"), allow) is None
    assert refusal(ipaddress.ip_address("127.0.0.2"), allow) is not None


def test_bad_allow_entry_names_the_index() -> None:
    with pytest.raises(Exception, match=r"targets\[0\].allow_private\[1\]: 'nope' is not an IP"):
        parse_allow(["10.0.0.0/8", "nope"], "targets[0].allow_private")


# glibc's resolver accepts inet_aton spellings; the guard sees what will really be connected to.
@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "127.1",
        "017700000001",
        "localhost",
        "0",
        "::ffff:7f00:1",
    ],
)
async def test_numeric_spellings_of_loopback_are_refused_after_resolution(host: str) -> None:
    resolver = GuardedResolver(allow=(), own=())
    with pytest.raises(AddressForbidden, match="refusing to connect"):
        await resolver.resolve(host, 80, 0)


async def test_resolver_returns_allowed_addresses_numerically() -> None:
    resolver = GuardedResolver(allow=parse_allow(["127.0.0.0/8"], "a"), own=())
    results = await resolver.resolve("2130706433", 8080, 0)
    assert [(r["host"], r["port"]) for r in results] == [("127.0.0.1", 8080)]
    assert results[0]["hostname"] == "2130706433"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "169.254.169.254", "[::ffff:127.0.0.1]", "[fe80::1%eth0]"]
)
def test_ip_literals_are_checked_without_resolution(host: str) -> None:
    with pytest.raises(AddressForbidden):
        check_literal(host, (), ())


def test_hostnames_pass_the_literal_check() -> None:
    check_literal("vcenter.lab.local", (), ())


def test_proc_parsers() -> None:
    fib = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 10.1.2.3
           /32 host LOCAL
        |-- 10.1.2.255
           /32 link BROADCAST
"""
    assert parse_fib_trie(fib) == {ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Address("10.1.2.3")}
    inet6 = (
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fe800000000000000000000000000001 02 40 20 80 eth0\n"
    )
    assert parse_if_inet6(inet6) == {ipaddress.IPv6Address("::1"), ipaddress.IPv6Address("fe80::1")}

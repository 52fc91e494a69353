"""SSRF guard: which resolved addresses a target may be connected to, and a resolver that enforces it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges that are never a legitimate remote management endpoint unless a target names them.
_ALWAYS_REFUSED: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "unspecified"),
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("255.255.255.255/32"), "broadcast"),
    (ipaddress.ip_network("240.0.0.0/4"), "reserved"),
    (ipaddress.ip_network("::/128"), "unspecified"),
    (ipaddress.ip_network("::1/128"), "loopback"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("fec0::/10"), "site-local"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)


class AddressForbidden(GatewayError):
    """A target resolved to an address the SSRF guard refuses."""


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv6 form (mapped, compatible, NAT64, 6to4), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    packed = addr.packed
    if packed[:12] == bytes(12) and packed[12:] != bytes(4) and int(addr) > 1:
        return ipaddress.IPv4Address(packed[12:])  # deprecated IPv4-compatible ::a.b.c.d
    if addr in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(packed[12:])
    return None


def refusal(addr: IPAddress, allow: Iterable[IPNetwork] = (), own: Iterable[IPAddress] = ()) -> str | None:
    """Why `addr` must not be connected to (None when it is fine); `allow` overrides every rule."""
    candidates: list[IPAddress] = [addr]
    inner = embedded_ipv4(addr)
    if inner is not None:
        candidates.append(inner)
    allow = tuple(allow)
    if any(a in net for a in candidates for net in allow if a.version == net.version):
        return None
    own_set = set(own)
    for a in candidates:
        if a in own_set:
            return f"{a} is one of the appliance's own addresses"
        for net, why in _ALWAYS_REFUSED:
            if a.version == net.version and a in net:
                return f"{a} is {why}"
    return None


def parse_allow(values: Iterable[str], where: str) -> tuple[IPNetwork, ...]:
    """`allow_private` entries (addresses or CIDRs) to networks; GatewayError naming `where`."""
    nets = []
    for i, value in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise GatewayError(f"{where}[{i}]: {value!r} is not an IP address or CIDR") from None
    return tuple(nets)


# --- the appliance's own addresses (Linux /proc) --------------------------------------------------


def parse_fib_trie(text: str) -> set[ipaddress.IPv4Address]:
    """Local IPv4 addresses from /proc/net/fib_trie (entries followed by `/32 host LOCAL`)."""
    found: set[ipaddress.IPv4Address] = set()
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped == "/32 host LOCAL" and last:
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv4Address(last))
    return found


def parse_if_inet6(text: str) -> set[ipaddress.IPv6Address]:
    """Local IPv6 addresses from /proc/net/if_inet6 (32 hex digits per line)."""
    found: set[ipaddress.IPv6Address] = set()
    for line in text.splitlines():
        parts = line.split()
        if parts and len(parts[0]) == 32:
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv6Address(int(parts[0], 16)))
    return found


def own_addresses(proc: Path = Path("/proc/net")) -> frozenset[IPAddress]:
    """Addresses configured on this machine's interfaces (empty if /proc is unreadable)."""
    found: set[IPAddress] = set()
    try:
        found |= parse_fib_trie((proc / "fib_trie").read_text())
    except OSError as exc:
        log.debug("cannot read fib_trie: %s", exc)
    try:
        found |= parse_if_inet6((proc / "if_inet6").read_text())
    except OSError as exc:
        log.debug("cannot read if_inet6: %s", exc)
    return frozenset(found)


# --- enforcement at connect time -------------------------------------------------------------------


def check_literal(host: str, allow: Iterable[IPNetwork], own: Iterable[IPAddress]) -> None:
    """Refuse a URL host that is an IP literal aiohttp would connect to without resolving."""
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return
    why = refusal(addr, allow, own)
    if why is not None:
        raise AddressForbidden(f"refusing to connect to {host}: {why}")


class GuardedResolver(AbstractResolver):
    """Resolves like the system does, then drops refused addresses; aiohttp connects to what it returns."""

    def __init__(self, allow: Iterable[IPNetwork], own: Iterable[IPAddress]) -> None:
        self.allow = tuple(allow)
        self.own = frozenset(own)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` and keep only addresses the guard allows (AddressForbidden if none)."""
        loop = asyncio.get_running_loop()
        infos: list[Any] = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = []
        reasons = []
        for fam, _type, proto, _canon, sockaddr in infos:
            addr = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            why = refusal(addr, self.allow, self.own)
            if why is not None:
                reasons.append(why)
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(sockaddr[0]),
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise AddressForbidden(f"refusing to connect to {host}: {'; '.join(sorted(set(reasons)))}")
        return results

    async def close(self) -> None:
        """Nothing to release."""

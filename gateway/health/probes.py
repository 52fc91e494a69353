"""The gateway's own probe of each target: TCP, TLS (with the relay's trust rule), one version call.

A probe goes where the relay would go and no further: the SSRF guard resolves and checks the
address (gateway.relay.ssrf), the TLS context is the relay's trust rule for the target (CA file,
pin, system store or insecure: gateway.relay.relay.target_tls), and the one unauthenticated
call per kind is read through the metadata filter's rules for it, of which only version fields
are kept. When the trust rule refuses the certificate, a second handshake without verification
reads what the target now presents (its fingerprint and dates; nothing is sent over it), so the
plane is told that the certificate changed rather than only that TLS failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11
from multidict import CIMultiDict

from gateway.filter.metadata_filter import (
    Allowed,
    Denied,
    FilterRequest,
    FilterResponse,
    check_request,
    filter_response,
)
from gateway.filter.policy import PolicySet
from gateway.relay.relay import target_tls
from gateway.relay.ssrf import AddressForbidden, GuardedResolver, IPAddress, check_literal
from gateway.relay.targets import Target
from gwcore.certs import cert_info
from gwcore.safeload import loads_json

MAX_BODY = 64 * 1024  # a version document is small; more is not read
HTTP_TIMEOUT = 10.0
USER_AGENT = "gateway-health/1"


@dataclass(frozen=True)
class VersionCall:
    """One unauthenticated call for a kind, the policy kind whose rules filter it, and what to keep."""

    path: str
    policy_kind: str
    fields: tuple[str, ...]  # dotted JSON paths, or () for vimServiceVersions' namespaces


_VIM_VERSIONS = VersionCall("/sdk/vimServiceVersions.xml", "vsphere-soap", ())
VERSION_CALLS: dict[str, VersionCall] = {
    "vsphere": _VIM_VERSIONS,
    "vsphere-soap": _VIM_VERSIONS,
    "redfish": VersionCall("/redfish/v1", "redfish", ("RedfishVersion", "Product", "Vendor")),
    "openstack-keystone": VersionCall("/v3", "openstack-keystone", ("version.id", "version.status")),
}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _json_fields(body: bytes, fields: Iterable[str]) -> dict[str, str]:
    try:
        doc = loads_json(body)
    except ValueError:
        return {}
    out = {}
    for path in fields:
        value: Any = doc
        for step in path.split("."):
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            out[path] = str(value)[:256]
    return out


def _vim_versions(body: bytes) -> dict[str, str]:
    import defusedxml.ElementTree as DET  # already loaded by the filter that read this body

    try:
        root = DET.fromstring(body)
    except Exception:  # defusedxml raises several types; a bad document just has no versions
        return {}
    out: dict[str, str] = {}
    for ns in root.iter():
        if ns.tag.rsplit("}", 1)[-1] != "namespace":
            continue
        name = version = None
        for child in ns:
            tag = child.tag.rsplit("}", 1)[-1]
            if tag == "name":
                name = (child.text or "").strip()
            elif tag == "version":
                version = (child.text or "").strip()
        if name and version and len(out) < 16 and name.isprintable() and version.isprintable():
            out[name[:256]] = version[:256]
    return out


def version_fields(call: VersionCall, body: bytes) -> dict[str, str]:
    """The version fields of a filtered body, and nothing else."""
    return _json_fields(body, call.fields) if call.fields else _vim_versions(body)


def filtered_versions(
    policies: PolicySet | None, call: VersionCall, status: int, headers: list[tuple[str, str]], body: bytes
) -> dict[str, str] | None:
    """What the metadata filter lets out of the version call's response, down to version fields.

    None when the filter denies it (no policy for the kind, an error document, ...)."""
    if policies is None:
        return None
    req = FilterRequest("GET", call.path, CIMultiDict())
    rule = check_request(policies, call.policy_kind, req)
    if isinstance(rule, Denied):
        return None
    if not rule.passthrough:
        response = FilterResponse(status, CIMultiDict(headers), body)
        verdict = filter_response(policies, call.policy_kind, req, response)
        if not isinstance(verdict, Allowed):
            return None
        body = verdict.body
    return version_fields(call, body)


class _Result:
    """What one probe found, as the record's target entry."""

    def __init__(self, target: Target) -> None:
        self.entry: dict[str, Any] = {
            "name": target.name,
            "kind": target.kind,
            "state": "up",
            "error": None,
            "checked_at": time.time(),
            "latency_ms": {},
        }

    def fail(self, state: str, error: str) -> dict[str, Any]:
        self.entry["state"] = state
        self.entry["error"] = error[:1024]
        return self.entry


class Prober:
    """Probes targets under the relay's rules; remembers each target's last certificate."""

    def __init__(self, own_addresses: Iterable[IPAddress] = (), concurrency: int = 16) -> None:
        self.own = frozenset(own_addresses)
        self._limit = asyncio.Semaphore(concurrency)
        self.fingerprints: dict[str, str] = {}

    async def probe_all(self, targets: Iterable[Target], policies: PolicySet | None) -> list[dict[str, Any]]:
        """Every target's entry, probed concurrently (bounded), in inventory order."""
        return list(await asyncio.gather(*(self.probe(t, policies) for t in targets)))

    async def probe(self, target: Target, policies: PolicySet | None) -> dict[str, Any]:
        """One target's entry for the health record; never raises for the target's faults."""
        async with self._limit:
            result = _Result(target)
            start = time.monotonic()
            try:
                entry = await self._probe(target, policies, result)
            finally:
                result.entry["latency_ms"]["total"] = _ms(time.monotonic() - start)
            fingerprint = (entry.get("tls") or {}).get("fingerprint")
            if fingerprint is not None:
                previous = self.fingerprints.get(target.name)
                entry["cert_changed"] = previous is not None and previous != fingerprint
                self.fingerprints[target.name] = fingerprint
            return entry

    async def _probe(self, target: Target, policies: PolicySet | None, result: _Result) -> dict[str, Any]:
        entry = result.entry
        url = target.url
        host = url.raw_host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        resolver = GuardedResolver(target.allow_private, self.own)
        t0 = time.monotonic()
        try:
            check_literal(host, target.allow_private, self.own)
            async with asyncio.timeout(target.connect_timeout):
                addrs = await resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except AddressForbidden as exc:
            return result.fail("forbidden", f"address-forbidden: {exc.message}")
        except TimeoutError:
            return result.fail("down", "timeout: name resolution")
        except OSError as exc:
            return result.fail("down", f"dns: {exc.strerror or exc}")
        reader = writer = None
        try:
            last: str = "no address"
            for info in addrs:
                try:
                    async with asyncio.timeout(target.connect_timeout):
                        reader, writer = await asyncio.open_connection(info["host"], info["port"])
                    break
                except TimeoutError:
                    last = "timeout: TCP connect"
                except OSError as exc:
                    last = f"refused: {exc.strerror or exc}"
            if writer is None or reader is None:
                return result.fail("down", last)
            peer = writer.get_extra_info("peername")
            address = (str(peer[0]), int(peer[1]))
            entry["latency_ms"]["tcp"] = _ms(time.monotonic() - t0)
            if url.scheme == "https":
                failed = await self._tls(target, writer, result, address)
                if failed is not None:
                    return failed
            call = VERSION_CALLS.get(target.kind)
            if call is not None:
                await self._version(target, call, reader, writer, policies, result)
            return entry
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _tls(
        self, target: Target, writer: asyncio.StreamWriter, result: _Result, address: tuple[str, int]
    ) -> dict[str, Any] | None:
        t1 = time.monotonic()
        try:
            tls = target_tls(target)
        except OSError as exc:  # the CA file cannot be loaded: the relay would fail the same way
            return result.fail("tls-error", f"tls-verify-failed: {exc}")
        assert tls is not None
        try:
            async with asyncio.timeout(target.connect_timeout):
                await writer.start_tls(tls.context, server_hostname=tls.server_hostname)
        except ssl.SSLCertVerificationError as exc:
            await self._peek(target, address, result)
            return result.fail("tls-error", f"tls-verify-failed: {exc.verify_message or exc.reason}")
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            return result.fail("tls-error", f"tls-handshake: {type(exc).__name__}: {exc}"[:300])
        result.entry["latency_ms"]["tls"] = _ms(time.monotonic() - t1)
        der = _peer_der(writer)
        if der is not None:
            self._describe(der, True, result)
        if tls.pin is not None and (der is None or hashlib.sha256(der).digest() != tls.pin):
            if "tls" in result.entry:
                result.entry["tls"]["trusted"] = False
            return result.fail(
                "tls-error", "tls-verify-failed: certificate fingerprint does not match the pin"
            )
        return None

    async def _peek(self, target: Target, address: tuple[str, int], result: _Result) -> None:
        """The certificate the target presents now, read over a handshake that trusts nothing and
        carries nothing, to the address the guard already checked."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        writer = None
        try:
            async with asyncio.timeout(target.connect_timeout):
                _reader, writer = await asyncio.open_connection(
                    address[0], address[1], ssl=ctx, server_hostname=target.url.host or None
                )
            der = _peer_der(writer)
            if der is not None:
                self._describe(der, False, result)
        except (OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    @staticmethod
    def _describe(der: bytes, trusted: bool, result: _Result) -> None:
        try:
            info = cert_info(der)
        except ValueError:
            fingerprint = "sha256:" + hashlib.sha256(der).hexdigest()
            result.entry["tls"] = {"fingerprint": fingerprint, "trusted": trusted}
            return
        result.entry["tls"] = {
            "not_before": info.not_before,
            "not_after": info.not_after,
            "fingerprint": info.fingerprint,
            "trusted": trusted,
        }

    async def _version(
        self,
        target: Target,
        call: VersionCall,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        policies: PolicySet | None,
        result: _Result,
    ) -> None:
        t2 = time.monotonic()
        authority = target.url.raw_authority
        try:
            async with asyncio.timeout(min(target.total_timeout, HTTP_TIMEOUT)):
                status, headers, body = await _get(reader, writer, target.base_path + call.path, authority)
        except TimeoutError:
            result.fail("degraded", "http-timeout: no answer to the version call")
            return
        except (h11.ProtocolError, OSError, ValueError) as exc:
            result.fail("degraded", f"http-error: {exc}"[:300])
            return
        result.entry["latency_ms"]["http"] = _ms(time.monotonic() - t2)
        result.entry["http_status"] = status
        if status >= 500:
            result.fail("degraded", f"http-{status}")
            return
        if status < 300:
            versions = filtered_versions(policies, call, status, headers, body)
            if versions:
                result.entry["version"] = versions


def _peer_der(writer: asyncio.StreamWriter) -> bytes | None:
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return der if isinstance(der, bytes) else None


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, authority: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One GET over the open connection, read with h11; the body is cut at MAX_BODY."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_BODY)
    request = h11.Request(
        method="GET",
        target=path,
        headers=[("Host", authority), ("Accept", "*/*"), ("User-Agent", USER_AGENT), ("Connection", "close")],
    )
    writer.write(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
    await writer.drain()
    status = 0
    headers: list[tuple[str, str]] = []
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(16 * 1024))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise ValueError(f"version document over {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, headers, bytes(body)

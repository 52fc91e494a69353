"""The whole product path: `mgmtplane serve` -> token -> `firstboot register` -> `gateway run` -> relay,
with every filter decision in the audit log file."""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
from pathlib import Path

import aiohttp

from tests.integration import plane_helpers
from tests.integration.tunnel_support import PYTHON, REPO, running_target, stop_process, write_policies


async def test_registered_gateway_relays_through_the_real_plane(tmp_path: Path) -> None:
    with plane_helpers.running_plane(tmp_path / "plane") as plane:
        state = tmp_path / "gw-state"
        reg = plane_helpers.register(plane.token(), state, "--hostname", "gw-test")
        assert reg.returncode == 0, reg.stderr
        gateway_id = __import__("json").loads((state / "identity.json").read_text())["gateway_id"]
        admin = plane.admin_token()
        async with running_target() as target:
            targets = tmp_path / "targets.yaml"
            targets.write_text(
                f"targets:\n  - name: t1\n    url: {target}\n    kind: http\n    allow_private: [127.0.0.1]\n"
            )
            config = tmp_path / "gateway.yaml"
            config.write_text(
                f"plane_url: {plane.url}\nstate_dir: {state}\ntargets: {targets}\n"
                f"policy_dirs: [{write_policies(tmp_path)}]\nheartbeat_interval: 1\n"
                f"audit_log: {tmp_path / 'audit.log'}\n"
            )
            stderr = (tmp_path / "gateway.err").open("wb")
            proc = subprocess.Popen(
                [PYTHON, "-m", "gateway", "run", "--config", str(config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                ctx = ssl.create_default_context(cafile=str(state / "ca.pem"))
                auth = {"Authorization": f"Bearer {admin}"}
                url = f"{plane.url}/v1/gateways/{gateway_id}/targets/t1/small"
                async with aiohttp.ClientSession() as http:
                    status = 0
                    for _ in range(100):  # until the tunnel is up
                        async with http.get(url, ssl=ctx, headers=auth) as r:
                            status, body = r.status, await r.read()
                        if status != 503:
                            break
                        await asyncio.sleep(0.1)
                    assert status == 200, body
                    assert body.startswith(b'{"ok": true')
                    async with http.get(url, ssl=ctx) as r:
                        assert r.status == 401  # the relay is behind the admin bearer token
                    async with http.get(f"{plane.url}/v1/gateways/{gateway_id}", ssl=ctx, headers=auth) as r:
                        info = await r.json()
                    assert r.status == 200, info
                    assert "connected" in str(info)
                    calls = await _audited_calls(
                        http, f"{plane.url}/v1/gateways/{gateway_id}/targets/t1", ctx, auth
                    )
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 10) == 0
            finally:
                stop_process(proc)
                stderr.close()
    _check_audit_log(tmp_path, calls)


# Per call: method, path as sent (with a query the log must not keep), and the decision's line.
_CALLS = [
    ("GET", "/inventory?owner=CANARY-QUERY", "filter allowed target=t1 kind=http method=GET path=/inventory"
     " rule=test-filtered status=200 kept=6 removed=3"),
    ("GET", "/small?x=CANARY-QUERY", "filter request target=t1 kind=http method=GET path=/small"
     " rule=test-passthrough passthrough=True"),
    ("DELETE", "/small", "filter denied target=t1 kind=http method=DELETE path=/small rule=- reason="),
]  # fmt: skip


async def _audited_calls(
    http: aiohttp.ClientSession, base: str, ctx: ssl.SSLContext, auth: dict[str, str]
) -> int:
    """N relayed calls, one at a time so their order is the log's."""
    n = 0
    for _ in range(10):
        for method, path, _line in _CALLS:
            async with http.request(method, base + path, ssl=ctx, headers=auth) as r:
                await r.read()
                assert r.status == (403 if method == "DELETE" else 200)
            n += 1
    return n


def _check_audit_log(root: Path, calls: int) -> None:
    lines = (root / "audit.log").read_text().splitlines()
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
    assert all(stamp.match(line) for line in lines)
    # The first line is the call that waited for the tunnel (GET /small), then every call's, in order.
    decisions = [stamp.sub("", line, count=1) for line in lines]
    assert decisions[0] == _CALLS[1][2]
    assert len(decisions) == 1 + calls
    for got, (_method, _path, want) in zip(decisions[1:], _CALLS * 10, strict=True):
        assert got.startswith(want), (got, want)
    assert "CANARY" not in "\n".join(lines)
    # Denials also reach the journal (stderr here); allowed decisions only the file.
    journal = (root / "gateway.err").read_text()
    assert journal.count("filter denied target=t1") == 10
    assert "filter allowed" not in journal and "filter request" not in journal

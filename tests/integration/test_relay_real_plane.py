"""The whole product path: `mgmtplane serve` -> token -> `firstboot register` -> `gateway run` -> relay."""

from __future__ import annotations

import asyncio
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
            )
            proc = subprocess.Popen(
                [PYTHON, "-m", "gateway", "run", "--config", str(config)], cwd=REPO, stdin=subprocess.DEVNULL
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
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 10) == 0
            finally:
                stop_process(proc)

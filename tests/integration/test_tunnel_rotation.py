"""TunnelClient.rotate: the move to a new TLS identity, make before break, and its races."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gwcore import protocol as p
from tests.integration.plane_helpers import open_sockets_to
from tests.integration.tunnel_support import make_client, make_pki, make_relay, running_plane


async def settle(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_connection_handed_over_as_the_old_one_dies_is_not_left_open(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with running_plane(pki) as (plane, _hub, _runner):
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 10)
            old = client._current
            assert old is not None and client._handover is not None
            # The old connection dies in the very instant the new one is offered to the serve loop.
            client._handover.add_done_callback(lambda _f: old.mux.close(p.ErrorCode.GOING_AWAY, "cut"))
            client.connect_timeout = 60.0
            # rotate() returns once the run loop has dealt with the offer, not after a timeout.
            assert await asyncio.wait_for(client.rotate(client.ssl), 30)
            await settle(lambda: client.connected.is_set() and client._current is not old)
            await asyncio.sleep(0.5)
            # One connection in use, and no other left open beside it.
            assert open_sockets_to(plane.port) == 1
        finally:
            await client.stop(0.5)
            await asyncio.wait_for(task, 10)

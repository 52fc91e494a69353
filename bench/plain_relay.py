"""The yardstick for bench/relay.py: the plainest aiohttp WebSocket relay that does the job.

Issue 4 sets its targets against `ssh -R` and says that "a plain aiohttp WebSocket relay of about
200 lines" measures roughly equal to it. This is that relay, so the bench can check the premise on
the machine at hand: a plane that accepts one wss:// tunnel and relays `/r/{path}` over it, and a
gateway that fetches each request from one target with aiohttp's client.

It has none of the product: no flow control (bodies are read whole, both ways), no multiplexing
limits, no metadata filter, no SSRF guard, no mTLS, no reconnects. JSON request and response heads
ride in each binary message behind an 8-byte prefix (stream id, head length).

    plain_relay.py plane   --tls-port P --http-port H --cert C --key K
    plain_relay.py gateway --tls-port P --target URL --ca CA
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import ssl
import struct

from aiohttp import ClientSession, TCPConnector, WSMsgType, web

PREFIX = struct.Struct("!II")  # stream id, length of the JSON head
HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


def pack(stream_id: int, head: dict[str, object], body: bytes) -> bytes:
    raw = json.dumps(head).encode()
    return PREFIX.pack(stream_id, len(raw)) + raw + body


def unpack(message: bytes) -> tuple[int, dict[str, object], bytes]:
    stream_id, size = PREFIX.unpack_from(message)
    end = PREFIX.size + size
    return stream_id, json.loads(message[PREFIX.size : end]), message[end:]


def headers_of(items: object) -> list[tuple[str, str]]:
    assert isinstance(items, list)
    return [(str(k), str(v)) for k, v in items if str(k).lower() not in HOP_BY_HOP]


async def until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def plane(tls_port: int, http_port: int, cert: str, key: str) -> None:
    pending: dict[int, asyncio.Future[tuple[dict[str, object], bytes]]] = {}
    tunnel: list[web.WebSocketResponse] = []
    ids = itertools.count(1)

    async def accept_tunnel(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        tunnel[:] = [ws]
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                stream_id, head, body = unpack(msg.data)
                future = pending.pop(stream_id, None)
                if future is not None and not future.done():
                    future.set_result((head, body))
        return ws

    async def relay(request: web.Request) -> web.Response:
        if not tunnel:
            return web.Response(status=503)
        stream_id = next(ids)
        head: dict[str, object] = {
            "method": request.method,
            "path": request.match_info["path"],
            "headers": list(request.headers.items()),
        }
        future = asyncio.get_running_loop().create_future()
        pending[stream_id] = future
        await tunnel[0].send_bytes(pack(stream_id, head, await request.read()))
        reply, body = await future
        status = reply["status"]
        assert isinstance(status, int)
        return web.Response(status=status, body=body, headers=headers_of(reply["headers"]))

    app = web.Application(client_max_size=0)
    app.router.add_get("/tunnel", accept_tunnel)
    app.router.add_route("*", "/r/{path:.*}", relay)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    await web.TCPSite(runner, "127.0.0.1", tls_port, ssl_context=ctx).start()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    await until_sigterm()
    await runner.cleanup()


async def gateway(tls_port: int, target: str, ca: str) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    async with ClientSession(connector=TCPConnector(limit=0)) as session:
        ws = await session.ws_connect(f"https://127.0.0.1:{tls_port}/tunnel", ssl=ctx, max_msg_size=0)
        tasks: set[asyncio.Task[None]] = set()

        async def handle(message: bytes) -> None:
            stream_id, head, body = unpack(message)
            url = f"{target}/{head['path']}"
            headers = headers_of(head["headers"])
            async with session.request(str(head["method"]), url, headers=headers, data=body or None) as resp:
                data = await resp.read()
                reply = {"status": resp.status, "headers": list(resp.headers.items())}
            await ws.send_bytes(pack(stream_id, reply, data))

        async def serve() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    task = asyncio.create_task(handle(msg.data))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

        server = asyncio.create_task(serve())
        await until_sigterm()
        server.cancel()
        await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=["plane", "gateway"])
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--target")
    parser.add_argument("--ca")
    args = parser.parse_args()
    if args.role == "plane":
        asyncio.run(plane(args.tls_port, args.http_port, args.cert, args.key))
    else:
        asyncio.run(gateway(args.tls_port, args.target, args.ca))


if __name__ == "__main__":
    main()

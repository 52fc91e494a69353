"""The yardstick for bench/relay.py: a plain multiplexed aiohttp WebSocket relay, nothing more.

It measures what a small Python relay of the same shape as ours does on the machine at hand: one
wss:// WebSocket between a plane and a gateway, many streams on it, a binary frame header, a small
JSON head per request and response, bodies streamed both ways in 256 KiB chunks under per-stream
credit. Both ends are aiohttp: its server for the public side, its client to the target.

It has none of the product: no connection-level window, no batching, no limits, no metadata filter,
no SSRF guard, no mTLS, no auth, no heartbeat, no reconnect. It is a measuring stick, not a design.

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
from collections.abc import AsyncIterator

from aiohttp import ClientSession, ClientWebSocketResponse, TCPConnector, WSMsgType, web

FRAME = struct.Struct("!BII")  # type, stream id, payload length; one frame per WebSocket message
OPEN, DATA, END, CREDIT = 1, 2, 3, 4
CHUNK = 256 * 1024
WINDOW = 1024 * 1024  # per stream and direction; the reader grants more when it has used half
SKIP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class Channel:
    """One stream's receiving queue and sending credit."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.credit = WINDOW
        self.more_credit = asyncio.Event()
        self.unacked = 0
        self.head: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()


class End:
    """One end of the tunnel: frames out, frames in, streams by id."""

    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse) -> None:
        self.ws = ws
        self.channels: dict[int, Channel] = {}

    async def send(self, kind: int, sid: int, payload: bytes = b"") -> None:
        await self.ws.send_bytes(FRAME.pack(kind, sid, len(payload)) + payload)

    async def send_body(self, sid: int, chunks: AsyncIterator[bytes]) -> None:
        channel = self.channels[sid]
        async for chunk in chunks:
            for i in range(0, len(chunk), CHUNK):
                piece = chunk[i : i + CHUNK]
                while channel.credit < len(piece):
                    channel.more_credit.clear()
                    await channel.more_credit.wait()
                channel.credit -= len(piece)
                await self.send(DATA, sid, piece)
        await self.send(END, sid)

    async def body(self, sid: int) -> AsyncIterator[bytes]:
        channel = self.channels[sid]
        while (chunk := await channel.inbox.get()) is not None:
            channel.unacked += len(chunk)
            if channel.unacked >= WINDOW // 2:
                await self.send(CREDIT, sid, struct.pack("!I", channel.unacked))
                channel.unacked = 0
            yield chunk

    def dispatch(self, message: bytes) -> tuple[int, int, bytes]:
        kind, sid, size = FRAME.unpack_from(message)
        payload = message[FRAME.size : FRAME.size + size]
        channel = self.channels.get(sid)
        if channel is not None:
            if kind == DATA:
                channel.inbox.put_nowait(payload)
            elif kind == END:
                channel.inbox.put_nowait(None)
            elif kind == CREDIT:
                channel.credit += struct.unpack("!I", payload)[0]
                channel.more_credit.set()
            elif kind == OPEN and not channel.head.done():
                channel.head.set_result(json.loads(payload))
        return kind, sid, payload


async def until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def plane(tls_port: int, http_port: int, cert: str, key: str) -> None:
    ends: list[End] = []
    ids = itertools.count(1)

    async def tunnel(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        end = End(ws)
        ends[:] = [end]
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                end.dispatch(msg.data)
        return ws

    async def relay(request: web.Request) -> web.StreamResponse:
        if not ends:
            return web.Response(status=503, text="no tunnel")
        end, sid, pump = ends[0], next(ids), None
        channel = end.channels[sid] = Channel()
        try:
            has_body = request.body_exists
            head = {
                "m": request.method,
                "p": request.raw_path[2:],
                "h": list(request.headers.items()),
                "b": has_body,
            }
            await end.send(OPEN, sid, json.dumps(head).encode())
            pump = (
                asyncio.create_task(end.send_body(sid, request.content.iter_chunked(CHUNK)))
                if has_body
                else None
            )
            answer = await channel.head
            resp = web.StreamResponse(status=int(answer["s"]))  # type: ignore[call-overload]
            for k, v in answer["h"]:  # type: ignore[attr-defined]
                if k.lower() not in SKIP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            async for chunk in end.body(sid):
                await resp.write(chunk)
            await resp.write_eof()
            if pump is not None:
                await pump
            return resp
        except ConnectionError:  # the caller went away (wrk closes its connections at the end)
            return web.Response(status=499)
        finally:
            end.channels.pop(sid, None)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/tunnel", tunnel)
    app.router.add_route("*", "/r/{path:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", tls_port, ssl_context=ctx).start()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    await until_sigterm()
    await runner.cleanup()


async def gateway(tls_port: int, target: str, ca: str) -> None:
    async with ClientSession(connector=TCPConnector(limit=0), auto_decompress=False) as http:

        async def serve(end: End, sid: int, head: dict[str, object]) -> None:
            headers = [(k, v) for k, v in head["h"] if k.lower() not in SKIP]  # type: ignore[attr-defined]
            body = end.body(sid) if head["b"] else None
            url = target + str(head["p"])
            async with http.request(
                str(head["m"]), url, headers=headers, data=body, allow_redirects=False
            ) as resp:
                answer = {"s": resp.status, "h": list(resp.headers.items())}
                await end.send(OPEN, sid, json.dumps(answer).encode())
                await end.send_body(sid, resp.content.iter_chunked(CHUNK))
            end.channels.pop(sid, None)

        ctx = ssl.create_default_context(cafile=ca)
        async with http.ws_connect(f"wss://127.0.0.1:{tls_port}/tunnel", ssl=ctx, max_msg_size=0) as ws:
            end = End(ws)
            tasks = set()
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    break
                kind, sid, _size = FRAME.unpack_from(msg.data)
                if kind == OPEN:
                    end.channels[sid] = Channel()
                    payload = end.dispatch(msg.data)[2]
                    task = asyncio.create_task(serve(end, sid, json.loads(payload)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    end.dispatch(msg.data)


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

"""Nova and Glance from recorded responses, for openstacksdk through the relay.

No Nova or Glance runs here, so these two serve the response bodies of the API references
(fixtures/openstack/, taken field by field from the compute and image api-ref examples, with
values a real cloud holds and must not leak marked CANARY) on the paths openstacksdk calls, with
the real version documents and headers. Tokens are checked against the real Keystone as
keystonemiddleware would (a token validating itself), so only a token the SDK obtained through
the relay opens them. Version documents name `--link-prefix` as the service URL, a closed port:
as from the plane, the service's own address is unreachable, so a client that followed a link
instead of its configured forward would fail.

Run: python -m tests.integration.openstack_recorded --keystone URL --nova-port P --glance-port Q
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures" / "openstack"
log = logging.getLogger("recorded")

KEYSTONE = web.AppKey("keystone", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
PUBLIC = web.AppKey("public", frozenset)


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def nova_version(prefix: str) -> dict[str, Any]:
    """GET /v2.1 as Nova answers it (api-ref: compute versions, microversions up to 2.79 in Train)."""
    return {
        "version": {
            "id": "v2.1",
            "status": "CURRENT",
            "version": "2.79",
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [
                {"href": f"{prefix}/v2.1/", "rel": "self"},
                {"href": "http://docs.openstack.org/", "rel": "describedby", "type": "text/html"},
            ],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}
            ],
        }
    }


def glance_versions(prefix: str) -> dict[str, Any]:
    """GET / (and /versions) as Glance answers it (api-ref: image versions)."""
    versions = [("v2.9", "CURRENT"), ("v2.7", "SUPPORTED"), ("v2.0", "SUPPORTED")]
    return {
        "versions": [
            {"id": vid, "status": status, "links": [{"href": f"{prefix}/v2/", "rel": "self"}]}
            for vid, status in versions
        ]
    }


@web.middleware
async def keystone_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """keystonemiddleware's job: every call but version discovery needs a token Keystone accepts."""
    if request.path.rstrip("/") in request.app[PUBLIC]:
        return await handler(request)
    token = request.headers.get("X-Auth-Token", "")
    headers = {"X-Auth-Token": token, "X-Subject-Token": token}
    async with request.app[SESSION].get(f"{request.app[KEYSTONE]}/v3/auth/tokens", headers=headers) as r:
        valid = r.status == 200 and bool(token)
    if not valid:
        body = {
            "error": {
                "code": 401,
                "title": "Unauthorized",
                "message": "The request you have made requires authentication.",
            }
        }
        return web.json_response(body, status=401, headers={"WWW-Authenticate": "Keystone uri=''"})
    return await handler(request)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"X-Openstack-Request-Id": "req-recorded"})


def nova_app(keystone: str, prefix: str) -> web.Application:
    app = web.Application(middlewares=[keystone_auth])
    app[KEYSTONE], app[PUBLIC] = keystone, frozenset({"", "/v2.1"})
    servers = _fixture("nova-servers-detail.json")

    async def version(request: web.Request) -> web.Response:
        return _json(nova_version(prefix))

    async def detail(request: web.Request) -> web.Response:
        return _json(servers)

    async def listing(request: web.Request) -> web.Response:
        return _json(
            {
                "servers": [
                    {"id": s["id"], "name": s["name"], "links": s.get("links", [])}
                    for s in servers["servers"]
                ]
            }
        )

    async def one(request: web.Request) -> web.Response:
        for server in servers["servers"]:
            if server["id"] == request.match_info["id"]:
                return _json({"server": server})
        return _json({"itemNotFound": {"code": 404, "message": "Instance could not be found."}}, 404)

    app.router.add_get("/v2.1", version)
    app.router.add_get("/v2.1/", version)
    app.router.add_get("/v2.1/servers/detail", detail)
    app.router.add_get("/v2.1/servers", listing)
    app.router.add_get("/v2.1/servers/{id}", one)
    return app


def glance_app(keystone: str, prefix: str) -> web.Application:
    app = web.Application(middlewares=[keystone_auth])
    app[KEYSTONE], app[PUBLIC] = keystone, frozenset({"", "/versions"})
    images = _fixture("glance-images.json")

    async def versions(request: web.Request) -> web.Response:
        return _json(glance_versions(prefix), status=300 if request.path == "/" else 200)

    async def listing(request: web.Request) -> web.Response:
        return _json(images)

    async def one(request: web.Request) -> web.Response:
        for image in images["images"]:
            if image["id"] == request.match_info["id"]:
                return _json(image)
        return web.Response(status=404, text="404 Not Found\n\nNo image found with ID\n\n")

    async def data(request: web.Request) -> web.Response:
        return web.Response(
            body=b"QFI\xfb" + b"CANARY-image-bytes" * 64, content_type="application/octet-stream"
        )

    app.router.add_get("/", versions)
    app.router.add_get("/versions", versions)
    app.router.add_get("/v2/images", listing)
    app.router.add_get("/v2/images/{id}", one)
    app.router.add_get("/v2/images/{id}/file", data)
    return app


async def _session_ctx(app: web.Application) -> Any:
    app[SESSION] = aiohttp.ClientSession()
    yield
    await app[SESSION].close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keystone", required=True)
    parser.add_argument("--nova-port", type=int, required=True)
    parser.add_argument("--glance-port", type=int, required=True)
    parser.add_argument("--link-prefix", default="http://127.0.0.1:1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import asyncio

    async def serve() -> None:
        runners = []
        for app, port in (
            (nova_app(args.keystone, args.link_prefix), args.nova_port),
            (glance_app(args.keystone, args.link_prefix), args.glance_port),
        ):
            app.cleanup_ctx.append(_session_ctx)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        print("recorded: listening", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

"""The real plane app for the relay benchmarks: TLS for the gateway, plain HTTP for the load client.

The only difference from `mgmtplane serve` is the second, plain-HTTP listener on loopback, so wrk
costs the same for every relay it is measured against. A script of its own, and not a mode of
bench/relay.py, so the plane's peak RSS is the plane's: the benchmark's own imports (statistics,
tempfile, its dataclasses) stay out of the process whose memory is a target.

    python bench/plane_http.py STATE_DIR TLS_PORT HTTP_PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web

from gwcore.memtune import tune_malloc
from mgmtplane.app import PlaneConfig, create_app, server_ssl_context
from mgmtplane.front import FrontSite


async def serve(plane_dir: Path, tls_port: int, http_port: int) -> None:
    config = PlaneConfig(state_dir=plane_dir, server_hosts=("127.0.0.1",))
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await FrontSite(runner, "127.0.0.1", tls_port, ssl_context=server_ssl_context(config)).start()
    await FrontSite(runner, "127.0.0.1", http_port, shutdown_timeout=1).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} STATE_DIR TLS_PORT HTTP_PORT")
    tune_malloc()  # as `mgmtplane serve` does
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))


if __name__ == "__main__":
    main()

"""A static image server on 127.0.0.1 with a fixed per-request latency.

Runs in its own process (``python image_server.py DIR LATENCY_MS``) so serving
never competes with the contenders' interpreter; prints its port on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web


def make_app(image_dir: Path, latency_s: float) -> web.Application:
    async def image(request: web.Request) -> web.Response:
        path = image_dir / request.match_info["name"]
        if latency_s:
            await asyncio.sleep(latency_s)
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except OSError:
            raise web.HTTPNotFound() from None
        return web.Response(body=body, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    return app


async def serve(image_dir: Path, latency_s: float) -> None:
    runner = web.AppRunner(make_app(image_dir, latency_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), float(sys.argv[2]) / 1000))

"""Stand-in for the Home Assistant Supervisor's API proxy, for the add-on test.

An add-on with `homeassistant_api: true` reaches Home Assistant through the
Supervisor as http://supervisor/core/api/... and ws://supervisor/core/websocket
with its SUPERVISOR_TOKEN. This proxy answers on port 80 (run it with the
network alias `supervisor`) and forwards those paths to UPSTREAM
(default http://homeassistant:8123): /core/api/X -> /api/X,
/core/websocket -> /api/websocket, headers and bodies unchanged. Any other
path answers 404, as the Supervisor does.

    python supervisor_proxy.py [--upstream URL] [--port 80]
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

HOP_HEADERS = {"host", "connection", "upgrade", "transfer-encoding", "content-length", "keep-alive"}


def make_app(upstream: str) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        await session["s"].close()

    async def api(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        async with session["s"].request(
            request.method,
            f"{upstream}/api/{request.match_info['tail']}",
            params=request.query,
            headers=headers,
            data=body,
        ) as resp:
            out = web.Response(status=resp.status, body=await resp.read())
            for k, v in resp.headers.items():
                if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding":
                    out.headers[k] = v
            return out

    async def websocket(request: web.Request) -> web.StreamResponse:
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        async with session["s"].ws_connect(f"{upstream}/api/websocket", max_msg_size=0) as ha:

            async def pump(src, dst) -> None:
                async for msg in src:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)
                    else:
                        break
                await dst.close()

            await asyncio.gather(pump(client, ha), pump(ha, client), return_exceptions=True)
        return client

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/core/websocket", websocket)
    app.router.add_route("*", "/core/api/{tail:.*}", api)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="http://homeassistant:8123")
    p.add_argument("--port", type=int, default=80)
    args = p.parse_args()
    web.run_app(make_app(args.upstream.rstrip("/")), host="0.0.0.0", port=args.port, print=None)


if __name__ == "__main__":
    main()

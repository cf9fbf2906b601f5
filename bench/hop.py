#!/usr/bin/env python3
"""The bare aiohttp hop: an aiohttp server passing each request to ``--route`` (chat
completions unless told) on to ``--upstream`` with a pooled aiohttp client, and the answer
back. It is the floor of any Python proxy's cost on this machine: what B1 judges the
gateway's own CPU against (BENCH.md), and B10's pinned relay its throughput."""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the URL each request goes on to")
    parser.add_argument("--route", default="/v1/chat/completions", help="the path it serves")
    args = parser.parse_args()
    session: aiohttp.ClientSession | None = None

    async def start(_: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(_: web.Application) -> None:
        if session is not None:
            await session.close()

    async def relay(request: web.Request) -> web.Response:
        assert session is not None
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with session.post(args.upstream, data=body, headers=headers) as answer:
            data = await answer.read()
            return web.Response(body=data, status=answer.status, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post(args.route, relay)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

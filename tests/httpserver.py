"""A real HTTP server with misbehaving routes, for testing the fetcher against real sockets.

It runs aiohttp on 127.0.0.1 (a free port) in a background thread with its own event loop::

    with LocalHTTPServer(image_dir=SHARED / "images") as srv:
        srv.add("a", jpeg)                  # bytes served by /bytes/a, /flaky/a, ...
        requests.get(srv.url("/bytes/a"))
        srv.hits("/flaky/a")                # requests seen for that path

Routes (``<key>`` names bytes registered with ``add``; unknown keys answer 404):

    /img/<name>        a file from ``image_dir``, content type guessed from the extension
    /bytes/<key>       the registered bytes (application/octet-stream)
    /status/<code>     an empty response with that status (e.g. /status/404)
    /flaky/<key>       500 on the first request for the key, then 200 with its bytes
    /ratelimit/<key>   429 with ``Retry-After: 1`` on the first request, then 200
    /slow/<key>        answers after ``slow_seconds`` (default 30 s), or at once when the server stops
    /reset             aborts the connection without sending a response
    /truncated/<key>   declares the full Content-Length, sends half of the body, closes
    /nonimage          200 text/html junk
    /big               a body of ``big_size`` bytes (default 50 MB; ``?size=N`` overrides), streamed
    /redirect/<key>    302 to /bytes/<key>
    /redirect-loop     302 to itself
"""
from __future__ import annotations

import asyncio
import collections
import mimetypes
import threading
from pathlib import Path

from aiohttp import web

CHUNK = 64 * 1024
NONIMAGE_BODY = b"<!doctype html><html><body><h1>Not an image</h1>" + b"<p>junk</p>" * 50 + b"</body></html>"


class LocalHTTPServer:
    """The server; ``start()``/``stop()`` or a ``with`` block. Counts every request by path."""

    def __init__(self, image_dir=None, slow_seconds: float = 30.0, big_size: int = 50 * 1024 * 1024):
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.slow_seconds = slow_seconds
        self.big_size = big_size
        self.port: int | None = None
        self._blobs: dict[str, bytes] = {}
        self._hits: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # -- public API (called from the test's thread) --------------------------------------------------
    def add(self, key: str, data: bytes) -> str:
        """Register ``data`` under ``key``; returns the /bytes URL."""
        self._blobs[key] = bytes(data)
        return self.url(f"/bytes/{key}")

    def url(self, path: str) -> str:
        if self.port is None:
            raise RuntimeError("LocalHTTPServer is not started. Call start() or use it in a with block.")
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def hits(self, path: str) -> int:
        """How many requests arrived for ``path`` (e.g. "/flaky/a"), whatever their outcome."""
        return self._hits["/" + path.lstrip("/")]

    def start(self) -> "LocalHTTPServer":
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="LocalHTTPServer", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=10) or self.port is None:
            raise RuntimeError("LocalHTTPServer did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._thread = self._loop = None

    def __enter__(self) -> "LocalHTTPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the server thread ---------------------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._startup())
        ready.set()
        self._loop.run_forever()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        self._stopping.set()  # releases /slow and /big handlers before the graceful shutdown
        await self._runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        get = web.get
        app.add_routes([
            get("/img/{name}", self._img), get("/bytes/{key}", self._bytes),
            get("/status/{code:\\d+}", self._status), get("/flaky/{key}", self._flaky),
            get("/ratelimit/{key}", self._ratelimit), get("/slow/{key}", self._slow),
            get("/reset", self._reset), get("/truncated/{key}", self._truncated),
            get("/nonimage", self._nonimage), get("/big", self._big),
            get("/redirect/{key}", self._redirect), get("/redirect-loop", self._redirect_loop),
        ])
        return app

    # -- handlers ------------------------------------------------------------------------------------
    @web.middleware
    async def _count(self, request, handler):
        self._hits[request.path] += 1
        return await handler(request)

    def _blob(self, request) -> bytes:
        try:
            return self._blobs[request.match_info["key"]]
        except KeyError:
            raise web.HTTPNotFound(text=f"no bytes registered under {request.match_info['key']!r}") from None

    async def _img(self, request):
        path = (self.image_dir / request.match_info["name"]) if self.image_dir else None
        if path is None or not path.is_file():
            raise web.HTTPNotFound()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.Response(body=path.read_bytes(), content_type=ctype)

    async def _bytes(self, request):
        return web.Response(body=self._blob(request), content_type="application/octet-stream")

    async def _status(self, request):
        return web.Response(status=int(request.match_info["code"]))

    async def _flaky(self, request):
        if self._hits[request.path] == 1:
            return web.Response(status=500, text="flaky: first attempt fails")
        return await self._bytes(request)

    async def _ratelimit(self, request):
        if self._hits[request.path] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        return await self._bytes(request)

    async def _slow(self, request):
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=self.slow_seconds)
        except asyncio.TimeoutError:
            pass
        return await self._bytes(request)

    async def _reset(self, request):
        request.transport.abort()  # RST-like close: the client sees the connection drop, no status line
        return web.Response()      # never written: the transport is gone

    async def _truncated(self, request):
        data = self._blob(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        request.transport.close()  # flushes what was written, then closes: the body ends early
        return resp

    async def _nonimage(self, request):
        return web.Response(body=NONIMAGE_BODY, content_type="text/html")

    async def _big(self, request):
        size = int(request.query.get("size", self.big_size))
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = size
        await resp.prepare(request)
        chunk = b"\xff" * CHUNK
        for start in range(0, size, CHUNK):
            if self._stopping.is_set():
                break
            await resp.write(chunk[: min(CHUNK, size - start)])
        return resp

    async def _redirect(self, request):
        raise web.HTTPFound(f"/bytes/{request.match_info['key']}")

    async def _redirect_loop(self, request):
        raise web.HTTPFound("/redirect-loop")

"""A fast loopback image server for benchmarks, in its own process(es) so it never competes for the GIL
of the process that measures.

It serves the first ``n`` rows of the real Sign Language MNIST training CSV (``../shared/data``) as 28x28
grayscale JPEGs (cv2, quality 95) from memory at ``/i/<k>.jpg``; with ``repeat=r`` it serves ``n * r`` URLs,
URL ``k`` carrying image ``k % n``::

    with ImageServer(1000, repeat=3) as srv:
        srv.urls        # ["http://127.0.0.1:PORT/i/0.jpg", ...], 3000 of them
        srv.labels      # ["d", "g", ...] lowercase letters, as the course's urls.jsonl
        srv.write_manifest(tmp / "manifest.jsonl")

Measure it from the command line (the client runs here, the server in a child process)::

    python bench/imageserver.py --n 27455 --requests 30000 --concurrency 64

The child exits when its parent goes away (it watches its stdin), so a killed benchmark leaves no server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

SIGN_MNIST_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "sign-mnist" / "sign_mnist_train.csv.gz"
MAX_N = 27_455


def build_images(n: int, quality: int = 95) -> tuple[list[bytes], list[str]]:
    """The first ``n`` CSV rows as (JPEG bytes, lowercase letter) lists."""
    import cv2
    import pandas as pd

    if not 1 <= n <= MAX_N:
        raise ValueError(f"n must be between 1 and {MAX_N} (rows in the CSV). Received: n={n}")
    rows = pd.read_csv(SIGN_MNIST_CSV, nrows=n).to_numpy()
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    jpegs = [cv2.imencode(".jpg", r[1:].reshape(28, 28).astype("uint8"), params)[1].tobytes() for r in rows]
    return jpegs, [chr(ord("a") + int(label)) for label in rows[:, 0]]


def write_manifest(path, urls, labels) -> Path:
    """JSON Lines ``{"content": url, "label": letter}``, one per URL."""
    with open(path, "w") as f:
        f.writelines(json.dumps({"content": u, "label": lab}) + "\n" for u, lab in zip(urls, labels, strict=True))
    return Path(path)


class ImageServer:
    """Starts ``processes`` server processes (sharing one port with SO_REUSEPORT) on enter, stops them on exit."""

    def __init__(self, n: int = 1000, repeat: int = 1, processes: int = 1, quality: int = 95, lean: bool = False):
        if repeat < 1 or processes < 1:
            raise ValueError(f"repeat and processes must be >= 1. Received: repeat={repeat}, processes={processes}")
        self.n, self.repeat, self.processes, self.quality = n, repeat, processes, quality
        self.lean = lean   # a bare asyncio HTTP/1.1 keep-alive responder instead of aiohttp.web (less CPU)
        self.port: int | None = None
        self.urls: list[str] = []
        self.labels: list[str] = []
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> "ImageServer":
        try:
            first = self._spawn(0)
            self.port, labels = first["port"], first["labels"]
            for _ in range(self.processes - 1):
                self._spawn(self.port)
        except BaseException:
            self.__exit__()
            raise
        total = self.n * self.repeat
        self.urls = [f"http://127.0.0.1:{self.port}/i/{k}.jpg" for k in range(total)]
        self.labels = [labels[k % self.n] for k in range(total)]
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._procs:
            proc.stdin.close()  # the child exits on stdin EOF
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []

    def write_manifest(self, path) -> Path:
        return write_manifest(path, self.urls, self.labels)

    def _spawn(self, port: int) -> dict:
        cmd = [sys.executable, __file__, "--serve", "--n", str(self.n), "--repeat", str(self.repeat),
               "--quality", str(self.quality), "--port", str(port)] + (["--lean"] if self.lean else [])
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._procs.append(proc)
        line = proc.stdout.readline()  # the child prints one JSON line once it listens (or exits)
        if not line:
            raise RuntimeError(f"image server process exited with code {proc.wait()} before listening")
        return json.loads(line)


# -- the child process ---------------------------------------------------------------------------------------
def _serve_lean(n: int, repeat: int, quality: int, port: int) -> None:
    """Prebuilt responses written by an asyncio.Protocol: what a static file server costs, not a web framework.

    Loopback benchmarks share 2 cores between server and clients; remote image hosts cost the client nothing,
    so the leaner the server, the closer the figure is to ingesting from the network."""
    jpegs, labels = build_images(n, quality)
    total = n * repeat
    responses = [b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j) + j
                 for j in jpegs]
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    class Handler(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buf = transport, b""

        def data_received(self, data):
            self.buf += data
            out = []
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                path = self.buf[:end].split(b" ", 2)[1]
                self.buf = self.buf[end + 4:]
                try:
                    k = int(path[3:-4]) if path.startswith(b"/i/") and path.endswith(b".jpg") else -1
                except ValueError:
                    k = -1
                out.append(responses[k % n] if 0 <= k < total else not_found)
            if out:
                self.transport.write(b"".join(out))

    async def main():
        server = await asyncio.get_running_loop().create_server(Handler, "127.0.0.1", port, reuse_port=True,
                                                                backlog=1024)
        sys.stdout.write(json.dumps({"port": server.sockets[0].getsockname()[1], "labels": labels}) + "\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())


def _serve(n: int, repeat: int, quality: int, port: int) -> None:
    from aiohttp import web

    try:
        import uvloop  # optional, faster when installed

        uvloop.install()
    except ImportError:
        pass
    jpegs, labels = build_images(n, quality)
    total = n * repeat

    async def image(request):
        try:
            k = int(request.match_info["k"])
        except ValueError:
            raise web.HTTPNotFound() from None
        if not 0 <= k < total:
            raise web.HTTPNotFound()
        return web.Response(body=jpegs[k % n], content_type="image/jpeg")

    async def main():
        app = web.Application()
        app.router.add_get("/i/{k}.jpg", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=1024).start()
        sys.stdout.write(json.dumps({"port": runner.addresses[0][1], "labels": labels}) + "\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
        await runner.cleanup()

    asyncio.run(main())


# -- the measurement ------------------------------------------------------------------------------------------
async def measure(urls: list[str], requests: int, concurrency: int) -> float:
    """Requests per second that one aiohttp client process gets with ``concurrency`` connections."""
    import aiohttp

    todo = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def client():
            for i in todo:
                async with session.get(urls[i % len(urls)]) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET {resp.url} -> {resp.status}")

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=MAX_N)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--requests", type=int, default=30_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--manifest", help="also write the JSON Lines manifest here")
    p.add_argument("--lean", action="store_true", help="serve with a bare asyncio protocol instead of aiohttp.web")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return (_serve_lean if args.lean else _serve)(args.n, args.repeat, args.quality, args.port)
    t0 = time.perf_counter()
    with ImageServer(args.n, args.repeat, args.processes, args.quality) as srv:
        print(f"server up with {len(srv.urls)} URLs in {time.perf_counter() - t0:.1f} s (port {srv.port})")
        if args.manifest:
            print(f"manifest: {srv.write_manifest(args.manifest)}")
        asyncio.run(measure(srv.urls, min(2000, args.requests), args.concurrency))  # warm up
        rate = asyncio.run(measure(srv.urls, args.requests, args.concurrency))
        print(f"{rate:,.0f} requests/s ({args.requests} GETs, {args.concurrency} connections, "
              f"{args.processes} server process(es))")


if __name__ == "__main__":
    main()

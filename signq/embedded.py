"""The embedded default: a private Redis-protocol broker plus worker processes, started and stopped by the
command that needs them (``signq run`` with no SIGNQ_BROKER_URL).

It is the same Celery app, tasks, JSON serialization and acks_late acknowledgements as with a real Redis:
only the broker's address differs. The broker is a private ``redis-server`` (no persistence, loopback, a
free port) when that binary is on PATH, otherwise fakeredis' pure-Python TCP server in this process.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    def __init__(self, kind: str = "auto"):
        if kind not in ("auto", "redis-server", "fakeredis"):
            from signq.errors import ConfigError

            raise ConfigError(f"SIGNQ_EMBEDDED_BROKER must be auto, redis-server or fakeredis. Received: {kind!r}")
        self.kind = kind
        self.proc = self.server = None
        self.url = None

    def start(self) -> str:
        binary = shutil.which("redis-server") if self.kind != "fakeredis" else None
        if self.kind == "redis-server" and not binary:
            raise RuntimeError("SIGNQ_EMBEDDED_BROKER=redis-server but no redis-server is on PATH")
        if binary:
            self._start_binary(binary)
        else:
            self._start_fakeredis()
        return self.url

    def _start_binary(self, binary):
        port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="signq-broker-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.tmp, "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{port}/0"
        _wait_for_redis(self.url, self.proc)

    def _start_fakeredis(self):
        from fakeredis import TcpFakeServer

        self.server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="signq-fakeredis").start()
        self.url = f"redis://127.0.0.1:{self.server.server_address[1]}/0"

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def _wait_for_redis(url, proc, deadline=10.0):
    import redis

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with code {proc.returncode}")
        try:
            if redis.Redis.from_url(url).ping():
                return
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError(f"embedded redis-server did not answer within {deadline}s")


def worker_command(queues: str, concurrency: int, name: str, loglevel: str = "WARNING") -> list[str]:
    return [sys.executable, "-m", "celery", "--quiet", "-A", "worker", "worker", "-Q", queues, "-c", str(concurrency),
            "-n", f"{name}@%h", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]


class EmbeddedWorkers:
    """Worker processes for the given queues: ingest (prefork, N children) and model (prefork, 1 child)."""

    def __init__(self, env: dict, queues=("ingest",), concurrency: int = 2, model_concurrency: int = 1):
        self.env, self.queues, self.concurrency, self.model_concurrency = env, queues, concurrency, model_concurrency
        self.procs: list[subprocess.Popen] = []

    def start(self):
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore:You're running the worker with superuser:UserWarning",
               **os.environ, **self.env}
        tag = f"embedded-{os.getpid()}"
        for q in self.queues:
            n = self.concurrency if q == "ingest" else self.model_concurrency
            self.procs.append(subprocess.Popen(worker_command(q, n, f"{q}-{tag}"), env=env,
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               start_new_session=True))

    def stop(self, timeout: float = 20.0):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

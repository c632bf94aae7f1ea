"""Shared fixtures: a dedicated Redis database, shared storage, real worker processes, a real HTTP server.

Integration tests talk to the real Redis on 127.0.0.1:6379 (database 13, flushed before and after the
session) and to real ``celery -A worker worker`` processes started here; nothing runs in eager mode.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("SIGNQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

# Fast failure paths for the misbehaving routes: short timeouts, few quick retries, a 1 MB body cap.
WORKER_ENV = {
    "SIGNQ_READ_TIMEOUT": "1", "SIGNQ_CONNECT_TIMEOUT": "1", "SIGNQ_RETRIES": "2", "SIGNQ_BACKOFF_BASE": "0.05",
    "SIGNQ_BACKOFF_CAP": "2", "SIGNQ_MAX_BODY_BYTES": str(1 << 20), "SIGNQ_VISIBILITY_TIMEOUT": "30",
}


def wait_until(predicate, timeout=60.0, interval=0.05, what="condition"):
    """Poll with a deadline (never an unbounded sleep)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def redis_url():
    """Redis at $SIGNQ_TEST_REDIS_URL (default 127.0.0.1:6379, db 13); when none answers, a private
    redis-server for the session (the same one the embedded default uses)."""
    url, private = REDIS_URL, None
    try:
        redis.Redis.from_url(url).ping()
    except redis.ConnectionError:
        from signq.embedded import EmbeddedBroker

        private = EmbeddedBroker("redis-server")
        url = private.start().rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    if private:
        private.stop()


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="session")
def worker_env(redis_url, storage_root):
    return {**os.environ, **WORKER_ENV, "SIGNQ_BROKER_URL": redis_url, "SIGNQ_STORAGE": storage_root,
            "PYTHONPATH": str(ROOT)}


class WorkerProcess:
    """A real Celery worker subprocess (prefork) consuming the given queue."""

    def __init__(self, env, queue="ingest", concurrency=2, name="w"):
        self.env, self.queue, self.concurrency, self.name = env, queue, concurrency, name
        self.proc = None

    def start(self):
        cmd = [sys.executable, "-m", "celery", "--quiet", "-A", "worker", "worker", "-Q", self.queue,
               "-c", str(self.concurrency), "-n", f"{self.name}-{os.getpid()}@%h", "--loglevel=WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, start_new_session=True)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def ingest_worker(worker_env):
    w = WorkerProcess(worker_env, "ingest", 2, "ingest").start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def settings(redis_url, storage_root):
    from signq.settings import Settings

    env = {**WORKER_ENV, "SIGNQ_BROKER_URL": redis_url, "SIGNQ_STORAGE": storage_root}
    return Settings.from_env(env=env)


@pytest.fixture(scope="session")
def client(settings, ingest_worker):
    from signq.client import Client

    return Client(settings)


@pytest.fixture(scope="session")
def http_server():
    from datagen import IMAGES_DIR
    from httpserver import LocalHTTPServer

    with LocalHTTPServer(IMAGES_DIR, slow_seconds=30, big_size=5 << 20) as srv:
        yield srv

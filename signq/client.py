"""What the CLI (and Python users) talk to: a broker connection, the job store, storage, and waiting.

``Client.open(settings)`` connects to ``settings.broker_url``; with none configured it starts the embedded
default (signq.embedded) for the duration of the ``with`` block.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import replace

from signq.errors import JobNotFound
from signq.jobs import JobStore, connect
from signq.settings import Settings
from signq.storage import Storage

FINAL_STATES = ("done", "failed")


class Client:
    def __init__(self, settings: Settings):
        from worker.app import make_app   # the app object only: no task modules, no TensorFlow

        self.settings = settings
        self.app = make_app(settings)
        self.jobs = JobStore(connect(settings.broker_url))
        self.storage = Storage(settings.storage)

    @classmethod
    @contextmanager
    def open(cls, settings: Settings, queues=("ingest",)):
        if settings.broker_url:
            yield cls(settings)
            return
        from signq.embedded import EmbeddedBroker, EmbeddedWorkers

        broker = EmbeddedBroker(settings.embedded_broker)
        settings = replace(settings, broker_url=broker.start())
        workers = EmbeddedWorkers(settings.to_env(), queues, settings.concurrency, settings.model_concurrency)
        try:
            workers.start()
            yield cls(settings)
        finally:
            workers.stop()
            broker.stop()

    def submit(self, sub, job_id=None, on_chunk=None) -> str:
        from producer.submit import submit

        return submit(self.app, self.jobs, self.storage, self.settings, sub, job_id, on_chunk)

    def submit_task(self, kind: str, task_name: str, spec: dict, job_id: str | None = None) -> str:
        job_id = self.jobs.create(kind, spec, job_id)
        self.app.send_task(task_name, args=[job_id])
        return job_id

    def status(self, job_id: str) -> dict:
        return job_status(self.jobs, self.storage, job_id)

    def wait_created(self, job_id: str, timeout: float = 60.0):
        """Wait until a follow-up job (created by a worker) exists in the job store."""
        end = time.monotonic() + timeout
        while not self.jobs.exists(job_id):
            if time.monotonic() > end:
                raise TimeoutError(f"job {job_id} was not created within {timeout}s")
            time.sleep(self.settings.result_interval)

    def wait(self, job_id: str, progress: bool = False, timeout: float | None = None) -> dict:
        """Poll the job store every ``result_interval`` until the job is done or failed."""
        bar = ProgressBar(job_id) if progress else None
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                st = self.jobs.status(job_id)
                if bar:
                    bar.update(st)
                if st["state"] in FINAL_STATES:
                    self.storage.write_json(self.storage.path("jobs", job_id, "status.json"), st)
                    return st
                if end is not None and time.monotonic() > end:
                    raise TimeoutError(f"job {job_id} still {st['state']} after {timeout}s")
                time.sleep(self.settings.result_interval)
        finally:
            if bar:
                bar.close()


def job_status(jobs: JobStore, storage: Storage, job_id: str) -> dict:
    """Live status from the job store, or the final status saved in storage (embedded runs end their broker)."""
    try:
        return jobs.status(job_id)
    except JobNotFound:
        path = storage.path("jobs", job_id, "status.json")
        if storage.exists(path):
            return json.loads(storage.read_bytes(path))
        raise


class ProgressBar:
    """A tqdm bar on stderr: records (or epochs) done, rate and ETA."""

    def __init__(self, job_id: str):
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="rec", desc=job_id[:8], file=sys.stderr, dynamic_ncols=True, leave=True)

    def update(self, st: dict):
        prog = st.get("progress")
        if prog and "epoch" in prog:
            self.bar.unit = "epoch"
            total, done = prog.get("epochs"), prog.get("epoch", 0)
            post = {k: round(v, 4) for k, v in prog.items() if k in ("loss", "accuracy", "val_accuracy")}
        else:
            total = st["records_in"] if st["records_in"] >= 0 else None
            done = st["records_done"]
            post = {"ok": str(st["records_ok"]), "rejected": str(st["records_rejected"])}
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.set_postfix(state=st["state"], **post, refresh=False)
        self.bar.update(max(0, done - self.bar.n))

    def close(self):
        self.bar.close()

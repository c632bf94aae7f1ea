"""Ingestion tasks, kept thin: parse the message, call plain functions, map errors to retry or fail.

    signq.ingest.chunk(msg)      one chunk -> chunk shard + rejects + .done marker; may trigger finalize
    signq.ingest.finalize(job)   exactly once per job (claim in Redis + idempotent, atomic writes)
    signq.ingest.scan()          celery beat: ingest new manifests in watched locations (worker.schedule)
"""
from __future__ import annotations

import functools
import logging
import os
import time

import redis
from celery.signals import worker_process_init

from signq.errors import TransientError
from signq.jobs import JobStore, connect
from signq.storage import Storage
from worker import finalizer, predictions, writer
from worker.app import app
from worker.ingest import JobView, process_chunk

log = logging.getLogger(__name__)


@worker_process_init.connect
def _warm_up(**_):
    """Pay the matplotlib import once per child, not inside the first job's finalize."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


@functools.lru_cache(maxsize=1)
def context():
    s = app.signq_settings
    return s, Storage(s.storage), JobStore(connect(app.conf.broker_url))


@functools.lru_cache(maxsize=64)
def job_view(job_id: str) -> JobView:
    return JobView.from_spec(job_id, context()[2].spec(job_id))


TRANSIENT = (TransientError, OSError, redis.ConnectionError, redis.TimeoutError)


def retry_or_fail(task, jobs, job_id: str, err: Exception, what: str):
    """A transient error retries with backoff; once retries run out the job fails (it never stays running)."""
    if task.request.retries < task.max_retries:
        raise task.retry(exc=err, countdown=min(60, 2 ** task.request.retries))
    jobs.fail(job_id, f"{what}: {type(err).__name__}: {err} (after {task.request.retries} retries)")
    raise err


def run_chunk(task, msg: dict, work) -> dict:
    """The skeleton every chunk task shares: find the work done (redelivery) or do it with
    ``work(msg, t0) -> stats``, map errors to retry or job failure, and trigger finalize after the last chunk."""
    settings, storage, jobs = context()
    job_id, idx = msg["job"], msg["idx"]
    what = f"{task.name} {idx} ({msg['source']})"
    try:
        stats = writer.read_done(storage, job_id, idx)
        if stats is None:
            if jobs.raw(job_id).get("state") == "failed":
                return {"skipped": "job failed"}
            jobs.start(job_id)
            jobs.chunk_running(job_id, idx, os.getpid())
            stats = work(msg, time.perf_counter())
            log.info("%s job=%s idx=%d records=%d ok=%d rejected=%d in %.3fs", task.name, job_id, idx,
                     stats["records"], stats["ok"], stats["rejected"], stats["seconds"])
        if jobs.chunk_done(job_id, idx, stats):
            enqueue_finalize(job_id)
    except TRANSIENT as e:
        retry_or_fail(task, jobs, job_id, e, what)
    except Exception as e:
        jobs.fail(job_id, f"{what}: {type(e).__name__}: {e}")
        raise
    return stats


@app.task(name="signq.ingest.chunk", bind=True, max_retries=5)
def ingest_chunk(self, msg: dict) -> dict:
    def work(msg, t0):
        settings, storage, _ = context()
        out = process_chunk(msg, job_view(msg["job"]), storage, settings.fetch)
        return writer.write_chunk(storage, msg["job"], msg["idx"], out, writer.chunk_stats(out, time.perf_counter() - t0))

    return run_chunk(self, msg, work)


@app.task(name="signq.ingest.scan")
def scan(watch: dict) -> list[dict]:
    from producer.submit import Submission, submit
    from worker.schedule import scan as scan_watch

    settings, storage, jobs = context()

    def submit_one(url):
        sub = Submission(sources=[url], dataset=watch["dataset"], fmt=watch.get("format"))
        return submit(app, jobs, storage, settings, sub)

    return scan_watch(watch, jobs.r, submit_one)


def enqueue_finalize(job_id: str):
    finalize.apply_async(args=[job_id])


@app.task(name="signq.ingest.finalize", bind=True, max_retries=5)
def finalize(self, job_id: str) -> dict:
    settings, storage, jobs = context()
    if not jobs.claim_finalize(job_id, self.request.id):
        return {"skipped": "another finalize owns this job"}
    raw = jobs.raw(job_id)
    if raw.get("state") in ("done", "failed"):
        return {"skipped": f"job already {raw['state']}"}
    jobs.set_state(job_id, "finalizing")
    spec = jobs.spec(job_id)
    try:
        if raw.get("kind") == "predict":
            result = predictions.finalize(storage, job_id, int(raw["chunks_total"]))
        else:
            result = finalizer.finalize(storage, job_id, spec, int(raw["chunks_total"]), float(raw["created"]))
        for then in spec.get("then", []):      # before "done": a redelivered finalize re-sends, never skips
            app.send_task(then["task"], args=[then["job_id"]])
        jobs.set_state(job_id, "done", result=result)
    except TRANSIENT as e:
        retry_or_fail(self, jobs, job_id, e, "finalize")
    except Exception as e:
        jobs.fail(job_id, f"finalize: {type(e).__name__}: {e}")
        raise
    return {"location": result["location"]}

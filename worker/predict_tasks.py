"""Batch prediction, chunk by chunk on the ``model`` queue: ingest the chunk (fetch/decode/clean, the same
functions as ingestion), predict with the model loaded once per worker process, write the chunk's rows.
TensorFlow is imported by ``worker.predictor`` inside the task, i.e. in the forked child."""
from __future__ import annotations

import logging
import os
import time

from signq.errors import TransientError
from worker import predictions, predictor, writer
from worker.app import app
from worker.ingest import process_chunk
from worker.tasks import context, enqueue_finalize, job_view

log = logging.getLogger(__name__)


@app.task(name="signq.model.predict_chunk", bind=True, max_retries=5)
def predict_chunk(self, msg: dict) -> dict:
    settings, storage, jobs = context()
    job_id, idx = msg["job"], msg["idx"]
    stats = writer.read_done(storage, job_id, idx)
    if stats is None:
        if jobs.raw(job_id).get("state") == "failed":
            return {"skipped": "job failed"}
        jobs.start(job_id)
        jobs.chunk_running(job_id, idx, os.getpid())
        t0 = time.perf_counter()
        try:
            stats = _predict(msg, job_id, idx, settings, storage, jobs, t0)
        except (TransientError, OSError) as e:
            raise self.retry(exc=e, countdown=min(60, 2 ** self.request.retries))
        except Exception as e:
            jobs.fail(job_id, f"predict chunk {idx} ({msg['source']}): {type(e).__name__}: {e}")
            raise
    if jobs.chunk_done(job_id, idx, stats):
        enqueue_finalize(job_id)
    return stats


def _predict(msg, job_id, idx, settings, storage, jobs, t0) -> dict:
    out = process_chunk(msg, job_view(job_id), storage, settings.fetch)
    loaded = predictor.get_model(storage, jobs.spec(job_id)["model"])
    rows = predictions.chunk_rows(out, predictor.predict_arrays(loaded, out.images) if len(out.images) else [],
                                  loaded.class_names)
    stats = writer.chunk_stats(out, time.perf_counter() - t0)
    predictions.write_chunk(storage, job_id, idx, rows, stats)
    log.info("predict chunk job=%s idx=%d records=%d predicted=%d in %.3fs", job_id, idx, stats["records"],
             stats["ok"], stats["seconds"])
    return stats

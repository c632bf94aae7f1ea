"""Batch prediction, chunk by chunk on the ``model`` queue: ingest the chunk (fetch/decode/clean, the same
functions as ingestion), predict with the model loaded once per worker process, write the chunk's rows.
TensorFlow is imported by ``worker.predictor`` inside the task, i.e. in the forked child."""
from __future__ import annotations

import time

from worker import predictions, predictor, writer
from worker.app import app
from worker.ingest import process_chunk
from worker.tasks import context, job_view, run_chunk


@app.task(name="signq.model.predict_chunk", bind=True, max_retries=5)
def predict_chunk(self, msg: dict) -> dict:
    return run_chunk(self, msg, predict)


def predict(msg: dict, t0: float) -> dict:
    settings, storage, jobs = context()
    job_id, idx = msg["job"], msg["idx"]
    out = process_chunk(msg, job_view(job_id), storage, settings.fetch)
    loaded = predictor.get_model(storage, jobs.spec(job_id)["model"])
    rows = predictions.chunk_rows(out, predictor.predict_arrays(loaded, out.images) if len(out.images) else [],
                                  loaded.class_names)
    stats = writer.chunk_stats(out, time.perf_counter() - t0)
    predictions.write_chunk(storage, job_id, idx, rows, stats)
    return stats

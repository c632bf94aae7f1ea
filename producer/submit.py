"""Split sources into chunk jobs and enqueue them, holding one chunk in memory at a time.

A chunk message is a small JSON record: job id, chunk index, source name, kind, count, first position, and
either the chunk's references (URLs, file paths) or the storage key of its staged payload.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from signq.errors import ManifestError
from signq.jobs import JobStore
from signq.settings import Settings
from signq.storage import Storage, check_name
from producer.readers import open_source, source_name

log = logging.getLogger(__name__)
CHUNK_TASK = {"ingest": "signq.ingest.chunk", "predict": "signq.model.predict_chunk"}
STAGED_EXT = {"csv": "csv", "base64": "jsonl", "npz": "npz"}


@dataclass
class Submission:
    sources: list[str]
    dataset: str = "dataset"
    fmt: str | None = None
    kind: str = "ingest"              # ingest | predict
    extra: dict = field(default_factory=dict)   # e.g. the model to predict with
    then: list = field(default_factory=list)    # follow-up jobs started by finalize: [{task, job_id}]


def job_spec(sub: Submission, settings: Settings) -> dict:
    return {
        "dataset": sub.dataset, "sources": [source_name(s) for s in sub.sources], "format": sub.fmt,
        "classes": settings.classes.to_json(), "image": settings.image.to_json(),
        "image_shape": list(settings.image.shape), "chunk_size": settings.chunk_size, "then": sub.then, **sub.extra,
    }


def submit(app, jobs: JobStore, storage: Storage, settings: Settings, sub: Submission, job_id: str | None = None,
           on_chunk=None) -> str:
    """Create the job, stage and enqueue every chunk, then record the totals. Returns the job id.

    A manifest error marks the job failed and is re-raised (chunks already queued are skipped by workers).
    """
    check_name(sub.dataset, "dataset name")
    readers = [open_source(s, sub.fmt) for s in sub.sources]   # fail fast on missing files / unknown formats
    job_id = jobs.create(sub.kind, job_spec(sub, settings), job_id)
    task = CHUNK_TASK[sub.kind]
    idx = records = 0
    try:
        for src, reader in zip(sub.sources, readers):
            for chunk in reader.chunks(settings.chunk_size):
                msg = {"job": job_id, "idx": idx, "source": source_name(src), "kind": chunk.kind,
                       "count": chunk.count, "start": chunk.start, **chunk.extra}
                if chunk.items is not None:
                    msg["items"] = chunk.items
                else:
                    msg["staged"] = stage(storage, job_id, idx, chunk)
                app.send_task(task, args=[msg])
                idx += 1
                records += chunk.count
                if on_chunk:
                    on_chunk(idx, records)
    except BaseException as e:      # a bad manifest, a storage error, Ctrl-C: the job must not stay queued
        jobs.fail(job_id, str(e) if isinstance(e, ManifestError) else f"producer: {type(e).__name__}: {e}")
        raise
    if jobs.set_total(job_id, idx, records):
        app.send_task("signq.ingest.finalize", args=[job_id])
    log.info("submitted job=%s chunks=%d records=%d", job_id, idx, records)
    return job_id


def stage(storage: Storage, job_id: str, idx: int, chunk) -> str:
    key = f"jobs/{job_id}/staged/{idx:06d}.{STAGED_EXT[chunk.kind]}"
    storage.write_bytes(storage.path(*key.split("/")), chunk.payload)
    return key


def for_model(settings: Settings, meta: dict) -> Settings:
    """Settings whose class set and image shape are a stored model's (``model.json``), for predict jobs."""
    from dataclasses import replace

    from signq.labels import ClassSet

    h, w, c = meta["image_shape"]
    return replace(settings, classes=ClassSet.from_names(meta["class_names"]),
                   image=replace(settings.image, height=h, width=w, channels=c))


def predict_submission(meta: dict, sources: list[str], fmt: str | None = None) -> Submission:
    return Submission(sources=sources, dataset=meta["name"], fmt=fmt, kind="predict",
                      extra={"model": f"{meta['name']}:{meta['version']}"})

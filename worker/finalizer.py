"""Finalize a job once every chunk is done: drop duplicates across chunks (first wins, in chunk order),
publish the dataset's shards, rejects, report and chart, then ``manifest.json`` and ``LATEST`` last.

Idempotent: every file is written atomically under names derived from the job, so a second run (a
redelivered finalize) rewrites the same content; readers only trust a dataset once its manifest exists.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np

from signq.storage import Storage
from worker import writer
from worker.report import class_balance_png

log = logging.getLogger(__name__)


def finalize(storage: Storage, job_id: str, spec: dict, n_chunks: int, created: float) -> dict:
    t0 = time.time()
    name, version = spec["dataset"], job_id
    out_dir = storage.path("datasets", name, version)
    names = spec["classes"]["names"]
    seen: dict[bytes, str] = {}
    shards, rejects, class_counts, records = [], [], np.zeros(len(names), np.int64), 0
    for idx in range(n_chunks):
        arrays, chunk_rejects = writer.read_chunk(storage, job_id, idx)
        rejects.extend(chunk_rejects)
        keep = _first_seen(arrays, seen, spec, rejects)
        records += len(arrays["labels"]) + len(chunk_rejects)
        if len(keep):
            shard = {k: arrays[k][keep] for k in ("images", "labels", "keys")}
            shards.append(_write_shard(storage, out_dir, len(shards), shard))
            class_counts += np.bincount(shard["labels"], minlength=len(names))[:len(names)]
    storage.write_bytes(out_dir + "/rejects.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rejects))
    counts = {n: int(c) for n, c in zip(names, class_counts)}
    storage.write_bytes(out_dir + "/class_balance.png",
                        class_balance_png(names, list(counts.values()), f"{name}:{version} - class balance"))
    finished = time.time()
    report = _report(spec, records, shards, rejects, counts, created, t0, finished)
    storage.write_json(out_dir + "/report.json", report)
    manifest = {
        "name": name, "version": version, "job_id": job_id, "created": finished,
        "class_names": names, "class_codes": spec["classes"]["codes"], "image_shape": list(spec["image_shape"]),
        "count": int(sum(s["count"] for s in shards)), "class_counts": counts, "shards": shards,
        "content_sha256": hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest(),
        "sources": spec["sources"],
    }
    storage.write_json(out_dir + "/manifest.json", manifest)
    storage.write_bytes(storage.path("datasets", name, "LATEST"), version.encode())
    log.info("finalized job=%s dataset=%s:%s ok=%d rejected=%d in %.2fs", job_id, name, version,
             manifest["count"], len(rejects), finished - t0)
    return {**report, "location": out_dir, "dataset": f"{name}:{version}"}


def _first_seen(arrays: dict, seen: dict, spec: dict, rejects: list) -> np.ndarray:
    keep = []
    for i, (h, key) in enumerate(zip(arrays["hashes"], arrays["keys"])):
        h = bytes(h)
        if h in seen:
            source, _, position = str(key).partition(":")
            rejects.append({"key": str(key), "source": source, "position": position, "reason": "duplicate",
                            "detail": f"same pixels as {seen[h]}"})
        else:
            seen[h] = str(key)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _write_shard(storage: Storage, out_dir: str, n: int, shard: dict) -> dict:
    fname = f"shard-{n:05d}.npz"
    storage.write_npz(f"{out_dir}/{fname}", **shard)
    digest = hashlib.sha256()
    for k in ("images", "labels", "keys"):
        digest.update(np.ascontiguousarray(shard[k]).tobytes())
    return {"file": fname, "count": int(len(shard["labels"])), "sha256": digest.hexdigest()}


def _report(spec, records, shards, rejects, counts, created, t0, finished) -> dict:
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    ok = int(sum(s["count"] for s in shards))
    seconds = max(finished - created, 1e-9)
    return {
        "records_in": records, "records_ok": ok, "records_rejected": len(rejects),
        "rejects_by_reason": dict(sorted(by_reason.items())), "duplicates": by_reason.get("duplicate", 0),
        "class_counts": counts,
        "timings": {"submitted": created, "finalize_seconds": round(finished - t0, 3), "total_seconds": round(seconds, 3)},
        "images_per_second": round(records / seconds, 1),
    }

"""Chunk outputs in shared storage, written so that ``acks_late`` redelivery is safe.

    jobs/<job>/chunks/<idx>.npz            images, labels, keys, hashes (numpy.savez, no pickle)
    jobs/<job>/chunks/<idx>.rejects.jsonl  one JSON reject per line
    jobs/<job>/chunks/<idx>.done           stats JSON: the completion marker, written last

Every file is written under a temporary name and renamed. A redelivered chunk that finds ``.done`` returns
the recorded stats without redoing anything; one that finds no marker redoes the chunk from its inputs and
overwrites the same names with the same content.
"""
from __future__ import annotations

import json

from signq.storage import Storage
from worker.cleaner import ChunkOutput


def chunk_dir(storage: Storage, job_id: str) -> str:
    return storage.path("jobs", job_id, "chunks")


def chunk_name(idx: int) -> str:
    return f"{idx:06d}"


def read_done(storage: Storage, job_id: str, idx: int) -> dict | None:
    path = f"{chunk_dir(storage, job_id)}/{chunk_name(idx)}.done"
    return storage.read_json(path) if storage.exists(path) else None


def write_chunk(storage: Storage, job_id: str, idx: int, out: ChunkOutput, stats: dict) -> dict:
    base = f"{chunk_dir(storage, job_id)}/{chunk_name(idx)}"
    storage.write_npz(base + ".npz", **out.arrays())
    storage.write_bytes(base + ".rejects.jsonl",
                        b"".join(json.dumps(r.to_json()).encode() + b"\n" for r in out.rejects))
    storage.write_json(base + ".done", stats)
    return stats


def read_chunk(storage: Storage, job_id: str, idx: int) -> tuple[dict, list[dict]]:
    base = f"{chunk_dir(storage, job_id)}/{chunk_name(idx)}"
    arrays = storage.load_npz(base + ".npz")
    rejects = [json.loads(line) for line in storage.read_bytes(base + ".rejects.jsonl").splitlines() if line]
    return arrays, rejects


def chunk_stats(out: ChunkOutput, seconds: float) -> dict:
    by_reason: dict[str, int] = {}
    for r in out.rejects:
        by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
    n = len(out.labels) + len(out.rejects)
    return {"records": n, "ok": int(len(out.labels)), "rejected": len(out.rejects),
            "rejects_by_reason": by_reason, "seconds": round(seconds, 4)}

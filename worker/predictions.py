"""Batch prediction output: one row per input record, predicted or rejected, none silently missing.

    jobs/<job>/chunks/<idx>.predictions.jsonl    rows of one chunk (written atomically, then .done)
    predictions/<job>/predictions.jsonl          every row, in input order
    predictions/<job>/predictions.csv            the same as CSV
    predictions/<job>/summary.json               counts by predicted class and reject reason, confidence
"""
from __future__ import annotations

import csv
import io
import json
import re

from signq.storage import Storage
from worker import writer
from worker.cleaner import ChunkOutput

CSV_FIELDS = ("key", "source", "position", "status", "predicted", "confidence", "top1", "top2", "top3",
              "label", "reason", "detail")


def natural_key(position: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", position)]


def chunk_rows(out: ChunkOutput, predicted: list[dict], class_names) -> list[dict]:
    """Merge predicted records and rejects of a chunk back into input order."""
    rows = []
    for key, label, pred in zip(out.keys, out.labels, predicted):
        source, _, position = str(key).rpartition(":")
        row = {"key": str(key), "source": source, "position": position, "status": "ok", **pred}
        row.pop("top3", None)
        row["top3"] = pred.get("top3")
        if label >= 0:
            row["label"] = class_names[int(label)]
        rows.append(row)
    for r in out.rejects:
        rows.append({"key": r.key, "source": r.source, "position": r.position, "status": "rejected",
                     "reason": r.reason, "detail": r.detail})
    return sorted(rows, key=lambda r: natural_key(r["position"]))


def write_chunk(storage: Storage, job_id: str, idx: int, rows: list[dict], stats: dict):
    base = f"{writer.chunk_dir(storage, job_id)}/{writer.chunk_name(idx)}"
    storage.write_bytes(base + ".predictions.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    storage.write_json(base + ".done", stats)


def finalize(storage: Storage, job_id: str, n_chunks: int) -> dict:
    out_dir = storage.path("predictions", job_id)
    jsonl, table = io.BytesIO(), io.StringIO()
    w = csv.DictWriter(table, CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    by_class, by_reason, conf_sum, ok = {}, {}, 0.0, 0
    for idx in range(n_chunks):
        data = storage.read_bytes(f"{writer.chunk_dir(storage, job_id)}/{writer.chunk_name(idx)}.predictions.jsonl")
        jsonl.write(data)
        for line in data.splitlines():
            row = json.loads(line)
            if row["status"] == "ok":
                ok += 1
                conf_sum += row["confidence"]
                by_class[row["predicted"]] = by_class.get(row["predicted"], 0) + 1
                row.update({f"top{i + 1}": f"{n}:{p:.4f}" for i, (n, p) in enumerate(row["top3"])})
            else:
                by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
            w.writerow(row)
    storage.write_bytes(out_dir + "/predictions.jsonl", jsonl.getvalue())
    storage.write_bytes(out_dir + "/predictions.csv", table.getvalue().encode())
    rejected = sum(by_reason.values())
    summary = {"records": ok + rejected, "predicted": ok, "rejected": rejected,
               "rejects_by_reason": dict(sorted(by_reason.items())), "by_class": dict(sorted(by_class.items())),
               "mean_confidence": round(conf_sum / ok, 6) if ok else None,
               "files": {"jsonl": out_dir + "/predictions.jsonl", "csv": out_dir + "/predictions.csv"}}
    storage.write_json(out_dir + "/summary.json", summary)
    return {**summary, "location": out_dir, "records_ok": ok, "records_rejected": rejected}

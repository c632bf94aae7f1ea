"""A chunk's whole ingestion as plain functions: read its records, fetch/decode/clean, return arrays.

``process_chunk(msg, job, ctx)`` is what the Celery task calls; tests call it directly without a broker.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from dataclasses import dataclass

import fsspec
import numpy as np

from signq.labels import ClassSet
from signq.settings import FetchSettings, ImageSpec
from signq.storage import Storage
from worker import decoder, fetcher
from worker.cleaner import ChunkOutput, Collector, label_index, parse_csv
from worker.records import BadRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobView:
    """What a worker needs of a job's spec."""

    job_id: str
    classes: ClassSet
    image: ImageSpec
    predict: bool = False     # labels optional, blank/duplicate images kept (every record gets a prediction)

    @classmethod
    def from_spec(cls, job_id: str, spec: dict) -> "JobView":
        return cls(job_id, ClassSet.from_json(spec["classes"]), ImageSpec(**spec["image"]), "model" in spec)


def process_chunk(msg: dict, job: JobView, storage: Storage, fetch: FetchSettings) -> ChunkOutput:
    out = Collector(msg["source"], job.image, hygiene=not job.predict)
    kind = msg["kind"]
    if kind in ("urls", "files"):
        order = _process_refs(msg["items"], kind, job, fetch, out)
        return out.finish(order)
    payload = storage.read_bytes(storage.path(*msg["staged"].split("/")))
    if kind == "csv":
        parse_csv(payload, msg["start"], job.image, job.classes, out)
    elif kind == "base64":
        order = _process_base64(payload, job, out)
        return out.finish(order)
    elif kind == "npz":
        _process_npz(payload, msg["start"], msg.get("array", "x"), job, out)
    else:
        raise ValueError(f"unknown chunk kind {kind!r}")
    return out.finish()


def _decode_into(out: Collector, job: JobView, labels: dict, positions: dict):
    """A ``handle`` for fetched/read bodies: decode each, keep the good ones, reject the rest."""
    def handle(batch):
        imgs, labs, pos = [], [], []
        for i, body in batch:
            try:
                imgs.append(decoder.decode(body, job.image))
            except BadRecord as e:
                out.bad(positions[i], e)
                continue
            except Exception as e:    # a decoder bug on hostile bytes is this record's problem, not the chunk's
                out.reject(positions[i], "undecodable", f"{type(e).__name__}: {e}"[:200])
                continue
            labs.append(labels[i])
            pos.append(positions[i])
        if imgs:
            out.add_many(np.stack(imgs), np.array(labs, np.int16), pos)
    return handle


def _labelled(items, job: JobView, out: Collector):
    """Check labels before any I/O: records without a valid label are rejected without being fetched."""
    todo, labels, positions = [], {}, {}
    for position, ref, label in items:
        try:
            labels[len(todo)] = label_index(label, job.classes)
        except BadRecord as e:
            if not job.predict:
                out.bad(position, e)
                continue
            labels[len(todo)] = -1          # prediction needs no label
        positions[len(todo)] = position
        todo.append(ref)
    return todo, labels, positions


def _process_refs(items, kind, job: JobView, fetch: FetchSettings, out: Collector) -> list[str]:
    todo, labels, positions = _labelled(items, job, out)
    handle = _decode_into(out, job, labels, positions)
    if kind == "urls":
        failures = fetcher.fetch_all(todo, fetch, handle)
    else:
        failures = {}
        handle_batch = []
        for i, uri in enumerate(todo):
            try:
                handle_batch.append((i, _read_file(uri, fetch.max_body_bytes)))
            except BadRecord as e:
                failures[i] = e
        handle(handle_batch)
    for i, err in failures.items():
        out.bad(positions[i], err)
    return [str(p) for p, _, _ in items]


def _read_file(uri: str, cap: int) -> bytes:
    if uri.startswith(("http://", "https://")):   # only the fetcher may go to the network (policy, retries)
        raise BadRecord("url_invalid", "folder sources are read from storage; list http(s) images in a URL manifest")
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read(cap + 1)
    except (OSError, ValueError) as e:
        raise BadRecord("file_missing", f"{type(e).__name__}: {e}"[:200]) from None
    if len(data) > cap:
        raise BadRecord("too_large", f"file larger than the cap of {cap} bytes")
    return data


def _process_base64(payload: bytes, job: JobView, out: Collector) -> list[str]:
    items = []
    for line in payload.splitlines():
        n, label, b64 = json.loads(line)
        items.append([str(n), b64, label])
    todo, labels, positions = _labelled(items, job, out)
    bodies = []
    for i, text in enumerate(todo):
        try:
            bodies.append((i, b64decode(text)))
        except BadRecord as e:
            out.bad(positions[i], e)
    _decode_into(out, job, labels, positions)(bodies)
    return [p for p, _, _ in items]


def b64decode(text) -> bytes:
    if not isinstance(text, str):
        raise BadRecord("base64_invalid", f"expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise BadRecord("base64_invalid", f"data URL without ;base64: {header[:60]!r}")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRecord("base64_invalid", str(e)[:200]) from None


def _process_npz(payload: bytes, start: int, array: str, job: JobView, out: Collector):
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    positions = [f"{array}[{start + i}]" for i in range(len(x))]
    table = job.classes.code_lookup()
    codes = y.astype(np.int64)
    idx = np.where((codes >= 0) & (codes < len(table)), table[np.clip(codes, 0, len(table) - 1)], -1)
    if x.dtype != np.uint8:
        bad = (x.reshape(len(x), -1) < 0).any(axis=1) | (x.reshape(len(x), -1) > 255).any(axis=1)
        idx = np.where(bad, -2, idx)
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[1:] != job.image.shape:
        x = np.stack([decoder.fit(img if job.image.channels == img.shape[-1] else _channels(img, job.image.channels),
                                  job.image) for img in x]) if len(x) else x
    if job.predict:                     # prediction: unknown label codes are fine, only bad pixels are not
        idx = np.where(idx == -1, -3, idx)
    for i in np.flatnonzero((idx < 0) & (idx > -3)):
        reason = "csv_out_of_range" if idx[i] == -2 else "label_unknown"
        out.reject(positions[i], reason, f"label code {int(codes[i])}" if reason == "label_unknown" else "pixel outside 0..255")
    keep = np.flatnonzero((idx >= 0) | (idx == -3))
    idx = np.where(idx == -3, -1, idx)
    out.add_many(x[keep], idx[keep].astype(np.int16), [positions[i] for i in keep])


def _channels(img: np.ndarray, channels: int) -> np.ndarray:
    import cv2

    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.shape[-1] == 3 else img[..., 0]
    return np.repeat(img[..., :1], 3, axis=-1)

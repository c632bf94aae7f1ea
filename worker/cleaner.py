"""Cleaning: labels, CSV rows, blank images and duplicates. Plain functions over numpy arrays.

``Collector`` gathers a chunk's accepted images and its rejects; ``finish()`` drops blank images and
duplicates within the chunk (the first occurrence wins) and hashes every kept image, so finalize can drop
duplicates across chunks in the same first-wins order.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from signq.labels import ClassSet
from signq.settings import ImageSpec
from worker.records import BadRecord, Reject

HASH_BYTES = 16


def image_hash(img: np.ndarray) -> bytes:
    return hashlib.blake2b(img.tobytes(), digest_size=HASH_BYTES).digest()


def label_index(label, classes: ClassSet) -> int:
    if label is None or (isinstance(label, str) and not label.strip()):
        raise BadRecord("label_missing", "no label")
    idx = classes.index(label)
    if idx is None:
        raise BadRecord("label_unknown", f"label {label!r} is not one of {len(classes)} classes")
    return idx


@dataclass
class ChunkOutput:
    images: np.ndarray      # (n, H, W, C) uint8
    labels: np.ndarray      # (n,) int16
    keys: np.ndarray        # (n,) str "<source>:<position>"
    hashes: np.ndarray      # (n,) S16 blake2b of the pixels
    rejects: list[Reject]

    def arrays(self) -> dict:
        return {"images": self.images, "labels": self.labels, "keys": self.keys, "hashes": self.hashes}


class Collector:
    def __init__(self, source: str, spec: ImageSpec, hygiene: bool = True):
        self.source, self.spec = source, spec
        self.hygiene = hygiene      # False for prediction: blank and duplicate images are still predicted
        self.blocks: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        self.rejects: list[Reject] = []

    def reject(self, position, reason: str, detail: str = ""):
        self.rejects.append(Reject(self.source, str(position), reason, detail))

    def bad(self, position, err: BadRecord):
        self.reject(position, err.reason, err.detail)

    def add_many(self, images: np.ndarray, labels: np.ndarray, positions: list):
        if len(positions):
            self.blocks.append((images.reshape(len(positions), *self.spec.shape), labels, [str(p) for p in positions]))

    def finish(self, order: list[str] | None = None) -> ChunkOutput:
        """Blank and duplicate checks; records come out in ``order`` of positions when given."""
        h, w, c = self.spec.shape
        images = np.concatenate([b[0] for b in self.blocks]) if self.blocks else np.zeros((0, h, w, c), np.uint8)
        labels = np.concatenate([b[1] for b in self.blocks]).astype(np.int16) if self.blocks else np.zeros(0, np.int16)
        positions = [p for b in self.blocks for p in b[2]]
        if order is not None:
            rank = {p: i for i, p in enumerate(order)}
            perm = sorted(range(len(positions)), key=lambda i: rank[positions[i]])
            images, labels, positions = images[perm], labels[perm], [positions[i] for i in perm]
        flat = images.reshape(len(images), h * w * c)
        blank = flat.min(axis=1) == flat.max(axis=1) if len(flat) else np.zeros(0, bool)
        if not self.hygiene:
            blank = np.zeros(len(flat), bool)
        keep = ~blank
        hashes = [image_hash(img) for img in images]
        first: dict[bytes, str] = {}
        for i, hsh in enumerate(hashes):
            if blank[i]:
                self.reject(positions[i], "blank", f"every pixel is {int(flat[i, 0])}")
            elif hsh in first and self.hygiene:
                keep[i] = False
                self.reject(positions[i], "duplicate", f"same pixels as {self.source}:{first[hsh]}")
            else:
                first[hsh] = positions[i]
        idx = np.flatnonzero(keep)
        keys = np.array([f"{self.source}:{positions[i]}" for i in idx], dtype=str)
        return ChunkOutput(images[idx], labels[idx], keys if len(idx) else np.zeros(0, "<U1"),
                           np.array([hashes[i] for i in idx], dtype=f"S{HASH_BYTES}"), self.rejects)


def parse_csv(data: bytes, start_line: int, spec: ImageSpec, classes: ClassSet, out: Collector):
    """Parse a block of ``label,pixel...`` lines (file line numbers from ``start_line``) into ``out``."""
    n_fields = 1 + spec.height * spec.width * spec.channels
    good, lines = [], []
    for offset, raw in enumerate(data.split(b"\n")):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        lineno = start_line + offset
        fields = line.count(b",") + 1
        if fields != n_fields:
            out.reject(lineno, "csv_wrong_length", f"{fields} fields, expected {n_fields} (label + pixels)")
            continue
        good.append(lineno)
        lines.append(line)
    if not lines:
        return
    joined = b"\n".join(lines)
    try:   # fast path (numpy's C parser, ~4x pandas): every field an integer
        table = np.loadtxt(io.BytesIO(joined), delimiter=",", dtype=np.int64, ndmin=2, comments=None)
    except ValueError:
        table = None
    if table is not None:
        _check_ints(table, good, classes, out)
        return
    df = pd.read_csv(io.BytesIO(joined), header=None,
                     keep_default_na=False, na_values=[""], low_memory=False)
    _check_rows(df, good, spec, classes, out)


def _check_ints(table: np.ndarray, linenos: list[int], classes: ClassSet, out: Collector):
    values = table[:, 1:]
    bad = (values < 0) | (values > 255)
    ok = ~bad.any(axis=1)
    for r in np.flatnonzero(~ok):
        col = int(np.flatnonzero(bad[r])[0])
        out.reject(linenos[r], "csv_out_of_range", f"pixel{col + 1}={int(values[r, col])}")
    table_codes = classes.code_lookup()
    codes = table[:, 0]
    idx = np.where((codes >= 0) & (codes < len(table_codes)), table_codes[np.clip(codes, 0, len(table_codes) - 1)], -1)
    if not out.hygiene:                 # prediction: the label is optional, every row gets predicted
        idx = np.where(idx < 0, -1, idx)
        rows = np.flatnonzero(ok)
        out.add_many(values[rows].astype(np.uint8), idx[rows], [linenos[r] for r in rows])
        return
    for r in np.flatnonzero(ok & (idx < 0)):
        out.reject(linenos[r], "label_unknown", f"label {int(codes[r])!r}")
    rows = np.flatnonzero(ok & (idx >= 0))
    out.add_many(values[rows].astype(np.uint8), idx[rows], [linenos[r] for r in rows])


def _check_rows(df: pd.DataFrame, linenos: list[int], spec: ImageSpec, classes: ClassSet, out: Collector):
    pixels = df.iloc[:, 1:]
    missing = pixels.isna().to_numpy()
    if all(dt.kind in "iuf" for dt in pixels.dtypes):
        values = pixels.to_numpy(dtype=np.float64)
        non_numeric = np.zeros_like(missing)
    else:
        values = pixels.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        non_numeric = np.isnan(values) & ~missing
    with np.errstate(invalid="ignore"):
        out_of_range = ~np.isnan(values) & ((values < 0) | (values > 255) | (values != np.floor(values)))
    label_idx = _labels(df.iloc[:, 0], classes)
    ok = np.ones(len(df), bool)
    for mask, reason in ((non_numeric, "csv_non_numeric"), (missing, "csv_missing"), (out_of_range, "csv_out_of_range")):
        rows = np.flatnonzero(mask.any(axis=1) & ok)
        for r in rows:
            col = int(np.flatnonzero(mask[r])[0])
            out.reject(linenos[r], reason, f"pixel{col + 1}={str(df.iat[r, col + 1])[:20]!r}")
        ok[rows] = False
    for r in np.flatnonzero(ok & (label_idx < 0) & out.hygiene):    # prediction keeps unlabelled rows (-1)
        raw = df.iat[r, 0]
        out.reject(linenos[r], "label_missing" if pd.isna(raw) else "label_unknown", f"label {raw!r}")
        ok[r] = False
    rows = np.flatnonzero(ok)
    out.add_many(values[rows].astype(np.uint8), label_idx[rows], [linenos[r] for r in rows])


def _labels(col: pd.Series, classes: ClassSet) -> np.ndarray:
    if col.dtype.kind in "iu":
        table = classes.code_lookup()
        v = col.to_numpy(dtype=np.int64)
        inside = (v >= 0) & (v < len(table))
        return np.where(inside, table[np.clip(v, 0, len(table) - 1)], -1)
    lookup = {u: classes.index(u) for u in col.dropna().unique()}
    return np.array([-1 if pd.isna(v) or lookup.get(v) is None else lookup[v] for v in col], dtype=np.int64)

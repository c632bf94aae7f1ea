"""The dataset format, and the documented way to load a finished dataset into numpy.

A finished dataset lives at ``<storage>/datasets/<name>/<version>/`` (``datasets/<name>/LATEST`` names the
newest version) and holds:

    manifest.json       name, version, class_names, image_shape, count, class_counts, shards
                        [{file, count, sha256}], content_sha256, sources, job_id
    shard-00000.npz     plain ``numpy.savez`` archives (no pickle): images uint8 (n, H, W, C),
                        labels int16 class indices into class_names, keys str "<source>:<position>"
    rejects.jsonl       one JSON object per rejected record: source, position, key, reason, detail
    report.json         records in/ok/rejected, rejects by reason, duplicates, class counts, timings, images/s
    class_balance.png   bar chart of class counts

Shards load with ``numpy.load`` alone, so pandas or ``tf.data`` need nothing from signq.
"""
from __future__ import annotations

import numpy as np

from signq.errors import DatasetNotFound
from signq.storage import Storage, check_name

SHARD_ARRAYS = ("images", "labels", "keys")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None)."""
    name, _, version = ref.partition(":")
    check_name(name, "dataset name")
    if version:
        check_name(version, "dataset version")
    return name, version or None


def resolve(storage: Storage, ref: str) -> tuple[str, dict]:
    """The directory and manifest of a finished dataset (latest version unless one is named)."""
    name, version = parse_ref(ref)
    if version is None:
        latest = storage.path("datasets", name, "LATEST")
        if not storage.exists(latest):
            raise DatasetNotFound(f"No finished dataset named {name!r} in {storage.url}. "
                                  f"Ingest one with `signq run SOURCE --dataset {name}`.")
        version = storage.read_bytes(latest).decode().strip()
    directory = storage.path("datasets", name, version)
    manifest_path = directory + "/manifest.json"
    if not storage.exists(manifest_path):
        raise DatasetNotFound(f"Dataset {name}:{version} is not finished (no manifest.json in {directory}).")
    return directory, storage.read_json(manifest_path)


def iter_shards(storage: Storage, ref: str):
    """Yield each shard of a dataset as a dict of numpy arrays (images, labels, keys), in order."""
    directory, manifest = resolve(storage, ref)
    for shard in manifest["shards"]:
        yield storage.load_npz(f"{directory}/{shard['file']}")


def load_dataset(ref: str, storage: str | Storage | None = None):
    """Load a finished dataset into memory.

    Args:
        ref: ``"NAME"`` (latest version) or ``"NAME:VERSION"``.
        storage: the storage root (path or fsspec URL, or a Storage); default ``$SIGNQ_STORAGE`` or
            ``./signq-data``.

    Returns:
        ``(images, labels, keys)``: uint8 array (n, H, W, C), int16 class indices (n,), str keys (n,).
        Class names are in the dataset's ``manifest.json`` (``load_manifest``).
    """
    st = _storage(storage)
    _, manifest = resolve(st, ref)
    h, w, c = manifest["image_shape"]
    parts = list(iter_shards(st, ref))
    if not parts:
        return np.zeros((0, h, w, c), np.uint8), np.zeros(0, np.int16), np.zeros(0, "<U1")
    return tuple(np.concatenate([p[k] for p in parts]) for k in SHARD_ARRAYS)


def load_manifest(ref: str, storage: str | Storage | None = None) -> dict:
    return resolve(_storage(storage), ref)[1]


def _storage(storage) -> Storage:
    if isinstance(storage, Storage):
        return storage
    if storage is None:
        from signq.settings import Settings

        storage = Settings.from_env().storage
    return Storage(storage)

"""Helpers for the model tests: real Sign Language MNIST rows written as a finished signq dataset.

The dataset is written directly in the documented format (manifest.json + shard-*.npz + LATEST), so these
tests do not depend on the ingestion code.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from signq.labels import ClassSet
from signq.storage import Storage

CSV = "/work/shared/data/sign-mnist/sign_mnist_train.csv.gz"
CLASSES = ClassSet.parse("letters24")


def read_rows(n: int, skip: int = 0):
    """(images uint8 (n,28,28,1), labels int16 class indices) from the first rows of the training CSV."""
    frame = pd.read_csv(CSV, nrows=n + skip).iloc[skip:]
    labels = CLASSES.code_lookup()[frame["label"].to_numpy()].astype(np.int16)
    images = frame.drop(columns="label").to_numpy(np.uint8).reshape(-1, 28, 28, 1)
    return images, labels


def write_dataset(storage: Storage, name: str, images, labels, version: str = "v1", shard_rows: int = 100,
                  class_names=CLASSES.names, source: str = "train.csv") -> str:
    """Write a finished dataset; returns its ref ``name:version``."""
    directory = storage.path("datasets", name, version)
    shards, digest = [], hashlib.sha256()
    for i, a in enumerate(range(0, len(images), shard_rows)):
        keys = np.array([f"{source}:{j}" for j in range(a, min(a + shard_rows, len(images)))])
        file = f"shard-{i:05d}.npz"
        storage.write_npz(f"{directory}/{file}", images=images[a:a + shard_rows],
                          labels=np.asarray(labels[a:a + shard_rows], np.int16), keys=keys)
        sha = hashlib.sha256(storage.read_bytes(f"{directory}/{file}")).hexdigest()
        digest.update(sha.encode())
        shards.append({"file": file, "count": len(keys), "sha256": sha})
    storage.write_json(f"{directory}/manifest.json", {
        "name": name, "version": version, "class_names": list(class_names), "image_shape": list(images.shape[1:]),
        "count": len(images), "class_counts": np.bincount(labels, minlength=len(class_names)).tolist(),
        "shards": shards, "content_sha256": digest.hexdigest(), "sources": [source], "job_id": "test",
    })
    storage.write_bytes(storage.path("datasets", name, "LATEST"), version.encode())
    return f"{name}:{version}"


def tiny_hparams(**over) -> dict:
    """A small, fast 'regularized'-style model for tests."""
    return {"arch": "default", "filters": 4, "dense_units": 16, "augment": False, **over}

"""Batch prediction: load a stored model once per process, turn image arrays into result rows.

    loaded = get_model(storage, "signs")          # cached per process (and per resolved version)
    rows = predict_arrays(loaded, images)        # [{"predicted", "confidence", "top3"}, ...]
    rows = predict_rows(loaded, images, keys, sources)   # the same, with key and source first

Images are uint8 (n, H, W, C) as in dataset shards; the model does its own rescaling.
This module imports Keras lazily (inside ``get_model``), so importing it costs nothing.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
_CACHE: dict = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    model: object                 # keras.Model
    class_names: tuple
    ref: str                      # NAME:VERSION, resolved
    image_shape: tuple
    directory: str


def get_model(storage, ref: str, form: str | None = None) -> LoadedModel:
    """The model ``ref`` (``NAME`` = latest, or ``NAME:VERSION``), loaded once per process (default form)."""
    from worker import modelstore

    directory, meta = modelstore.resolve(storage, ref)
    key = (storage.url, directory, form)
    with _LOCK:
        if key not in _CACHE:
            model, _ = modelstore.load_model(storage, f"{meta['name']}:{meta['version']}", form=form)
            _CACHE[key] = LoadedModel(model, tuple(meta["class_names"]), f"{meta['name']}:{meta['version']}",
                                      tuple(meta["image_shape"]), directory)
            log.info("loaded model %s (%s) in process cache", _CACHE[key].ref, form or "default form")
        return _CACHE[key]


def clear_cache():
    with _LOCK:
        _CACHE.clear()


def predict_proba(loaded: LoadedModel, images, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (n, classes) for uint8 images (n, H, W, C)."""
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(loaded.image_shape):
        raise ValueError(f"Model {loaded.ref} takes images shaped (n, {', '.join(map(str, loaded.image_shape))}). "
                         f"Received: {images.shape}")
    if len(images) == 0:
        return np.zeros((0, len(loaded.class_names)), np.float32)
    out = [np.asarray(loaded.model.predict_on_batch(images[a:a + batch_size].astype(np.float32)))
           for a in range(0, len(images), batch_size)]
    return np.concatenate(out)


def rows_from_proba(probs: np.ndarray, class_names, top_k: int = 3) -> list[dict]:
    """Pure: probabilities -> rows ``{"predicted", "confidence", "top3": [[name, p], ...]}``."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    return [{"predicted": class_names[t[0]], "confidence": round(float(p[t[0]]), 6),
             f"top{top_k}": [[class_names[i], round(float(p[i]), 6)] for i in t]}
            for p, t in zip(probs, top)]


def predict_arrays(loaded: LoadedModel, images, batch_size: int = 512) -> list[dict]:
    """One row per image: predicted class name, its confidence, and the top 3 (name, probability)."""
    return rows_from_proba(predict_proba(loaded, images, batch_size), loaded.class_names)


def predict_rows(loaded: LoadedModel, images, keys, sources=None, batch_size: int = 512) -> list[dict]:
    """``predict_arrays`` with ``key`` and ``source`` first (source defaults to the key's ``<source>:`` prefix)."""
    rows = predict_arrays(loaded, images, batch_size)
    sources = sources if sources is not None else [str(k).rsplit(":", 1)[0] for k in keys]
    return [{"key": str(k), "source": str(s), **r} for k, s, r in zip(keys, sources, rows)]

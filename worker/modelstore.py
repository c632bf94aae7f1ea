"""The model store: every trained model is a version under ``<storage>/models/<name>/<version>/``.

    model.keras            whole model (architecture, weights, optimizer): ``load_model(..., form="keras")``
    model.weights.h5       weights only, for ``architecture.json``: ``form="weights"``
    architecture.json      ``model.to_json()``
    saved_model/           ``model.export()`` for TF Serving / ``keras.layers.TFSMLayer``: ``form="savedmodel"``
    class_names.json       output index -> class name
    hparams.json           hyperparameters and the training spec
    lineage.json           datasets (name, version, content_sha256, count) and the split (seed, fractions, counts)
    metrics.json           test- and validation-split metrics, timings
    history.json           per-epoch loss/accuracy; curves.png draws it
    confusion.json/.png    test-split confusion matrix
    tensorboard/           TensorBoard logs of the training
    model.json             summary, written last: a version without it is incomplete and invisible

``models/<name>/LATEST`` names the newest version. A model is referred to as ``NAME`` (latest) or
``NAME:VERSION``. Models are loaded with Keras' safe mode. This module imports Keras lazily.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from signq.errors import ModelNotFound  # noqa: F401 (re-exported)
from signq.storage import check_name

log = logging.getLogger(__name__)
FORMS = ("keras", "weights", "savedmodel")


@dataclass
class VersionRecord:
    """Everything stored with a model version besides the model itself."""

    name: str
    class_names: list
    image_shape: list
    hparams: dict
    train_spec: dict = field(default_factory=dict)
    lineage: list = field(default_factory=list)
    split: dict = field(default_factory=dict)
    job_id: str | None = None
    metrics: dict | None = None          # test split (evaluation.metrics_from_confusion)
    val_metrics: dict | None = None
    history: dict = field(default_factory=dict)
    train_seconds: float | None = None
    samples: int | None = None           # training rows


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None)."""
    name, _, version = str(ref).partition(":")
    check_name(name, "model name")
    if version:
        check_name(version, "model version")
    return name, version or None


def resolve(storage, ref: str) -> tuple[str, dict]:
    """The directory and model.json of a stored model version (the latest unless one is named)."""
    name, version = parse_ref(ref)
    if version is None:
        latest = storage.path("models", name, "LATEST")
        if not storage.exists(latest):
            raise ModelNotFound(f"No model named {name!r} in {storage.url}. "
                                f"`signq models list` lists them; `signq train --dataset D --name {name}` makes one.")
        version = storage.read_bytes(latest).decode().strip()
    directory = storage.path("models", name, version)
    if not storage.exists(directory + "/model.json"):
        raise ModelNotFound(f"No complete model version {name}:{version} in {storage.url} "
                            f"(`signq models show {name}` lists its versions).")
    return directory, storage.read_json(directory + "/model.json")


def list_models(storage) -> list[dict]:
    """One row per complete version: name, version, created, arch, test_accuracy, latest."""
    rows = []
    for name in storage.listdir(storage.path("models")):
        latest_path = storage.path("models", name, "LATEST")
        latest = storage.read_bytes(latest_path).decode().strip() if storage.exists(latest_path) else None
        for version in storage.listdir(storage.path("models", name)):
            meta_path = f"{storage.path('models', name)}/{version}/model.json"
            if version != "LATEST" and storage.exists(meta_path):
                meta = storage.read_json(meta_path)
                rows.append({k: meta.get(k) for k in ("name", "version", "created", "arch", "test_accuracy")}
                            | {"latest": version == latest})
    return sorted(rows, key=lambda r: (r["name"], r["created"] or 0))


def show(storage, ref: str) -> dict:
    """model.json plus metrics, hparams and lineage of one version."""
    directory, meta = resolve(storage, ref)
    out = dict(meta, location=directory)
    for part in ("metrics", "hparams", "lineage"):
        path = f"{directory}/{part}.json"
        if storage.exists(path):
            out[part] = storage.read_json(path)
    return out


# ---- saving ---------------------------------------------------------------------------------------

def save_version(storage, model, record: VersionRecord, workdir: str, version: str) -> dict:
    """Write every form of ``model`` and ``record`` as ``<name>:<version>`` and point LATEST at it.

    Staged in a local directory under ``workdir``, then moved (local storage) or uploaded; model.json last.
    Idempotent: a version that is already complete is left as it is.
    """
    check_name(version, "model version")
    dest = storage.path("models", record.name, version)
    if storage.exists(dest + "/model.json"):
        log.info("model %s:%s already stored", record.name, version)
        return {"version": version, "location": dest}
    staging = os.path.join(workdir, f"export-{version}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    meta = write_forms(model, staging)
    write_record(record, staging, workdir)
    meta.update(summary(record, version))
    publish(storage, staging, dest, meta)
    storage.write_bytes(storage.path("models", record.name, "LATEST"), version.encode())
    log.info("stored model %s:%s at %s", record.name, version, dest)
    return {"version": version, "location": dest}


def write_forms(model, directory: str) -> dict:
    """model.keras, model.weights.h5, architecture.json, saved_model/ in a local directory."""
    model.save(os.path.join(directory, "model.keras"))
    model.save_weights(os.path.join(directory, "model.weights.h5"))
    with open(os.path.join(directory, "architecture.json"), "w") as f:
        f.write(model.to_json())
    export_savedmodel(model, os.path.join(directory, "saved_model"))
    external = any(type(lay).__name__ == "TFSMLayer" for lay in _leaf_layers(model))
    return {"external_savedmodel": external, "default_form": "savedmodel" if external else "keras",
            "forms": {"keras": "model.keras", "weights": "model.weights.h5", "architecture": "architecture.json",
                      "savedmodel": "saved_model"}, "params": int(model.count_params())}


def export_savedmodel(model, path: str):
    """A SavedModel whose ``serve`` endpoint runs the model in inference mode.

    ``model.export()`` traces ``model(x)`` with ``training=None``, and Keras' random augmentation layers
    treat that as training, so augmentation would run at serving time; this endpoint passes training=False.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
    archive.write_out(path, verbose=False)


def write_record(record: VersionRecord, directory: str, workdir: str):
    from worker import evaluation

    def dump(name, obj):
        with open(os.path.join(directory, name), "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=_jsonable)

    dump("class_names.json", list(record.class_names))
    dump("hparams.json", {"hparams": record.hparams, "train_spec": record.train_spec})
    dump("lineage.json", {"datasets": record.lineage, "split": record.split, "job_id": record.job_id})
    dump("history.json", record.history)
    rate = record.samples * len(record.history.get("loss", [])) / record.train_seconds \
        if record.samples and record.train_seconds else None
    test = {k: v for k, v in (record.metrics or {}).items() if k != "confusion"}
    val = {k: v for k, v in (record.val_metrics or {}).items() if k not in ("confusion", "per_class")}
    dump("metrics.json", {"test": test, "val": val, "train_seconds": record.train_seconds,
                          "train_samples_per_second": rate})
    if record.history:
        _write(directory, "curves.png", evaluation.curves_png(record.history))
    if record.metrics:
        dump("confusion.json", {"class_names": record.metrics["class_names"], "matrix": record.metrics["confusion"]})
        _write(directory, "confusion.png", evaluation.confusion_png(record.metrics["confusion"], record.class_names))
        _write(directory, "table.txt", (evaluation.format_table(record.metrics) + "\n").encode())
    tb = os.path.join(workdir, "tensorboard")
    if os.path.isdir(tb):
        shutil.copytree(tb, os.path.join(directory, "tensorboard"))


def summary(record: VersionRecord, version: str) -> dict:
    return {"name": record.name, "version": version, "created": time.time(), "job_id": record.job_id,
            "arch": record.hparams.get("arch"), "class_names": list(record.class_names),
            "image_shape": list(record.image_shape), "datasets": [d.get("ref") for d in record.lineage],
            "test_accuracy": (record.metrics or {}).get("accuracy"),
            "val_accuracy": (record.val_metrics or {}).get("accuracy")}


def publish(storage, staging: str, dest: str, meta: dict):
    """Move the staged files to ``dest`` and write model.json last (the completion marker)."""
    storage.rm(dest, recursive=True)                       # a partial copy from a killed attempt
    if storage.local:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(staging, dest)
    else:
        storage.fs.put(staging.rstrip("/") + "/", dest, recursive=True)
        shutil.rmtree(staging, ignore_errors=True)
    storage.write_json(dest + "/model.json", meta)


def _write(directory, name, data: bytes):
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# ---- loading --------------------------------------------------------------------------------------

def local_dir(storage, directory: str) -> str:
    """A local directory holding the version's files (the version itself, or a cached download)."""
    if storage.local:
        return directory
    cache = os.path.join(tempfile.gettempdir(), "signq-models", *directory.rsplit("/", 2)[-2:])
    if not os.path.exists(os.path.join(cache, "model.json")):
        tmp = f"{cache}.tmp-{os.getpid()}"
        storage.fs.get(directory.rstrip("/") + "/", tmp, recursive=True)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    return cache


def load_model(storage, ref: str, form: str | None = None, compile: bool = False, trust_external: bool = False):
    """Load a stored version in one of its forms; returns ``(model, meta)``.

    ``form`` None is the version's default: "keras", or "savedmodel" for models built on an external
    SavedModel (a TFSMLayer), which Keras' safe mode refuses to deserialize from .keras/architecture.json.
    Safe mode is on unless ``trust_external`` is set for such a model.
    """
    directory, meta = resolve(storage, ref)
    form = form or meta.get("default_form", "keras")
    if form not in FORMS:
        raise ValueError(f"Unknown model form. Choose one of {FORMS}. Received: form={form!r}")
    if form != "savedmodel" and meta.get("external_savedmodel") and not trust_external:
        raise ValueError(f"Model {meta['name']}:{meta['version']} wraps an external SavedModel (TFSMLayer), which "
                         f"Keras' safe mode will not load from the {form!r} form. Load form='savedmodel' (safe), "
                         "or pass trust_external=True if you trust that SavedModel.")
    safe = not (trust_external and meta.get("external_savedmodel"))
    return load_local(local_dir(storage, directory), form, meta["image_shape"], compile, safe), meta


def load_local(directory: str, form: str = "keras", image_shape=None, compile: bool = False, safe: bool = True):
    """Load the ``form`` of a version from a local directory (Keras safe mode unless ``safe`` is False)."""
    import keras
    from keras.src.saving.serialization_lib import SafeModeScope

    if form == "keras":
        return keras.saving.load_model(os.path.join(directory, "model.keras"), compile=compile, safe_mode=safe)
    if form == "weights":
        with open(os.path.join(directory, "architecture.json")) as f, SafeModeScope(safe):
            model = keras.models.model_from_json(f.read())
        model.load_weights(os.path.join(directory, "model.weights.h5"))
        return model
    layer = keras.layers.TFSMLayer(os.path.join(directory, "saved_model"), call_endpoint="serve")
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    return keras.Model(inputs, layer(inputs), name="savedmodel")


def _leaf_layers(model) -> list:
    out = []
    for lay in getattr(model, "layers", []):
        out.extend(_leaf_layers(lay) if hasattr(lay, "layers") else [lay])
    return out

"""Training: split finished datasets, stream their shards into tf.data, fit with callbacks, store a model version.

Flow of ``run_training(storage, spec, workdir, report)``:

    index_shards     read only labels and keys of every shard (images stay on disk)
    stratified_split seeded per-class permutation -> code per row: 0 train, 1 validation, 2 test
    make_dataset     tf.data from a generator that loads one shard at a time, shuffles a bounded pool of rows,
                     yields batches; cast to float32; prefetch
    build            worker.models.make_model, or worker.transfer for transfer learning
    fit_phase        EarlyStopping, ModelCheckpoint, TensorBoard, CSVLogger, ReduceLROnPlateau, StopAtAccuracy,
                     Progress, BackupAndRestore (in ``workdir``: a rerun resumes at the last finished epoch)
    evaluate + save  test-split metrics, then worker.modelstore.save_version

This module imports TensorFlow: only model-queue processes import it.
"""
from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import keras
import tensorflow as tf

from signq import dataset as ds_format
from signq.storage import check_name
from worker import models

log = logging.getLogger(__name__)
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TrainSpec:
    """What a training job asks for (the job spec of ``signq.model.train``)."""

    datasets: tuple[str, ...]
    name: str = "signs"
    hparams: dict = field(default_factory=dict)
    epochs: int = 15
    batch_size: int = 128
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    patience: int = 4
    target_accuracy: float | None = None      # stop once val_accuracy reaches it
    shuffle_rows: int = 20000                  # rows held in the shuffle pool (bounded memory)
    transfer: dict | None = None               # see worker.transfer.build_from_spec
    hparams_from: str | None = None            # a tune id: its best hparams under ``hparams``

    @classmethod
    def from_json(cls, d: dict) -> "TrainSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown training options {sorted(unknown)}. Known: {sorted(known)}.")
        refs = d.get("datasets")
        if isinstance(refs, str):
            refs = [refs]
        if not refs:
            raise ValueError(f"A training needs at least one dataset (`--dataset NAME`). Received: datasets={refs!r}")
        spec = cls(**{**d, "datasets": tuple(refs)})
        check_name(spec.name, "model name")
        if not (0 < spec.val_fraction < 1 and 0 <= spec.test_fraction < 1
                and spec.val_fraction + spec.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1. "
                             f"Received: {spec.val_fraction}, {spec.test_fraction}")
        if spec.epochs < 1 or spec.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1. Received: {spec.epochs}, {spec.batch_size}")
        return spec

    def to_json(self) -> dict:
        return {**asdict(self), "datasets": list(self.datasets)}


@dataclass
class ShardIndex:
    """Where each shard of the training data is, its labels and keys, and its rows' split codes."""

    class_names: list
    image_shape: tuple
    lineage: list                     # [{name, version, content_sha256, count}]
    paths: list                       # one path per shard, across datasets
    dataset_of: list                  # dataset index per shard
    labels: list                      # int array per shard
    keys: list                        # str array per shard
    codes: list = field(default_factory=list)   # split code array per shard

    def count(self, which: int) -> int:
        return int(sum((c == which).sum() for c in self.codes))


# ---- data -----------------------------------------------------------------------------------------

def read_arrays(storage, path: str, names=("labels", "keys")) -> dict:
    """Only the named arrays of a shard (npz members are read lazily, so images stay on disk)."""
    with storage.open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
        return {n: z[n] for n in names}


def index_shards(storage, refs) -> ShardIndex:
    """Resolve each dataset and read its shards' labels and keys; class sets and image shapes must agree."""
    idx = ShardIndex([], (), [], [], [], [], [])
    for i, ref in enumerate(refs):
        directory, m = ds_format.resolve(storage, ref)
        if i == 0:
            idx.class_names, idx.image_shape = list(m["class_names"]), tuple(m["image_shape"])
        elif list(m["class_names"]) != idx.class_names or tuple(m["image_shape"]) != idx.image_shape:
            raise ValueError(f"Datasets to train on together need the same classes and image shape. "
                             f"{ref!r} has {m['class_names']} {m['image_shape']}, "
                             f"{refs[0]!r} has {idx.class_names} {idx.image_shape}.")
        idx.lineage.append({"ref": ref, "name": m["name"], "version": m["version"], "count": m["count"],
                            "content_sha256": m.get("content_sha256")})
        for shard in m["shards"]:
            arrays = read_arrays(storage, f"{directory}/{shard['file']}")
            idx.paths.append(f"{directory}/{shard['file']}")
            idx.dataset_of.append(i)
            idx.labels.append(arrays["labels"].astype(np.int64))
            idx.keys.append(arrays["keys"])
    return idx


def stratified_split(labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """A split code per row (0 train, 1 val, 2 test): per class, a seeded permutation cut by the fractions.

    Every class with at least 3 rows has at least one row in each of validation and test (when asked for).
    """
    labels = np.asarray(labels)
    codes = np.zeros(len(labels), np.uint8)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_test = _share(len(rows), test_fraction)
        n_val = min(_share(len(rows), val_fraction), len(rows) - n_test - 1)
        codes[rows[:n_test]] = TEST
        codes[rows[n_test:n_test + n_val]] = VAL
    return codes


def _share(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 3:
        return 0
    return min(max(1, int(round(n * fraction))), n - 1)


def assign_split(idx: ShardIndex, spec: TrainSpec) -> ShardIndex:
    labels = np.concatenate(idx.labels) if idx.labels else np.zeros(0, np.int64)
    codes = stratified_split(labels, spec.seed, spec.val_fraction, spec.test_fraction)
    bounds = np.cumsum([0] + [len(x) for x in idx.labels])
    idx.codes = [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return idx


def split_record(idx: ShardIndex, spec: TrainSpec) -> dict:
    """The split as recorded with the model: seed, fractions, counts per split and class, sha256 of keys."""
    import hashlib

    out = {"seed": spec.seed, "val_fraction": spec.val_fraction, "test_fraction": spec.test_fraction,
           "datasets": [d["ref"] for d in idx.lineage], "splits": {}}
    for code, name in enumerate(SPLIT_NAMES):
        keys = split_keys(idx, code)
        labels = np.concatenate([lab[c == code] for lab, c in zip(idx.labels, idx.codes)]) if idx.codes else []
        out["splits"][name] = {
            "count": len(keys),
            "class_counts": np.bincount(np.asarray(labels, np.int64), minlength=len(idx.class_names)).tolist(),
            "keys_sha256": hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest(),
        }
    return out


def split_keys(idx: ShardIndex, code: int) -> list[str]:
    """Keys of one split, qualified by dataset ref so keys of different datasets never collide."""
    out = []
    for d, keys, codes in zip(idx.dataset_of, idx.keys, idx.codes):
        out.extend(f"{idx.lineage[d]['ref']}|{k}" for k in keys[codes == code])
    return out


def iter_batches(load, paths, codes, which: int, batch_size: int, rng=None, pool_rows: int = 20000):
    """Yield (images, labels) batches of the rows coded ``which``, one shard loaded at a time.

    With ``rng``, shards come in random order and rows are shuffled within a pool of at most ``pool_rows``
    (plus one shard); without, order is the storage order. The last batch may be short.
    """
    order = rng.permutation(len(paths)) if rng is not None else range(len(paths))
    pool_x, pool_y = [], []
    pooled = 0
    for i in order:
        mask = codes[i] == which
        if not mask.any():
            continue
        shard = load(paths[i])
        pool_x.append(shard["images"][mask])
        pool_y.append(shard["labels"][mask].astype(np.int32))
        pooled += int(mask.sum())
        if pooled >= pool_rows:
            x, y = _shuffled(pool_x, pool_y, rng)
            cut = len(x) - len(x) % batch_size
            yield from _batches(x[:cut], y[:cut], batch_size)
            pool_x, pool_y, pooled = [x[cut:]], [y[cut:]], len(x) - cut
    if pooled:
        x, y = _shuffled(pool_x, pool_y, rng)
        yield from _batches(x, y, batch_size)


def _shuffled(xs, ys, rng):
    x, y = np.concatenate(xs), np.concatenate(ys)
    if rng is None:
        return x, y
    p = rng.permutation(len(x))
    return x[p], y[p]


def _batches(x, y, batch_size):
    for a in range(0, len(x), batch_size):
        yield x[a:a + batch_size], y[a:a + batch_size]


CACHE_BYTES = 1 << 30     # splits smaller than this are cached in memory (uint8) after the first epoch


def make_dataset(storage, idx: ShardIndex, which: int, batch_size: int, seed: int | None = None,
                 pool_rows: int = 20000, cache_bytes: int = CACHE_BYTES) -> tf.data.Dataset:
    """A tf.data pipeline over one split: shards streamed by a generator, float32 images, prefetched.

    A split that fits in ``cache_bytes`` streams from the shards once, then epochs come from an in-memory
    uint8 cache, reshuffled each epoch inside tf.data (no Python in the loop). A larger split is streamed
    every epoch, shuffled within a pool of ``pool_rows`` rows, so memory stays bounded.
    """
    rng = np.random.default_rng(seed) if seed is not None else None
    h, w, c = idx.image_shape
    rows = idx.count(which)
    cached = rows * h * w * c <= cache_bytes

    def gen():
        chunk = rows if cached else batch_size      # cached: shard-sized pieces, shuffled later by tf.data
        yield from iter_batches(storage.load_npz, idx.paths, idx.codes, which, chunk if cached else batch_size,
                                None if cached else rng, pool_rows)

    data = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, h, w, c), tf.uint8), tf.TensorSpec((None,), tf.int32)))
    if cached:
        data = data.unbatch().cache()
        if seed is not None:
            data = data.shuffle(rows, seed=seed, reshuffle_each_iteration=True)
        data = data.batch(batch_size)
    data = data.apply(tf.data.experimental.assert_cardinality(-(-rows // batch_size)))
    data = data.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


# ---- callbacks ------------------------------------------------------------------------------------

class StopAtAccuracy(keras.callbacks.Callback):
    """Stop training once ``monitor`` (default val_accuracy) reaches ``target``."""

    def __init__(self, target: float, monitor: str = "val_accuracy"):
        super().__init__()
        self.target, self.monitor = float(target), monitor
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value >= self.target:
            log.info("%s %.4f reached target %.4f at epoch %d: stopping", self.monitor, value, self.target, epoch + 1)
            self.stopped_epoch = epoch
            self.model.stop_training = True


class Progress(keras.callbacks.Callback):
    """Report ``{phase, epoch, epochs, batch, steps, loss, accuracy, val_loss, val_accuracy}`` to ``report``.

    Once per epoch, and at most every ``interval`` seconds within one (the job store shows it as progress).
    """

    def __init__(self, report, epochs: int, phase: str = "train", interval: float = 2.0, offset: int = 0):
        super().__init__()
        self.report, self.epochs, self.phase, self.interval, self.offset = report, epochs, phase, interval, offset
        self._epoch, self._last, self._steps = 0, 0.0, None

    def on_train_begin(self, logs=None):
        self._steps = self.params.get("steps")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.report(self._row(self._epoch, logs, batch=batch + 1))

    def on_epoch_end(self, epoch, logs=None):
        self.report(self._row(epoch + 1, logs, batch=self._steps))

    def _row(self, epoch, logs, batch):
        logs = logs or {}
        row = {"phase": self.phase, "epoch": self.offset + epoch, "epochs": self.offset + self.epochs,
               "batch": batch, "steps": self._steps}
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if k in logs:
                row[k] = round(float(logs[k]), 6)
        return row


def make_callbacks(workdir: str, phase: str, spec: TrainSpec, epochs: int, report=None, offset: int = 0) -> list:
    """The callbacks of one fit phase; everything is written under ``workdir`` (a local directory)."""
    cbs = [
        keras.callbacks.BackupAndRestore(os.path.join(workdir, f"backup-{phase}"), delete_checkpoint=False),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=spec.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(os.path.join(workdir, f"best-{phase}.keras"), monitor="val_accuracy",
                                        save_best_only=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, spec.patience // 2),
                                          min_lr=1e-6),
        keras.callbacks.CSVLogger(os.path.join(workdir, f"training-{phase}.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=os.path.join(workdir, "tensorboard", phase), profile_batch=0),
    ]
    if spec.target_accuracy:
        cbs.append(StopAtAccuracy(spec.target_accuracy))
    if report is not None:
        cbs.append(Progress(report, epochs, phase=phase, offset=offset))
    return cbs


def read_history(workdir: str, phases=("train", "finetune")) -> dict:
    """Per-epoch metrics from the phases' CSV logs (complete across resumed runs), phases concatenated."""
    history: dict = {}
    for phase in phases:
        path = os.path.join(workdir, f"training-{phase}.csv")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for row in csv.DictReader(f):
                for k, v in row.items():
                    if k != "epoch" and v not in ("", None):
                        history.setdefault(k, []).append(float(v))
    return history


# ---- fitting --------------------------------------------------------------------------------------

def phase_done(workdir: str, phase: str) -> bool:
    return os.path.exists(os.path.join(workdir, f"{phase}.done.weights.h5"))


def fit_phase(model, train_data, val_data, spec: TrainSpec, workdir: str, phase: str, epochs: int,
              report=None, offset: int = 0):
    """One resumable ``fit``. A phase already finished in ``workdir`` only reloads its final weights."""
    done = os.path.join(workdir, f"{phase}.done.weights.h5")
    if os.path.exists(done):
        log.info("phase %s already finished in %s: loading its weights", phase, workdir)
        model.load_weights(done)
        return None
    t0 = time.monotonic()
    history = model.fit(train_data, validation_data=val_data, epochs=epochs, verbose=0, shuffle=False,
                        callbacks=make_callbacks(workdir, phase, spec, epochs, report, offset))
    model.save_weights(done + ".tmp.weights.h5")
    os.replace(done + ".tmp.weights.h5", done)
    log.info("phase %s: %d epochs in %.1fs", phase, len(history.epoch), time.monotonic() - t0)
    return history


def build_model(storage, spec: TrainSpec, idx: ShardIndex, hparams: dict):
    """(model, fine_tune) where fine_tune is None or a dict for a second, low-LR phase (transfer learning)."""
    if spec.transfer:
        from worker import transfer

        return transfer.build_from_spec(storage, spec.transfer, idx.image_shape, len(idx.class_names), hparams)
    model = models.make_model(idx.image_shape, len(idx.class_names), hparams)
    return models.compile_model(model, hparams), None


def effective_hparams(storage, spec: TrainSpec) -> dict:
    hp = dict(spec.hparams)
    if spec.hparams_from:
        from worker import tuning

        hp = {**tuning.best_hparams(storage, spec.hparams_from), **hp}
    return models.resolve_hparams(hp) if not spec.transfer else {**models.DEFAULTS, **hp}


def run_training(storage, spec: TrainSpec, workdir: str, report=None, job_id: str | None = None,
                 version: str | None = None) -> dict:
    """Train, evaluate on the test split and store a model version. Returns the result dict of the job.

    ``workdir`` is local and per job: rerunning with the same ``workdir`` resumes from the last epoch.
    """
    from worker import evaluation, modelstore

    os.makedirs(workdir, exist_ok=True)
    keras.utils.set_random_seed(spec.seed)
    t0 = time.monotonic()
    idx = assign_split(index_shards(storage, spec.datasets), spec)
    hparams = effective_hparams(storage, spec)
    model, fine_tune = build_model(storage, spec, idx, hparams)
    train_data = make_dataset(storage, idx, TRAIN, spec.batch_size, seed=spec.seed, pool_rows=spec.shuffle_rows)
    val_data = make_dataset(storage, idx, VAL, spec.batch_size)
    log.info("training %s (%s) on %s: train=%d val=%d test=%d", spec.name, hparams.get("arch"), spec.datasets,
             idx.count(TRAIN), idx.count(VAL), idx.count(TEST))
    fit_phase(model, train_data, val_data, spec, workdir, "train", spec.epochs, report)
    if fine_tune:
        from worker import transfer

        transfer.unfreeze_top(model, fine_tune)
        fit_phase(model, train_data, val_data, spec, workdir, "finetune", fine_tune["epochs"], report,
                  offset=spec.epochs)
    train_seconds = time.monotonic() - t0
    metrics = evaluation.evaluate_batches(model, iter_batches(storage.load_npz, idx.paths, idx.codes, TEST, 512),
                                          idx.class_names) if idx.count(TEST) else None
    val_metrics = evaluation.evaluate_batches(model, iter_batches(storage.load_npz, idx.paths, idx.codes, VAL, 512),
                                              idx.class_names)
    record = modelstore.VersionRecord(
        name=spec.name, class_names=idx.class_names, image_shape=list(idx.image_shape), hparams=hparams,
        train_spec=spec.to_json(), lineage=idx.lineage, split=split_record(idx, spec), job_id=job_id,
        metrics=metrics, val_metrics=val_metrics, history=read_history(workdir), train_seconds=train_seconds,
        samples=idx.count(TRAIN))
    version = modelstore.save_version(storage, model, record, workdir, version=version or _version_for(workdir, job_id))
    summary = {"location": version["location"], "model": f"{spec.name}:{version['version']}",
               "test_accuracy": metrics["accuracy"] if metrics else None,
               "val_accuracy": val_metrics["accuracy"], "train_seconds": round(train_seconds, 1),
               "epochs_run": len(record.history.get("loss", []))}
    log.info("trained %s: test_accuracy=%s in %.1fs", summary["model"], summary["test_accuracy"], train_seconds)
    return summary


def _version_for(workdir: str, job_id: str | None) -> str:
    """A version name fixed at the first attempt (kept in workdir, so a redelivered task reuses it)."""
    path = os.path.join(workdir, "version")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    version = f"{stamp}-{(job_id or os.urandom(4).hex())[:8]}"
    with open(path + ".tmp", "w") as f:
        f.write(version)
    os.replace(path + ".tmp", path)
    return version

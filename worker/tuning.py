"""Hyperparameter tuning: a KerasTuner search space, trials as independent tasks, results in storage.

The declared space (``search_space()``, KerasTuner ``HyperParameters``):

    filters         Choice 8, 16, 32         first conv block width (``default`` architecture)
    dense_units     Int 64..512 step 64
    dropout         Float 0.2..0.6
    learning_rate   Float 1e-4..1e-2, log sampling
    augment         Boolean

Two ways to search, both with objective val_accuracy:

* distributed (the ``signq.model.tune`` task): a seeded sampler draws trials from the space; each trial is its
  own ``signq.model.tune_trial`` task, so trials run in parallel on every model worker. ``random`` is one round
  of ``max_trials``; ``hyperband`` is successive halving: round r trains the best 1/factor of round r-1 for
  ``factor`` times more epochs (trials restart from scratch; no checkpoint hand-over between workers).
* in-process (``run_keras_tuner``): ``keras_tuner.RandomSearch`` / ``keras_tuner.Hyperband`` in one process.

Storage, under ``tunes/<id>/``: spec.json, trials/<trial>.json (hparams, epochs, round),
results/<trial>.json (val_accuracy, ...), best.json (written when the search ends; ``best_hparams`` reads it,
which is what ``signq train --hparams-from ID`` uses).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

from signq.storage import check_name

log = logging.getLogger(__name__)
ALGORITHMS = ("random", "hyperband")


@dataclass(frozen=True)
class TuneSpec:
    datasets: tuple[str, ...]
    algorithm: str = "random"
    max_trials: int = 8
    max_epochs: int = 6
    factor: int = 3
    seed: int = 0
    batch_size: int = 128
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    arch: str = "default"

    @classmethod
    def from_json(cls, d: dict) -> "TuneSpec":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown tuning options {sorted(unknown)}. Known: {sorted(cls.__dataclass_fields__)}.")
        refs = [d["datasets"]] if isinstance(d.get("datasets"), str) else d.get("datasets")
        if not refs:
            raise ValueError(f"A tuning needs at least one dataset. Received: datasets={refs!r}")
        spec = cls(**{**d, "datasets": tuple(refs)})
        if spec.algorithm not in ALGORITHMS:
            raise ValueError(f"Unknown tuning algorithm. Choose one of {ALGORITHMS}. Received: {spec.algorithm!r}")
        if spec.max_trials < 1 or spec.max_epochs < 1 or spec.factor < 2:
            raise ValueError("max_trials and max_epochs must be >= 1 and factor >= 2. "
                             f"Received: {spec.max_trials}, {spec.max_epochs}, {spec.factor}")
        return spec

    def to_json(self) -> dict:
        return {**asdict(self), "datasets": list(self.datasets)}


def search_space():
    """The declared KerasTuner search space."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Choice("filters", [8, 16, 32])
    hp.Int("dense_units", 64, 512, step=64)
    hp.Float("dropout", 0.2, 0.6)
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    hp.Boolean("augment")
    return hp


def sample(seed: int, trial: int) -> dict:
    """One point of the space, a pure function of (seed, trial) (each parameter drawn with its own seed)."""
    out = {}
    for p in search_space().space:
        digest = hashlib.sha256(f"{seed}/{trial}/{p.name}".encode()).digest()
        value = p.random_sample(int.from_bytes(digest[:4], "big"))
        out[p.name] = value.item() if hasattr(value, "item") else value
    return out


def plan(spec: TuneSpec) -> list[tuple[int, int]]:
    """(trials, epochs) per round. random: [(max_trials, max_epochs)]; hyperband: successive halving."""
    if spec.algorithm == "random":
        return [(spec.max_trials, spec.max_epochs)]
    rounds = max(1, int(math.floor(math.log(spec.max_trials, spec.factor) + 1e-9)) + 1)
    return [(max(1, spec.max_trials // spec.factor ** r),
             max(1, round(spec.max_epochs / spec.factor ** (rounds - 1 - r)))) for r in range(rounds)]


def hparams_of(spec: TuneSpec, point: dict) -> dict:
    return {"arch": spec.arch, **point}


# ---- distributed search: plain functions the tasks call ---------------------------------------------

def tune_dir(storage, tune_id: str) -> str:
    return storage.path("tunes", check_name(tune_id, "tune id"))


def start(storage, tune_id: str, spec: TuneSpec) -> list[dict]:
    """Write spec.json and round 0's trials; returns them (idempotent: same trials on a rerun)."""
    directory = tune_dir(storage, tune_id)
    storage.write_json(f"{directory}/spec.json", {**spec.to_json(), "plan": plan(spec)})
    n, epochs = plan(spec)[0]
    trials = [{"trial_id": f"r0-t{i:03d}", "round": 0, "epochs": epochs, "hparams": hparams_of(spec, sample(spec.seed, i))}
              for i in range(n)]
    for t in trials:
        storage.write_json(f"{directory}/trials/{t['trial_id']}.json", t)
    return trials


def load_spec(storage, tune_id: str) -> TuneSpec:
    raw = storage.read_json(f"{tune_dir(storage, tune_id)}/spec.json")
    raw.pop("plan", None)
    return TuneSpec.from_json(raw)


def trial(storage, tune_id: str, trial_id: str) -> dict:
    return storage.read_json(f"{tune_dir(storage, tune_id)}/trials/{check_name(trial_id, 'trial id')}.json")


def run_trial(storage, tune_id: str, trial_id: str, workdir: str, report=None) -> dict:
    """Train one trial on the tune's split and store its result (a stored result is returned as is)."""
    from worker import training

    directory = tune_dir(storage, tune_id)
    result_path = f"{directory}/results/{trial_id}.json"
    if storage.exists(result_path):
        return storage.read_json(result_path)
    spec, t = load_spec(storage, tune_id), trial(storage, tune_id, trial_id)
    tspec = training.TrainSpec.from_json({"datasets": list(spec.datasets), "epochs": t["epochs"],
                                          "batch_size": spec.batch_size, "seed": spec.seed, "patience": 3,
                                          "val_fraction": spec.val_fraction, "test_fraction": spec.test_fraction,
                                          "hparams": t["hparams"]})
    t0 = time.monotonic()
    history = fit_trial(storage, tspec, os.path.join(workdir, trial_id), report)
    result = {**t, "val_accuracy": max(history["val_accuracy"]), "val_loss": min(history["val_loss"]),
              "epochs_run": len(history["val_accuracy"]), "seconds": round(time.monotonic() - t0, 2)}
    storage.write_json(result_path, result)
    log.info("tune %s trial %s: val_accuracy=%.4f in %.1fs", tune_id, trial_id, result["val_accuracy"],
             result["seconds"])
    return result


def fit_trial(storage, tspec, workdir: str, report=None) -> dict:
    """Fit one hparam set (resumable like any training); returns the per-epoch history."""
    import keras

    from worker import models, training

    keras.utils.set_random_seed(tspec.seed)
    idx = training.assign_split(training.index_shards(storage, tspec.datasets), tspec)
    hp = models.resolve_hparams(tspec.hparams)
    model = models.compile_model(models.make_model(idx.image_shape, len(idx.class_names), hp), hp)
    train = training.make_dataset(storage, idx, training.TRAIN, tspec.batch_size, seed=tspec.seed)
    val = training.make_dataset(storage, idx, training.VAL, tspec.batch_size)
    os.makedirs(workdir, exist_ok=True)
    training.fit_phase(model, train, val, tspec, workdir, "train", tspec.epochs, report)
    return training.read_history(workdir)


def results(storage, tune_id: str, round_: int | None = None) -> list[dict]:
    directory = f"{tune_dir(storage, tune_id)}/results"
    out = [storage.read_json(f"{directory}/{f}") for f in storage.listdir(directory) if f.endswith(".json")]
    return [r for r in out if round_ is None or r["round"] == round_]


def round_done(storage, tune_id: str, round_: int) -> bool:
    n, _ = plan(load_spec(storage, tune_id))[round_]
    return len(results(storage, tune_id, round_)) >= n


def advance(storage, tune_id: str, round_: int) -> list[dict]:
    """After round ``round_``: the next round's trials (the best of this round, more epochs), or [] when the
    search is over (then best.json is written). Idempotent."""
    spec = load_spec(storage, tune_id)
    rounds = plan(spec)
    ranked = sorted(results(storage, tune_id, round_), key=lambda r: (-r["val_accuracy"], r["trial_id"]))
    if round_ + 1 >= len(rounds):
        write_best(storage, tune_id)
        return []
    n, epochs = rounds[round_ + 1]
    trials = [{"trial_id": f"r{round_ + 1}-t{i:03d}", "round": round_ + 1, "epochs": epochs,
               "hparams": r["hparams"], "parent": r["trial_id"]} for i, r in enumerate(ranked[:n])]
    for t in trials:
        storage.write_json(f"{tune_dir(storage, tune_id)}/trials/{t['trial_id']}.json", t)
    return trials


def write_best(storage, tune_id: str) -> dict:
    """best.json: the result with the highest val_accuracy (later rounds, i.e. more epochs, win ties)."""
    best = max(results(storage, tune_id), key=lambda r: (r["val_accuracy"], r["round"], r["trial_id"]))
    out = {"tune_id": tune_id, "trial_id": best["trial_id"], "hparams": best["hparams"],
           "val_accuracy": best["val_accuracy"], "epochs": best["epochs"], "trials": len(results(storage, tune_id))}
    storage.write_json(f"{tune_dir(storage, tune_id)}/best.json", out)
    return out


def best_hparams(storage, tune_id: str) -> dict:
    """The best hyperparameters of a finished search (for ``signq train --hparams-from ID``)."""
    path = f"{tune_dir(storage, tune_id)}/best.json"
    if not storage.exists(path):
        raise ValueError(f"Tune {tune_id!r} has no best.json in {storage.url}: it is unknown or not finished "
                         f"(`signq status {tune_id}`).")
    return storage.read_json(path)["hparams"]


# ---- in-process KerasTuner --------------------------------------------------------------------------

def build_hypermodel(input_shape, num_classes: int, arch: str = "default"):
    """A KerasTuner hypermodel function over ``search_space()``."""
    from worker import models

    def build(hp):
        point = {"filters": hp.Choice("filters", [8, 16, 32]),
                 "dense_units": hp.Int("dense_units", 64, 512, step=64),
                 "dropout": hp.Float("dropout", 0.2, 0.6),
                 "learning_rate": hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"),
                 "augment": hp.Boolean("augment")}
        hparams = {"arch": arch, **point}
        return models.compile_model(models.make_model(input_shape, num_classes, hparams), hparams)

    return build


def run_keras_tuner(storage, tune_id: str, spec: TuneSpec, workdir: str) -> dict:
    """Run ``keras_tuner.RandomSearch`` or ``Hyperband`` in this process; store results and best.json."""
    import keras_tuner as kt

    from worker import training

    tspec = training.TrainSpec.from_json({"datasets": list(spec.datasets), "seed": spec.seed,
                                          "val_fraction": spec.val_fraction, "test_fraction": spec.test_fraction})
    idx = training.assign_split(training.index_shards(storage, spec.datasets), tspec)
    build = build_hypermodel(idx.image_shape, len(idx.class_names), spec.arch)
    common = dict(objective="val_accuracy", seed=spec.seed, directory=workdir, project_name=tune_id, overwrite=False)
    if spec.algorithm == "random":
        tuner = kt.RandomSearch(build, max_trials=spec.max_trials, **common)
    else:
        tuner = kt.Hyperband(build, max_epochs=spec.max_epochs, factor=spec.factor, **common)
    train = training.make_dataset(storage, idx, training.TRAIN, spec.batch_size, seed=spec.seed)
    val = training.make_dataset(storage, idx, training.VAL, spec.batch_size)
    tuner.search(train, validation_data=val, epochs=spec.max_epochs, verbose=0)
    storage.write_json(f"{tune_dir(storage, tune_id)}/spec.json", {**spec.to_json(), "plan": "keras_tuner"})
    for t in tuner.oracle.trials.values():
        if t.score is not None:
            storage.write_json(f"{tune_dir(storage, tune_id)}/results/{t.trial_id}.json", {
                "trial_id": t.trial_id, "round": 0, "epochs": t.hyperparameters.values.get("tuner/epochs", spec.max_epochs),
                "hparams": {"arch": spec.arch, **{k: v for k, v in t.hyperparameters.values.items()
                                                  if not k.startswith("tuner/")}},
                "val_accuracy": float(t.score)})
    return write_best(storage, tune_id)

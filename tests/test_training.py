import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from model_fixtures import read_rows, tiny_hparams, write_dataset
from signq.errors import DatasetNotFound
from signq.storage import Storage
from worker import training
from worker.training import TEST, TRAIN, VAL, TrainSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def rows():
    return read_rows(480)


@pytest.fixture
def store(tmp_path, rows):
    st = Storage(str(tmp_path / "store"))
    write_dataset(st, "mini", *rows)
    return st


def test_stratified_split_is_seeded_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), 50)
    a = training.stratified_split(labels, 7, 0.1, 0.2)
    assert (a == training.stratified_split(labels, 7, 0.1, 0.2)).all()
    assert not (a == training.stratified_split(labels, 8, 0.1, 0.2)).all()
    for c in range(4):
        counts = np.bincount(a[labels == c], minlength=3)
        assert counts.tolist() == [35, 5, 10]


def test_split_keeps_every_class_in_val_and_test_when_possible():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    codes = training.stratified_split(labels, 0, 0.1, 0.1)
    for c in (0, 1):
        assert set(codes[labels == c]) == {TRAIN, VAL, TEST}
    assert codes[labels == 2].tolist() == [TRAIN]


def test_iter_batches_covers_split_once_in_bounded_pool():
    data = {f"s{i}": {"images": np.full((10, 2, 2, 1), i, np.uint8), "labels": np.arange(10, dtype=np.int16)}
            for i in range(5)}
    codes = [np.array([0] * 8 + [1, 2]) for _ in range(5)]
    batches = list(training.iter_batches(data.__getitem__, list(data), codes, 0, 3, np.random.default_rng(0), 12))
    x = np.concatenate([b[0] for b in batches])
    assert len(x) == 40 and all(len(b[0]) == 3 for b in batches[:-1])
    assert sorted(np.bincount(x[:, 0, 0, 0]).tolist()) == [8] * 5
    val = list(training.iter_batches(data.__getitem__, list(data), codes, 1, 64))
    assert val[0][1].tolist() == [8] * 5


def test_index_and_split_record_no_overlap(store):
    spec = TrainSpec.from_json({"datasets": ["mini"], "seed": 3})
    idx = training.assign_split(training.index_shards(store, spec.datasets), spec)
    keys = [set(training.split_keys(idx, c)) for c in (TRAIN, VAL, TEST)]
    assert sum(map(len, keys)) == 480 and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    rec = training.split_record(idx, spec)
    assert rec["seed"] == 3 and rec["splits"]["test"]["count"] == len(keys[2])


def test_spec_validation_says_what_was_received():
    with pytest.raises(ValueError, match="at least one dataset"):
        TrainSpec.from_json({"datasets": []})
    with pytest.raises(ValueError, match="Unknown training options.*'epochz'"):
        TrainSpec.from_json({"datasets": ["a"], "epochz": 3})
    with pytest.raises(ValueError, match="sum below 1"):
        TrainSpec.from_json({"datasets": ["a"], "val_fraction": 0.6, "test_fraction": 0.5})


def test_missing_dataset_fails_cleanly(tmp_path):
    spec = TrainSpec.from_json({"datasets": ["nope"]})
    with pytest.raises(DatasetNotFound, match="nope"):
        training.run_training(Storage(str(tmp_path)), spec, str(tmp_path / "work"))


def test_run_training_stores_version_and_reports_progress(store, tmp_path):
    spec = TrainSpec.from_json({"datasets": ["mini"], "name": "tiny", "epochs": 2, "batch_size": 32,
                                "hparams": tiny_hparams(), "target_accuracy": 0.999})
    seen = []
    result = training.run_training(store, spec, str(tmp_path / "work"), report=seen.append, job_id="job1")
    assert result["model"].startswith("tiny:") and os.path.exists(result["location"] + "/model.json")
    assert result["epochs_run"] == 2
    ends = [p for p in seen if p["batch"] == p["steps"]]
    assert [p["epoch"] for p in ends] == [1, 2] and ends[-1]["epochs"] == 2
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(ends[-1])
    for name in ("model.keras", "model.weights.h5", "architecture.json", "class_names.json", "hparams.json",
                 "lineage.json", "metrics.json", "curves.png", "confusion.png", "saved_model", "tensorboard"):
        assert os.path.exists(os.path.join(result["location"], name)), name
    lineage = json.load(open(result["location"] + "/lineage.json"))
    assert lineage["datasets"][0]["content_sha256"] and lineage["split"]["seed"] == 0


def test_stop_at_accuracy_stops():
    import keras

    cb = training.StopAtAccuracy(0.5)
    cb.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    cb.on_epoch_end(0, {"val_accuracy": 0.4})
    assert not getattr(cb.model, "stop_training", False)
    cb.on_epoch_end(1, {"val_accuracy": 0.6})
    assert cb.model.stop_training and cb.stopped_epoch == 1


RESUME_SCRIPT = """
import json, sys, logging
from signq.storage import Storage
from worker import training
st = Storage(sys.argv[1])
spec = training.TrainSpec.from_json(json.loads(sys.argv[2]))
def report(p):
    print(json.dumps(p), flush=True)
print(json.dumps(training.run_training(st, spec, sys.argv[3], report=report, job_id="resume")), flush=True)
"""


def test_sigkilled_training_resumes_from_last_epoch(store, tmp_path):
    workdir = str(tmp_path / "work")
    spec = {"datasets": ["mini"], "name": "resumed", "epochs": 4, "batch_size": 16, "patience": 10,
            "hparams": tiny_hparams()}
    args = [sys.executable, "-c", RESUME_SCRIPT, store.url, json.dumps(spec), workdir]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    meta = os.path.join(workdir, "backup-train", "training_metadata.json")
    deadline = time.monotonic() + 240
    while not os.path.exists(meta) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(meta), "the first epoch's backup never appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = json.load(open(meta))["epoch"]
    assert 1 <= done_before < 4
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    epochs = [p["epoch"] for p in lines[:-1] if p.get("batch") == p.get("steps")]
    assert epochs[0] == done_before + 1 and epochs[-1] == 4     # resumed, not restarted
    assert lines[-1]["model"].startswith("resumed:")


@pytest.mark.parametrize("cache_bytes", [0, training.CACHE_BYTES])
def test_make_dataset_streams_or_caches_the_same_rows(store, cache_bytes):
    spec = TrainSpec.from_json({"datasets": ["mini"]})
    idx = training.assign_split(training.index_shards(store, spec.datasets), spec)
    data = training.make_dataset(store, idx, TRAIN, 32, seed=1, pool_rows=100, cache_bytes=cache_bytes)
    for _ in range(2):                                             # two epochs: same rows, new order
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in data])
        assert xs[0].dtype == np.float32 and sum(len(y) for y in ys) == idx.count(TRAIN)
        want = np.bincount(np.concatenate([lab[c == TRAIN] for lab, c in zip(idx.labels, idx.codes)]), minlength=24)
        assert np.bincount(np.concatenate(ys), minlength=24).tolist() == want.tolist()

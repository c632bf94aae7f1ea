"""The model queue end to end: real Redis, a real prefork worker on `model` (TensorFlow imported in its child
after fork), ingestion -> train -> predict; a training child killed with SIGKILL mid-epoch resumes."""
from __future__ import annotations

import gzip
import json
import os
import signal

import numpy as np
import psutil
import pytest
from conftest import WorkerProcess, wait_until
from datagen import jpeg_bytes, sign_rows

from producer.submit import Submission
from signq.client import Client
from worker import predictions

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def model_worker(worker_env):
    w = WorkerProcess(worker_env, "model", 1, "model").start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def train_dataset(client, tmp_path_factory):
    path = tmp_path_factory.mktemp("mt") / "rows.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        sign_rows(1500, skip=3000).to_csv(f, index=False)
    c = Client(client.settings.with_overrides(chunk_size=500))
    st = c.wait(c.submit(Submission(sources=[str(path)], dataset="mtrain")), timeout=120)
    assert st["state"] == "done"
    return "mtrain"


def train(client, spec, timeout=400):
    job_id = client.submit_task("train", "signq.model.train", spec)
    return job_id, client.wait(job_id, timeout=timeout)


def test_train_then_predict_every_record(client, model_worker, train_dataset, http_server, tmp_path):
    _, st = train(client, {"datasets": [train_dataset], "name": "tiny", "epochs": 2, "batch_size": 64, "seed": 1,
                           "hparams": {"arch": "cnn", "augment": False}})
    assert st["state"] == "done", st
    version = st["result"]["model"].split(":")[1]
    assert client.storage.exists(client.storage.path("models", "tiny", version, "model.keras"))

    rows = sign_rows(40, skip=20000)
    lines = []
    for i, p in enumerate(rows.iloc[:, 1:].to_numpy(np.uint8)):
        http_server.add(f"p{i}", jpeg_bytes(p))
        lines.append({"content": http_server.url(f"/bytes/p{i}"), "label": int(rows.iloc[i, 0])})
    lines.insert(3, {"content": http_server.url("/status/404")})            # no label: fine for prediction
    lines.insert(7, {"content": http_server.url("/nonimage"), "label": "a"})
    lines.append(lines[0])                                                   # duplicates are still predicted
    manifest = tmp_path / "predict.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    job_id = client.submit(Submission(sources=[str(manifest)], dataset="tiny", kind="predict",
                                      extra={"model": f"tiny:{version}"}))
    st = client.wait(job_id, timeout=300)
    assert st["state"] == "done", st
    out = [json.loads(x) for x in client.storage.read_bytes(st["result"]["files"]["jsonl"]).splitlines()]
    assert [int(r["position"]) for r in out] == list(range(1, len(lines) + 1))     # every record, in order
    assert {r["position"]: r["reason"] for r in out if r["status"] == "rejected"} == {"4": "http_status",
                                                                                     "8": "not_image"}
    ok = [r for r in out if r["status"] == "ok"]
    assert len(ok) == 41 and all(len(r["top3"]) == 3 and 0 <= r["confidence"] <= 1 for r in ok)
    letters = set("ABCDEFGHIKLMNOPQRSTUVWXY")
    assert all(r["predicted"] in letters for r in ok)
    assert ok[0]["predicted"] == ok[-1]["predicted"] and ok[0]["confidence"] == ok[-1]["confidence"]
    csv_text = client.storage.read_bytes(st["result"]["files"]["csv"]).decode()
    assert csv_text.splitlines()[0].startswith(",".join(predictions.CSV_FIELDS[:4]))
    assert len(csv_text.splitlines()) == len(lines) + 1


def test_training_killed_mid_epoch_resumes_and_finishes(client, model_worker, train_dataset):
    spec = {"datasets": [train_dataset], "name": "resumed", "epochs": 6, "batch_size": 16, "seed": 2,
            "patience": 100, "hparams": {"arch": "cnn", "augment": False}}
    job_id = client.submit_task("train", "signq.model.train", spec)
    wait_until(lambda: (client.jobs.status(job_id).get("progress") or {}).get("epoch", 0) >= 2, timeout=300,
               interval=0.1, what="two finished epochs")
    children = psutil.Process(model_worker.proc.pid).children()
    assert len(children) == 1
    os.kill(children[0].pid, signal.SIGKILL)                  # mid-epoch 3
    st = client.wait(job_id, timeout=400)
    assert st["state"] == "done", st
    assert st["result"]["epochs_run"] == 6
    history = client.storage.read_json(st["result"]["location"] + "/history.json")
    assert len(history["loss"]) == 6                          # one row per epoch, none run twice


def test_train_then_predict_chains_on_the_new_model(client, model_worker, train_dataset, tmp_path):
    rows = sign_rows(12, skip=21000)
    path = tmp_path / "to-predict.csv"
    rows.to_csv(path, index=False)
    follow = "then0123456789abcdef"
    _, st = train(client, {"datasets": [train_dataset], "name": "chained", "epochs": 1, "batch_size": 64,
                           "hparams": {"arch": "dense"}, "then": [{"job_id": follow, "sources": [str(path)]}]})
    assert st["state"] == "done", st
    client.wait_created(follow)
    pst = client.wait(follow, timeout=120)
    assert pst["state"] == "done", pst
    assert client.jobs.spec(follow)["model"] == st["result"]["model"]
    assert (pst["result"]["predicted"], pst["result"]["rejected"]) == (12, 0)


def test_tune_trials_run_as_tasks_and_train_uses_the_best(client, model_worker, train_dataset):
    spec = {"datasets": [train_dataset], "algorithm": "random", "max_trials": 3, "max_epochs": 1, "seed": 3,
            "batch_size": 64, "arch": "cnn"}
    tune_id = client.submit_task("tune", "signq.model.tune", spec)
    st = client.wait(tune_id, timeout=300)
    assert st["state"] == "done", st
    best = st["result"]["best"]
    assert 0.0 <= best["val_accuracy"] <= 1.0 and {"dense_units", "dropout", "learning_rate"} <= set(best["hparams"])
    results = client.storage.listdir(st["result"]["location"] + "/results")
    assert len(results) == 3                                  # every trial ran as its own task and stored
    _, tst = train(client, {"datasets": [train_dataset], "name": "tuned", "epochs": 1, "hparams_from": tune_id})
    assert tst["state"] == "done", tst
    hp = client.storage.read_json(tst["result"]["location"] + "/hparams.json")
    for key in ("dense_units", "dropout", "learning_rate"):
        assert hp["hparams"][key] == best["hparams"][key]

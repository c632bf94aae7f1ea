"""The command line as users run it: real subprocesses, the embedded default and real Redis."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(300)
SAMPLE = str(ROOT / "samples" / "sign_mnist_sample.csv.gz")
COURSE = ROOT.parent / "shared" / "data" / "course"


def signq(*args, env=None, timeout=240):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIGNQ_")}
    return subprocess.run([sys.executable, "-m", "signq.cli", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=ROOT, timeout=timeout)


def test_help_teaches():
    r = signq("--help")
    assert r.returncode == 0 and "SIGNQ_BROKER_URL" in r.stdout and "examples:" in r.stdout
    for cmd in ("run", "submit", "status", "predict", "train", "evaluate", "tune", "models", "worker", "beat"):
        assert signq(cmd, "--help").returncode == 0, cmd


def test_run_on_the_embedded_default_then_status_from_storage(tmp_path):
    r = signq("run", SAMPLE, "--dataset", "demo", "--json", "--storage", str(tmp_path))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["state"] == "done" and st["records_ok"] == 3000 and st["records_rejected"] == 0
    assert st["location"].startswith(str(tmp_path))
    r = signq("status", st["job_id"], "--json", "--storage", str(tmp_path))
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "done"
    r = signq("datasets", "demo", "--json", "--storage", str(tmp_path))
    assert json.loads(r.stdout)["count"] == 3000


def test_fakeredis_embedded_broker(tmp_path):
    env = {"SIGNQ_EMBEDDED_BROKER": "fakeredis"}
    r = signq("run", str(COURSE / "base64_list.json"), "--dataset", "b", "--json", "--storage", str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert (st["records_ok"], st["rejects_by_reason"]) == (1, {"duplicate": 1})


def test_exit_codes_and_messages(tmp_path, redis_url):
    r = signq("run", str(tmp_path / "nope.csv"), "--storage", str(tmp_path))
    assert r.returncode == 2 and "nope.csv: no such file or folder" in r.stderr
    r = signq("submit", SAMPLE, "--json", "--storage", str(tmp_path))
    assert r.returncode == 2 and "SIGNQ_BROKER_URL" in json.loads(r.stdout)["error"]
    r = signq("status", "0123456789abcdef", "--storage", str(tmp_path), env={"SIGNQ_BROKER_URL": redis_url})
    assert r.returncode == 3 and "No job" in r.stderr
    r = signq("run", SAMPLE, "--dataset", "../x", "--storage", str(tmp_path))
    assert r.returncode == 2 and "Invalid dataset name" in r.stderr
    assert signq().returncode == 2


def test_submit_wait_json_against_redis_and_workers(ingest_worker, worker_env, tmp_path):
    env = {"SIGNQ_BROKER_URL": worker_env["SIGNQ_BROKER_URL"], "SIGNQ_STORAGE": worker_env["SIGNQ_STORAGE"]}
    r = signq("submit", str(COURSE / "base64_single.json"), "--dataset", "cli", "--json", env=env)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["job_id"]
    r = signq("submit", SAMPLE, "--dataset", "cli", "--chunk-size", "700", "--wait", "--json", env=env)
    st = json.loads(r.stdout)
    assert r.returncode == 0 and st["state"] == "done" and st["chunks_total"] == 5 and st["records_ok"] == 3000
    r = signq("status", job_id, env=env)
    assert r.returncode == 0 and "done" in r.stdout.splitlines()[0]


def test_readme_flow_ingest_train_evaluate_predict(tmp_path):
    """The README's first command (with fewer epochs), then the model commands, all on the embedded default."""
    store = ["--storage", str(tmp_path)]
    r = signq("run", SAMPLE, "--dataset", "demo", "--then", "train", "--name", "demo", "--epochs", "2",
              "--batch-size", "64", "--arch", "cnn", "--json", *store)
    assert r.returncode == 0, r.stderr[-2000:]
    st = json.loads(r.stdout)
    assert st["state"] == "done" and st["ingest"]["records_ok"] == 3000
    model = st["result"]["model"]
    r = signq("models", "list", "--json", *store)
    assert r.returncode == 0 and [m["name"] for m in json.loads(r.stdout)] == ["demo"]
    r = signq("evaluate", model, "--dataset", "demo", *store)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "accuracy" in r.stdout and "held-out test split" in r.stdout    # demo trained on demo
    out = tmp_path / "predictions.csv"
    r = signq("predict", "demo", str(COURSE / "base64_list.json"), "--out", str(out), "--json", *store)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("key,source,position,status,predicted") and len(lines) == 3   # both records
    r = signq("evaluate", "nope", "--dataset", "demo", *store)
    assert r.returncode == 3 and "No model named 'nope'" in r.stderr


def test_wait_timeout_exits_4(ingest_worker, worker_env, http_server, tmp_path):
    path = tmp_path / "slow.jsonl"
    path.write_text(json.dumps({"content": http_server.url("/slow/timeout-test"), "label": "a"}) + "\n")
    env = {"SIGNQ_BROKER_URL": worker_env["SIGNQ_BROKER_URL"], "SIGNQ_STORAGE": worker_env["SIGNQ_STORAGE"]}
    r = signq("submit", str(path), "--dataset", "slow", "--wait", "--timeout", "0.5", "--json", env=env)
    assert r.returncode == 4 and "still" in json.loads(r.stdout)["error"]

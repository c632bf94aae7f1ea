"""End to end through real Redis and real worker processes: submit -> chunk tasks -> finalize -> dataset."""
from __future__ import annotations

import gzip
import json
import os
import signal

import numpy as np
import pytest
from conftest import wait_until
from datagen import IMAGES_DIR, jpeg_bytes, sign_rows, write_class_folders, write_dirty_csv

from producer.submit import Submission
from signq.client import Client
from signq.dataset import load_dataset, load_manifest
from signq.errors import ManifestError, StorageKeyError

pytestmark = pytest.mark.timeout(180)


def run(client, sources, dataset, **kw):
    job_id = client.submit(Submission(sources=[str(s) for s in sources], dataset=dataset, **kw))
    return client.wait(job_id, timeout=120)


def rejects_of(client, st):
    path = st["result"]["location"] + "/rejects.jsonl"
    return [json.loads(line) for line in client.storage.read_bytes(path).splitlines()]


def with_chunk_size(client, n, **kw):
    return Client(client.settings.with_overrides(chunk_size=n, **kw))


def test_real_csv_rows_with_duplicates_across_chunks(client, tmp_path):
    rows = sign_rows(1200)
    dup = rows.iloc[[5, 700]]                 # copies of a chunk-0 and a chunk-1 row land in chunk 2
    path = tmp_path / "train.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        pd_rows = __import__("pandas").concat([rows, dup])
        pd_rows.to_csv(f, index=False, lineterminator="\r\n")
    st = run(with_chunk_size(client, 500), [path], "csv-real")
    assert st["state"] == "done", st
    assert st["chunks_total"] == 3
    assert (st["records_ok"], st["records_rejected"]) == (1200, 2)
    assert st["rejects_by_reason"] == {"duplicate": 2}
    dup_lines = sorted(int(r["position"]) for r in rejects_of(client, st))
    assert dup_lines == [1202, 1203]          # header is line 1; the copies are the last two lines
    images, labels, keys = load_dataset("csv-real", client.storage)
    assert images.shape == (1200, 28, 28, 1) and images.dtype == np.uint8
    expected = rows.iloc[:, 1:].to_numpy(np.uint8).reshape(-1, 28, 28, 1)
    assert np.array_equal(images, expected)
    codes = rows["label"].to_numpy()
    assert np.array_equal(labels, np.where(codes > 9, codes - 1, codes))   # A..I -> 0..8, K..Y -> 9..23
    assert len(set(keys)) == 1200 and keys[0] == "train.csv.gz:2"
    manifest = load_manifest("csv-real", client.storage)
    assert manifest["count"] == 1200 and sum(s["count"] for s in manifest["shards"]) == 1200
    assert manifest["class_names"][9] == "K" and len(manifest["class_names"]) == 24
    loc = st["result"]["location"]
    for name in ("report.json", "class_balance.png", "rejects.jsonl", "manifest.json"):
        assert client.storage.exists(f"{loc}/{name}")
    report = client.storage.read_json(loc + "/report.json")
    assert report["records_in"] == 1202 and report["duplicates"] == 2
    assert sum(report["class_counts"].values()) == 1200


def test_dirty_csv_rejects_every_course_fault_with_its_reason(client, tmp_path):
    faults = write_dirty_csv(tmp_path / "dirty.csv")
    st = run(with_chunk_size(client, 64), [tmp_path / "dirty.csv"], "csv-dirty")
    assert st["state"] == "done"
    got = {}
    for r in rejects_of(client, st):
        got.setdefault(r["reason"], []).append(int(r["position"]))
    assert sorted(got["csv_non_numeric"]) == faults["junk"]
    assert sorted(got["blank"]) == faults["all_zero"]
    assert sorted(got["duplicate"]) == faults["duplicate"]
    assert sorted(got["csv_missing"]) == faults["missing_value"]
    assert sorted(got["csv_out_of_range"]) == faults["out_of_range"]
    assert sorted(got["csv_wrong_length"]) == faults["too_few_pixels"]
    assert sorted(got["label_unknown"]) == faults["invalid_label"]
    _, _, keys = load_dataset("csv-dirty", client.storage)
    assert [int(k.split(":")[1]) for k in keys] == faults["clean"]


# What the pipeline does with each of the 52 shared test images (the decoder's own table is in test_decoder).
IMAGE_REJECTS = {
    "broken.png": "undecodable", "broken_data_stream.png": "undecodable",
    "decompression_bomb.gif": "decompression_bomb", "truncated_end_chunk.png": "truncated",
    "truncated_image.png": "truncated", "truncated_jpeg.jpg": "truncated",
    "xmp_test.jpg": "too_large",   # 1.8 MB, over the 1 MB body cap the test workers run with
}


def test_url_manifest_over_real_http_with_misbehaving_routes(client, http_server, tmp_path):
    pixels = sign_rows(3, skip=100).iloc[:, 1:].to_numpy(np.uint8)
    for i, p in enumerate(pixels):
        http_server.add(f"u{i}", jpeg_bytes(p))
    entries = [(http_server.url(f"/img/{name}"), "a") for name in sorted(os.listdir(IMAGES_DIR))]
    special = {
        "/flaky/u0": None, "/ratelimit/u1": None, "/redirect/u2": None,
        "/status/410": "http_status", "/status/502": "http_status", "/slow/u0": "timeout", "/reset": "connection",
        "/truncated/u0": "connection", "/nonimage": "not_image", "/big": "too_large", "/redirect-loop": "redirect",
    }
    entries += [(http_server.url(path), "b") for path in special]
    entries += [("ftp://example.com/x.jpg", "c"), ("http://169.254.169.254/latest/meta-data", "c"),
                (http_server.url("/img/hopper.jpg"), "z"), (http_server.url("/img/hopper.png"), None)]
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text("".join(json.dumps({"url" if i % 2 else "content": u, "label": lab}) + "\n"
                                for i, (u, lab) in enumerate(entries)))
    st = run(with_chunk_size(client, 20), [manifest], "urls")
    assert st["state"] == "done", st
    reasons = {int(r["position"]): r["reason"] for r in rejects_of(client, st)}
    _, _, keys = load_dataset("urls", client.storage)
    kept = {int(k.split(":")[1]) for k in keys}
    assert len(kept) + len(reasons) == len(entries)           # every record is accounted for, once
    for line, (url, _) in enumerate(entries, 1):
        tail = url.split("/", 3)[-1]
        name = tail.removeprefix("img/")
        expected = IMAGE_REJECTS.get(name) or special.get("/" + tail)
        if line > len(entries) - 4:
            expected = ["url_invalid", "url_forbidden", "label_unknown", "label_missing"][line - len(entries) + 3]
        if expected is None:
            assert line in kept or reasons[line] in ("blank", "duplicate"), (url, reasons.get(line))
        else:
            assert reasons.get(line) == expected, (url, reasons.get(line))
    assert http_server.hits("/flaky/u0") == 2 and http_server.hits("/ratelimit/u1") == 2
    assert http_server.hits("/status/410") == 1                # 4xx is not retried
    assert http_server.hits("/status/502") == 3                # 5xx is retried (2 retries)


def test_course_base64_files_and_folders(client, tmp_path):
    course = IMAGES_DIR.parent / "course"
    st = run(client, [course / "base64_single.json", course / "base64_list.json"], "b64")
    assert st["state"] == "done"
    # the course's files hold one and the same 'b' JPEG three times: the first is kept
    assert (st["records_ok"], st["records_rejected"]) == (1, 2)
    assert st["rejects_by_reason"] == {"duplicate": 2}
    images, labels, keys = load_dataset("b64", client.storage)
    assert labels.tolist() == [1] and keys.tolist() == ["base64_single.json:0"]
    rows = sign_rows(4, skip=10).iloc[:, 1:].to_numpy(np.uint8).reshape(-1, 28, 28)
    write_class_folders(tmp_path / "tree", [("A", "x", rows[0]), ("A", "y", rows[1]), ("B", "x", rows[2]),
                                            ("Q", "dup", rows[2]), ("Z", "bad", rows[3])])
    st = run(client, [tmp_path / "tree"], "folders")
    assert st["rejects_by_reason"] == {"duplicate": 1, "label_unknown": 1}
    images, labels, keys = load_dataset("folders", client.storage)
    assert keys.tolist() == ["tree:A/x.png", "tree:A/y.png", "tree:B/x.png"]
    assert np.array_equal(images[..., 0], rows[:3]) and labels.tolist() == [0, 0, 1]


def test_mnist_digits_with_another_class_set(client, tmp_path):
    with np.load(IMAGES_DIR.parent / "mnist" / "mnist.npz") as z:
        x, y = z["x_train"][:3000], z["y_train"][:3000]
    np.savez(tmp_path / "mnist-small.npz", x_train=x, y_train=y)
    c = with_chunk_size(client, 1000, classes="digits")
    st = run(c, [tmp_path / "mnist-small.npz"], "digits")
    assert st["state"] == "done"
    images, labels, keys = load_dataset("digits", client.storage)
    assert st["records_ok"] + st["records_rejected"] == 3000
    assert set(st["rejects_by_reason"]) <= {"duplicate", "blank"}
    manifest = load_manifest("digits", client.storage)
    assert manifest["class_names"] == [str(d) for d in range(10)]
    first = int(keys[0].split("[")[1].rstrip("]"))
    assert np.array_equal(images[0, ..., 0], x[first]) and labels[0] == y[first]


def test_sigkill_mid_chunk_loses_and_duplicates_nothing(client, http_server, tmp_path, ingest_worker):
    rows = sign_rows(60, skip=300)
    entries = []
    for i, p in enumerate(rows.iloc[:, 1:].to_numpy(np.uint8)):
        http_server.add(f"k{i}", jpeg_bytes(p))
        entries.append({"content": http_server.url(f"/bytes/k{i}"), "label": int(rows.iloc[i, 0])})
    entries.insert(25, {"content": http_server.url("/slow/k0"), "label": "a"})  # holds chunk 1 for ~3 s
    path = tmp_path / "kill.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    c = with_chunk_size(client, 20)
    job_id = c.submit(Submission(sources=[str(path)], dataset="killed"))
    pid = wait_until(lambda: c.jobs.running_chunks(job_id).get(1), what="chunk 1 to start")
    os.kill(pid, signal.SIGKILL)
    st = c.wait(job_id, timeout=120)
    assert st["state"] == "done", st
    assert (st["records_ok"], st["records_rejected"]) == (60, 1)
    assert st["rejects_by_reason"] == {"timeout": 1}
    _, _, keys = load_dataset("killed", client.storage)
    assert len(keys) == len(set(keys)) == 60
    assert ingest_worker.proc.poll() is None                   # the worker replaced its child and went on


def test_redelivered_chunk_and_second_finalize_change_nothing(client, tmp_path):
    rows = sign_rows(50, skip=500)
    path = tmp_path / "r.csv"
    rows.to_csv(path, index=False)
    st = run(with_chunk_size(client, 25), [path], "redeliver")
    manifest = load_manifest("redeliver", client.storage)
    job_id = st["job_id"]
    staged = f"jobs/{job_id}/staged/000000.csv"
    msg = {"job": job_id, "idx": 0, "source": "r.csv", "kind": "csv", "count": 25, "start": 2, "staged": staged}
    again = client.app.send_task("signq.ingest.chunk", args=[msg]).get(timeout=60, interval=0.05)
    assert again["ok"] == 25
    skipped = client.app.send_task("signq.ingest.finalize", args=[job_id]).get(timeout=60, interval=0.05)
    assert "skipped" in skipped
    assert load_manifest("redeliver", client.storage) == manifest
    assert client.jobs.status(job_id)["records_ok"] == 50


def test_bad_manifest_fails_fast_naming_file_and_line(client, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"content": "http://127.0.0.1/a.jpg", "label": "a"}\n{not json\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl, line 2: not valid JSON"):
        client.submit(Submission(sources=[str(path)], dataset="bad"))
    with pytest.raises(ManifestError, match="no such file"):
        client.submit(Submission(sources=[str(tmp_path / "missing.csv")], dataset="bad"))
    with pytest.raises(StorageKeyError, match="Invalid"):
        client.submit(Submission(sources=[str(path)], dataset="../escape"))


def test_course_url_manifest_with_urls_rewritten_to_loopback(client, http_server, tmp_path):
    """The course's urls.jsonl points at a bucket this machine cannot reach: serve real sign JPEGs under the
    same file names on 127.0.0.1 and rewrite the URLs, keeping the course's lowercase labels."""
    course = [json.loads(line) for line in (IMAGES_DIR.parent / "course" / "urls.jsonl").read_text().splitlines()]
    rows = sign_rows(len(course), skip=4000).iloc[:, 1:].to_numpy(np.uint8)
    lines = []
    for entry, pixels in zip(course, rows):
        name = entry["content"].rsplit("/", 1)[-1]
        lines.append(json.dumps({"content": http_server.add(f"course-{name}", jpeg_bytes(pixels)), "label": entry["label"]}))
    path = tmp_path / "data.json"                       # the course's file name: JSON Lines despite .json
    path.write_text("\n".join(lines) + "\n")
    st = run(client, [path], "course-urls")
    assert (st["state"], st["records_ok"], st["records_rejected"]) == ("done", len(course), 0)
    _, labels, _ = load_dataset("course-urls", client.storage)
    names = load_manifest("course-urls", client.storage)["class_names"]
    assert [names[i].lower() for i in labels] == [e["label"] for e in course]


def test_sigkill_of_a_whole_worker_is_redelivered_after_the_visibility_timeout(client, http_server, tmp_path,
                                                                               worker_env):
    """Parent and children killed together: nothing acks or rejects the message, Redis' visibility timeout
    hands it to another worker, and the job still ends with exact counts."""
    from conftest import WorkerProcess

    env = {**worker_env, "SIGNQ_VISIBILITY_TIMEOUT": "5"}
    rows = sign_rows(10, skip=700)
    entries = []
    for i, p in enumerate(rows.iloc[:, 1:].to_numpy(np.uint8)):
        http_server.add(f"v{i}", jpeg_bytes(p))
        entries.append({"content": http_server.url(f"/bytes/v{i}"), "label": int(rows.iloc[i, 0])})
    entries.insert(5, {"content": http_server.url("/slow/v0"), "label": "a"})
    path = tmp_path / "victim.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    victim = WorkerProcess(env, "victim-q", 1, "victim").start()
    rescuer = None
    try:
        c = Client(client.settings)
        c.app.conf.task_routes = {"signq.ingest.chunk": {"queue": "victim-q"}}   # only these workers take it
        job_id = c.submit(Submission(sources=[str(path)], dataset="victim"))
        wait_until(lambda: c.jobs.running_chunks(job_id), what="the chunk to start")
        pid = next(iter(c.jobs.running_chunks(job_id).values()))
        os.killpg(victim.proc.pid, signal.SIGKILL)                 # the whole worker: parent and child
        victim.proc.wait()
        assert pid != victim.proc.pid
        rescuer = WorkerProcess(env, "victim-q", 1, "rescuer").start()
        st = c.wait(job_id, timeout=120)
    finally:
        victim.stop()
        if rescuer:
            rescuer.stop()
    assert st["state"] == "done", st
    assert (st["records_ok"], st["records_rejected"]) == (10, 1)
    _, _, keys = load_dataset("victim", client.storage)
    assert len(keys) == len(set(keys)) == 10

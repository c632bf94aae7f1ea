"""Scheduled ingestion with a real celery beat process, real workers and real Redis."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import redis
from conftest import ROOT, wait_until
from datagen import jpeg_bytes, sign_rows

from signq.errors import ConfigError
from worker.schedule import beat_schedule, load_watches

pytestmark = pytest.mark.timeout(120)


def write_manifest(path, server, n, skip):
    rows = sign_rows(n, skip=skip)
    lines = []
    for i, p in enumerate(rows.iloc[:, 1:].to_numpy("uint8")):
        server.add(f"s{skip}-{i}", jpeg_bytes(p))
        lines.append(json.dumps({"content": server.url(f"/bytes/s{skip}-{i}"), "label": int(rows.iloc[i, 0])}))
    path.write_text("\n".join(lines) + "\n")


def test_schedule_file_is_validated(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text('[[watch]]\nname = "x"\nlocation = "/tmp"\n')
    with pytest.raises(ConfigError, match="lacks \\['dataset'\\]"):
        load_watches(str(bad))
    bad.write_text('[[watch]]\nname = "x"\nlocation = "/tmp"\ndataset = "../up"\n')
    with pytest.raises(Exception, match="Invalid dataset name"):
        load_watches(str(bad))


def test_beat_ingests_each_new_manifest_exactly_once(tmp_path, worker_env, redis_url, ingest_worker, http_server):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_manifest(incoming / "first.jsonl", http_server, 30, 1000)
    schedule = tmp_path / "schedule.toml"
    schedule.write_text(f'[[watch]]\nname = "inbox"\nlocation = "{incoming}"\npattern = "*.jsonl"\n'
                        f'dataset = "scheduled"\nevery = 0.3\n')
    assert list(beat_schedule(str(schedule))) == ["signq-watch-inbox"]
    env = {**worker_env, "SIGNQ_SCHEDULE": str(schedule)}
    beat = subprocess.Popen([sys.executable, "-m", "celery", "--quiet", "-A", "worker", "beat", "--loglevel=WARNING",
                             "-s", str(tmp_path / "beat-state")], env=env, cwd=ROOT)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        claims = lambda: [k for k in r.keys("signq:ingested:scheduled:*")]  # noqa: E731
        wait_until(lambda: len(claims()) == 1 and r.get(claims()[0]) != "claimed", what="first manifest")
        shutil.copy(incoming / "first.jsonl", incoming / "first-copy.jsonl")   # same content, new name
        write_manifest(incoming / "second.jsonl", http_server, 20, 2000)
        wait_until(lambda: len(claims()) == 2, what="second manifest")
        jobs = {r.get(k) for k in claims()}
        storage = worker_env["SIGNQ_STORAGE"]
        for job in jobs:
            wait_until(lambda: os.path.exists(f"{storage}/datasets/scheduled/{job}/manifest.json"), what=job)
        # three more scans find nothing new to ingest
        ticks = r.zcard("signq:jobs")
        scans = int(r.get("signq:scans:inbox"))
        wait_until(lambda: int(r.get("signq:scans:inbox")) >= scans + 3, what="three more beat ticks")
    finally:
        beat.terminate()
        beat.wait(10)
    assert len(jobs) == 2 and len(claims()) == 2
    assert r.zcard("signq:jobs") == ticks

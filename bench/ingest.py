"""bench/ingest: signq's ingestion throughput and producer memory, against baselines measured in the same run.

    python bench/ingest.py            # ~2 minutes on 2 cores; prints a table (and --json for a JSON object)

Measures, with a private redis-server and 2 prefork worker processes (the embedded default's setup):
  1. the course's way: sequential ``requests.get`` per URL on a sample, decode with PIL
  2. signq, URL JSON Lines of 27,455 real Sign Language MNIST JPEGs served from a loopback server
     (submit -> finalized, end to end)
  3. signq, base64 JSON of the same 27,455 JPEGs; 4. signq, the real 27,455-row CSV (gzip)
  5. producer peak RSS splitting a 10,000-line vs a 1,000,000-line URL manifest (separate processes)
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
CSV = ROOT.parent / "shared" / "data" / "sign-mnist" / "sign_mnist_train.csv.gz"
N = 27_455


def course_way(urls: list[str]) -> float:
    import numpy as np
    import requests
    from PIL import Image

    t0 = time.perf_counter()
    for u in urls:
        np.asarray(Image.open(io.BytesIO(requests.get(u, timeout=10).content)).convert("L"))
    return len(urls) / (time.perf_counter() - t0)


def signq_run(client, source: str, dataset: str) -> dict:
    from producer.submit import Submission

    t0 = time.perf_counter()
    job_id = client.submit(Submission(sources=[source], dataset=dataset))
    st = client.wait(job_id, timeout=600)
    seconds = time.perf_counter() - t0
    assert st["state"] == "done", st
    n = st["records_ok"] + st["records_rejected"]
    return {"records": n, "ok": st["records_ok"], "seconds": round(seconds, 3), "images_per_s": round(n / seconds)}


def write_base64(path: Path, jpegs, labels):
    with open(path, "w") as f:
        f.write("[")
        for i, (j, lab) in enumerate(zip(jpegs, labels)):
            f.write(("," if i else "") + json.dumps({lab: "data:image/jpeg;base64," + base64.b64encode(j).decode()}))
        f.write("]")


PRODUCER = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from signq.client import Client
from signq.settings import Settings
from producer.submit import Submission
settings = Settings.from_env(env={{"SIGNQ_BROKER_URL": {url!r}, "SIGNQ_STORAGE": {storage!r}}})
c = Client(settings)
t0 = time.perf_counter()
job = c.submit(Submission(sources=[{manifest!r}], dataset="mem"))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({{"peak_rss_mb": int(hwm) / 1024,
                  "seconds": time.perf_counter() - t0, "job": job}}))
"""


def producer_memory(lines: int, tmp: Path, url: str) -> dict:
    manifest = tmp / f"m{lines}.jsonl"
    with open(manifest, "w") as f:
        for i in range(lines):
            f.write(f'{{"content": "http://127.0.0.1:9/i/{i}.jpg", "label": "a"}}\n')
    code = PRODUCER.format(root=str(ROOT), url=url, storage=str(tmp / "memstore"), manifest=str(manifest))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import redis

    redis.Redis.from_url(url).flushdb()          # nobody consumes these chunks
    return {"lines": lines, **json.loads(out.stdout.strip().splitlines()[-1])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--course-sample", type=int, default=2000)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--big-manifest", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    from imageserver import ImageServer

    from signq.client import Client
    from signq.embedded import EmbeddedBroker, EmbeddedWorkers
    from signq.settings import Settings

    results = {}
    with tempfile.TemporaryDirectory() as d, ImageServer(N, lean=True) as srv:
        tmp = Path(d)
        manifest = srv.write_manifest(tmp / "urls.jsonl")
        results["course_requests_images_per_s"] = round(course_way(srv.urls[:args.course_sample]))
        broker = EmbeddedBroker("redis-server")
        url = broker.start()
        settings = Settings.from_env(env={"SIGNQ_BROKER_URL": url, "SIGNQ_STORAGE": str(tmp / "store")},
                                     chunk_size=args.chunk_size)
        workers = EmbeddedWorkers(settings.to_env(), ("ingest",), 2)
        workers.start()
        try:
            client = Client(settings)
            signq_run(client, str(ROOT / "samples" / "base64_single.json"), "warmup")   # workers are up
            results["signq_urls"] = signq_run(client, str(manifest), "urls")
            from imageserver import build_images

            jpegs, labels = build_images(N)
            write_base64(tmp / "b64.json", jpegs, labels)
            results["signq_base64"] = signq_run(client, str(tmp / "b64.json"), "b64")
            results["signq_csv"] = signq_run(client, str(CSV), "csv")
        finally:
            workers.stop()
        results["producer_10k"] = producer_memory(10_000, tmp, url)
        results["producer_big"] = producer_memory(args.big_manifest, tmp, url)
        broker.stop()
    course = results["course_requests_images_per_s"]
    results["ratios"] = {
        "urls_vs_course": round(results["signq_urls"]["images_per_s"] / course, 2),
        "producer_rss_big_vs_10k": round(results["producer_big"]["peak_rss_mb"] / results["producer_10k"]["peak_rss_mb"], 2),
    }
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'measure':44s} {'value':>12s}   target")
    print(f"{'course way: sequential requests.get + PIL':44s} {course:>10,d}/s")
    for key, target in (("signq_urls", 8000), ("signq_base64", 30000), ("signq_csv", 30000)):
        r = results[key]
        print(f"{key + ' (' + str(r['records']) + ' images, end to end)':44s} {r['images_per_s']:>10,d}/s   >= {target:,}/s "
              f"{'OK' if r['images_per_s'] >= target else 'SHORT'}")
    print(f"{'signq URLs vs course way':44s} {results['ratios']['urls_vs_course']:>11.1f}x")
    for key in ("producer_10k", "producer_big"):
        r = results[key]
        print(f"{'producer peak RSS, ' + format(r['lines'], ',') + ' lines':44s} {r['peak_rss_mb']:>9.0f} MB   ({r['seconds']:.1f}s)")
    print(f"{'producer RSS ratio big/10k':44s} {results['ratios']['producer_rss_big_vs_10k']:>11.2f}x   flat (<= a few x)")


if __name__ == "__main__":
    main()

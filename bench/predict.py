"""bench/predict: batch prediction end to end vs bare ``model.predict`` on in-memory arrays, same run.

    python bench/predict.py [--n 27455] [--model-workers 2] [--json]

1. trains the default architecture for one epoch on 5,000 real rows (a real stored model version);
2. bare: ``model.predict`` on the n images already decoded in memory (float32), batch 512;
3. signq: a JSON Lines manifest of n JPEG URLs on a loopback server -> ``predict`` job on the model queue
   (fetch, decode, clean, predict with the model cached per process) -> predictions JSONL/CSV, end to end.
Target: signq / bare >= 0.5.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "bench")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=27455)
    ap.add_argument("--model-workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from imageserver import ImageServer, build_images
    from train import prepare

    from producer.submit import Submission
    from signq.client import Client
    from signq.embedded import EmbeddedBroker, EmbeddedWorkers
    from signq.settings import Settings
    from signq.storage import Storage
    from worker import training

    root = prepare(5000, "bench")
    storage = Storage(root)
    spec = training.TrainSpec.from_json({"datasets": ["bench"], "name": "bench", "epochs": 1})
    model_ref = training.run_training(storage, spec, tempfile.mkdtemp())["model"]
    out = {"model": model_ref, "n": args.n}

    import cv2
    import numpy as np

    from worker import predictor

    jpegs, _ = build_images(args.n)
    images = np.stack([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE) for j in jpegs])[..., None]
    loaded = predictor.get_model(storage, model_ref)
    loaded.model.predict(images[:1024].astype(np.float32), batch_size=512, verbose=0)      # warm-up
    t0 = time.perf_counter()
    loaded.model.predict(images.astype(np.float32), batch_size=512, verbose=0)
    out["bare_predict_images_per_s"] = round(args.n / (time.perf_counter() - t0))

    with ImageServer(args.n, lean=True) as srv:
        manifest = srv.write_manifest(os.path.join(root, "urls.jsonl"))
        broker = EmbeddedBroker("redis-server")
        settings = Settings.from_env(env={"SIGNQ_BROKER_URL": broker.start(), "SIGNQ_STORAGE": root})
        workers = EmbeddedWorkers(settings.to_env(), ("ingest", "model"), 1, args.model_workers)
        workers.start()
        try:
            client = Client(settings)
            warm = client.submit(Submission(sources=[os.path.join(ROOT, "samples", "urls.jsonl")], dataset="bench",
                                            kind="predict", extra={"model": model_ref}))
            client.wait(warm, timeout=300)     # the model workers are up and have loaded TensorFlow + the model
            t0 = time.perf_counter()
            job = client.submit(Submission(sources=[str(manifest)], dataset="bench", kind="predict",
                                           extra={"model": model_ref}))
            st = client.wait(job, timeout=900)
            seconds = time.perf_counter() - t0
        finally:
            workers.stop()
            broker.stop()
    assert st["state"] == "done", st
    out["signq"] = {"records": st["result"]["records"], "predicted": st["result"]["predicted"],
                    "seconds": round(seconds, 2), "images_per_s": round(args.n / seconds)}
    out["ratio"] = round(out["signq"]["images_per_s"] / out["bare_predict_images_per_s"], 3)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"bare model.predict on in-memory arrays   {out['bare_predict_images_per_s']:>8,d} images/s")
        print(f"signq predict, URL manifest end to end   {out['signq']['images_per_s']:>8,d} images/s "
              f"({args.n} images, {args.model_workers} model workers)")
        print(f"ratio                                    {out['ratio']:>8.2f}   (target >= 0.5)")


if __name__ == "__main__":
    main()

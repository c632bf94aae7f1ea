"""Benchmark: training throughput through signq's pipeline (shards -> tf.data -> fit) vs plain ``model.fit`` on
in-memory numpy, same model, same run. Target: pipeline / in-memory >= 0.95.

    python bench/train.py [--storage DIR --dataset NAME] [--rows 27455] [--epochs 3] [--batch-size 128]

Without --storage, the first --rows rows of the shared train CSV are written as a dataset in a temporary
directory. Both variants fit the same architecture from the same initial weights; each gets one warm-up epoch
(graph tracing), then the timed epochs alternate between the two so drift in the machine hits both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage")
    p.add_argument("--dataset", default="bench")
    p.add_argument("--rows", type=int, default=27455)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--arch", default="default")
    p.add_argument("--cache-bytes", type=int, default=None,
                   help="0 measures the always-streaming path (for data larger than memory)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import keras

    from signq.storage import Storage
    from worker import models, training

    storage = Storage(args.storage or prepare(args.rows, args.dataset))
    spec = training.TrainSpec.from_json({"datasets": [args.dataset], "batch_size": args.batch_size})
    idx = training.assign_split(training.index_shards(storage, spec.datasets), spec)
    n = idx.count(training.TRAIN)
    cache = training.CACHE_BYTES if args.cache_bytes is None else args.cache_bytes
    pipeline = training.make_dataset(storage, idx, training.TRAIN, args.batch_size, seed=0, cache_bytes=cache)
    x, y = in_memory(storage, idx)

    keras.utils.set_random_seed(0)
    hp = {"arch": args.arch}
    model = models.compile_model(models.make_model(idx.image_shape, len(idx.class_names), hp), hp)
    initial = model.get_weights()
    runs = {"pipeline": lambda: model.fit(pipeline, epochs=1, verbose=0, shuffle=False),
            "in_memory": lambda: model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True)}
    for fit in runs.values():                                   # warm-up: trace each input path once
        model.set_weights(initial)
        fit()
    seconds = {k: 0.0 for k in runs}
    for _ in range(args.epochs):
        for name, fit in runs.items():
            model.set_weights(initial)
            t0 = time.perf_counter()
            fit()
            seconds[name] += time.perf_counter() - t0
    rate = {k: n * args.epochs / s for k, s in seconds.items()}
    out = {"train_rows": n, "epochs": args.epochs, "batch_size": args.batch_size, "arch": args.arch,
           "pipeline_samples_per_s": round(rate["pipeline"], 1), "in_memory_samples_per_s": round(rate["in_memory"], 1),
           "ratio": round(rate["pipeline"] / rate["in_memory"], 3), "cpus": os.cpu_count(), "cache_bytes": cache}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"train rows {n}, {args.epochs} timed epochs each, batch {args.batch_size}, arch {args.arch}")
        print(f"signq pipeline (shards -> tf.data -> fit): {out['pipeline_samples_per_s']:>9.1f} samples/s")
        print(f"plain fit on in-memory numpy:              {out['in_memory_samples_per_s']:>9.1f} samples/s")
        print(f"ratio pipeline / in-memory:                {out['ratio']:>9.3f}  (target >= 0.95)")
    return 0


def prepare(rows: int, name: str) -> str:
    from model_fixtures import read_rows, write_dataset
    from signq.storage import Storage

    root = tempfile.mkdtemp(prefix="signq-bench-train-")
    write_dataset(Storage(root), name, *read_rows(rows), shard_rows=2000)
    return root


def in_memory(storage, idx):
    """The same training split as float32 numpy (what a plain Keras script would feed to fit)."""
    from worker import training

    parts = list(training.iter_batches(storage.load_npz, idx.paths, idx.codes, training.TRAIN, 10 ** 9))
    x = np.concatenate([b[0] for b in parts]).astype(np.float32)
    y = np.concatenate([b[1] for b in parts]).astype(np.int32)
    return x, y


if __name__ == "__main__":
    sys.exit(main())

"""CLI for the model lifecycle: ``signq train | evaluate | tune | models list|show``.

Each command parses, builds settings, and submits a job to the model queue (``signq.model.*``) through
``signq.client.Client``; ``--wait`` shows a progress bar and the final status, ``--json`` prints JSON.
``models`` reads the model store directly (no broker). No TensorFlow is imported here.
"""
from __future__ import annotations

import json
import sys

from signq.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3


def register(subparsers, common):
    t = subparsers.add_parser("train", parents=[common], help="train a model on finished datasets (model queue)")
    t.add_argument("--dataset", action="append", required=True, help="NAME[:VERSION]; repeat to train on several")
    add_train_options(t)
    t.add_argument("--hparams-from", help="a tune job id: train with its best hyperparameters")
    t.add_argument("--transfer", help='transfer-learning spec as JSON, e.g. {"from": "model", "model": "signs"}')
    t.add_argument("--then", nargs="+", metavar=("predict", "SOURCE"),
                   help="`--then predict SOURCE...`: predict SOURCE with the new model once trained")
    _wait_flags(t)
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser("evaluate", parents=[common], help="evaluate MODEL on a dataset; writes a report")
    e.add_argument("model", help="NAME or NAME:VERSION")
    e.add_argument("--dataset", required=True, help="NAME[:VERSION]")
    _wait_flags(e)
    e.set_defaults(func=cmd_evaluate)

    u = subparsers.add_parser("tune", parents=[common], help="hyperparameter search; trials run on all model workers")
    u.add_argument("--dataset", action="append", required=True)
    u.add_argument("--algorithm", choices=("random", "hyperband"), default="random")
    u.add_argument("--max-trials", type=int, default=8)
    u.add_argument("--max-epochs", type=int, default=6)
    u.add_argument("--factor", type=int, default=3, help="hyperband reduction factor")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--batch-size", type=int, default=128)
    u.add_argument("--arch", default="default")
    u.add_argument("--in-process", action="store_true", help="run KerasTuner in one worker instead of in parallel")
    _wait_flags(u)
    u.set_defaults(func=cmd_tune)

    m = subparsers.add_parser("models", parents=[common], help="list stored models, or show NAME[:VERSION]")
    m.add_argument("action", choices=("list", "show"))
    m.add_argument("ref", nargs="?", help="NAME or NAME:VERSION (for show)")
    m.set_defaults(func=cmd_models)


def add_train_options(p):
    """Training flags (also usable by `--then train` parsers)."""
    p.add_argument("--name", default=None, help="model name (default: signs)")
    p.add_argument("--arch", choices=("dense", "cnn", "regularized", "default"), default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--augment", dest="augment", action="store_true", default=None)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--target-accuracy", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--hparams", default=None, help="JSON object of hyperparameters (see worker/models.py DEFAULTS)")


def _wait_flags(p):
    p.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")


def train_spec(args, datasets) -> dict:
    """The job spec of signq.model.train from parsed flags (unset flags keep the worker's defaults)."""
    hparams = json.loads(args.hparams) if getattr(args, "hparams", None) else {}
    if not isinstance(hparams, dict):
        raise ValueError(f"--hparams must be a JSON object. Received: {args.hparams!r}")
    for flag in ("arch", "augment"):
        if getattr(args, flag, None) is not None:
            hparams[flag] = getattr(args, flag)
    spec = {"datasets": list(datasets), "hparams": hparams}
    for flag in ("name", "epochs", "batch_size", "seed", "target_accuracy", "patience", "hparams_from"):
        if getattr(args, flag, None) is not None:
            spec[flag] = getattr(args, flag)
    if getattr(args, "transfer", None):
        spec["transfer"] = json.loads(args.transfer)
    return spec


def then_train_spec(args, dataset_ref: str) -> dict:
    """The train spec for ``signq submit|run ... --then train`` (dataset ref known before it exists)."""
    return train_spec(args, [dataset_ref])


def _check_refs(args, datasets=(), model=None):
    """Fail fast (exit 3) on a dataset or model that does not exist, before anything is queued."""
    from signq.dataset import resolve as resolve_dataset
    from signq.storage import Storage
    from worker.modelstore import resolve as resolve_model

    storage = Storage(_settings(args).storage)
    for ref in datasets:
        resolve_dataset(storage, ref)
    if model:
        resolve_model(storage, model)


def cmd_train(args) -> int:
    _check_refs(args, args.dataset)
    spec = train_spec(args, args.dataset)
    follow = None
    if args.then:
        if args.then[0] != "predict" or len(args.then) < 2:
            raise ValueError(f"--then takes 'predict SOURCE...'. Received: {' '.join(args.then)!r}")
        import uuid

        follow = uuid.uuid4().hex[:20]
        spec["then"] = [{"job_id": follow, "sources": args.then[1:]}]
    return _submit(args, "train", "signq.model.train", spec, follow)


def cmd_evaluate(args) -> int:
    _check_refs(args, [args.dataset], args.model)
    code = _submit(args, "evaluate", "signq.model.evaluate", {"model": args.model, "dataset": args.dataset})
    return code


def cmd_tune(args) -> int:
    _check_refs(args, args.dataset)
    spec = {"datasets": args.dataset, "algorithm": args.algorithm, "max_trials": args.max_trials,
            "max_epochs": args.max_epochs, "factor": args.factor, "seed": args.seed, "batch_size": args.batch_size,
            "arch": args.arch, "in_process": args.in_process}
    return _submit(args, "tune", "signq.model.tune", spec)


def _settings(args) -> Settings:
    return Settings.from_env(storage=getattr(args, "storage", None))


def _submit(args, kind: str, task: str, spec: dict, follow: str | None = None) -> int:
    """Enqueue and print the job id; wait with --wait, and always on the embedded default (its workers stop
    with this command)."""
    from signq.client import Client

    settings = _settings(args)
    queues = ("model", "ingest") if follow else ("model",)
    with Client.open(settings, queues=queues) as client:
        job_id = client.submit_task(kind, task, spec)
        if not args.wait and settings.broker_url:
            ids = {"job_id": job_id, **({"then": follow} if follow else {})}
            print(json.dumps(ids) if args.json else job_id)
            return EXIT_OK
        st = client.wait(job_id, progress=not args.json, timeout=args.timeout)
        if follow and st["state"] == "done":
            if not args.json:
                _final(args, st)
            client.wait_created(follow)
            st = client.wait(follow, progress=not args.json, timeout=args.timeout)
    return _final(args, st)


def _final(args, st: dict) -> int:
    code = EXIT_OK if st["state"] == "done" else EXIT_FAILED
    if args.json:
        print(json.dumps(st, default=str))
        return code
    result = st.get("result") or {}
    print(f"job {st['job_id']} ({st.get('kind')}): {st['state']}")
    if st.get("error"):
        print(f"error: {st['error']}", file=sys.stderr)
    if result.get("table"):
        print(result["table"])
    for key in ("model", "test_accuracy", "val_accuracy", "train_seconds", "accuracy", "loss", "rows", "best",
                "location"):
        if result.get(key) is not None:
            print(f"{key}: {result[key]}")
    return code


def cmd_models(args) -> int:
    from signq.storage import Storage
    from worker import modelstore

    storage = Storage(_settings(args).storage)
    try:
        if args.action == "list":
            rows = modelstore.list_models(storage)
            print(json.dumps(rows) if args.json else format_models(rows))
            return EXIT_OK
        if not args.ref:
            raise ValueError("`signq models show` needs NAME or NAME:VERSION. Received: nothing")
        info = modelstore.show(storage, args.ref)
    except modelstore.ModelNotFound as e:
        print(json.dumps({"error": str(e), "exit_code": EXIT_NOT_FOUND}) if args.json else f"error: {e}",
              file=sys.stdout if args.json else sys.stderr)
        return EXIT_NOT_FOUND
    print(json.dumps(info, default=str) if args.json else format_show(info))
    return EXIT_OK


def format_models(rows) -> str:
    if not rows:
        return "no models"
    lines = [f"{'model':<40}{'arch':<13}{'test acc':>9}"]
    for r in rows:
        acc = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(f"{r['name'] + ':' + r['version']:<40}{str(r['arch']):<13}{acc:>9}{'  (latest)' if r['latest'] else ''}")
    return "\n".join(lines)


def format_show(info: dict) -> str:
    test = (info.get("metrics") or {}).get("test") or {}
    lines = [f"model {info['name']}:{info['version']}  ({info.get('arch')}, {info.get('params')} params)",
             f"location: {info['location']}",
             f"datasets: {', '.join(info.get('datasets') or [])}",
             f"classes: {' '.join(info.get('class_names') or [])}",
             f"test accuracy: {test.get('accuracy')}  loss: {test.get('loss')}",
             f"hparams: {json.dumps((info.get('hparams') or {}).get('hparams'), sort_keys=True)}"]
    return "\n".join(lines)

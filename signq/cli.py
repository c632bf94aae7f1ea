"""signq's command line. Parses, builds settings, delegates; human output by default, --json for scripts.

Exit codes: 0 done, 1 job failed, 2 bad input (usage, manifest, configuration), 3 not found,
4 timed out waiting, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from signq.errors import ConfigError, DatasetNotFound, JobNotFound, ManifestError, ModelNotFound, StorageKeyError
from signq.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT = 0, 1, 2, 3, 4

EPILOG = """\
environment:
  SIGNQ_BROKER_URL   redis://host:6379/0 to use Redis and the workers attached to it; unset = embedded default
                     (a private broker and worker processes started by the command itself)
  SIGNQ_STORAGE      shared storage root, a path or fsspec URL (default ./signq-data)
  SIGNQ_CONCURRENCY  ingest worker processes (default 2), SIGNQ_MODEL_CONCURRENCY model-queue ones (default 1)
  SIGNQ_CHUNK_SIZE records per chunk (default 4000)
  SIGNQ_CLASSES      letters24 (default: A-Y without J, Z), digits, or a comma-separated list
  more: SIGNQ_CONNECT_TIMEOUT, SIGNQ_READ_TIMEOUT, SIGNQ_RETRIES, SIGNQ_MAX_BODY_BYTES, SIGNQ_DENY_NETWORKS,
        SIGNQ_ALLOW_NETWORKS, SIGNQ_IMAGE_HEIGHT/WIDTH/CHANNELS (see README)

examples:
  signq run samples/sign_mnist_sample.csv.gz --dataset demo        # embedded broker + workers, no server
  SIGNQ_BROKER_URL=redis://127.0.0.1:6379/0 signq submit urls.jsonl --dataset letters --wait
  signq status JOB_ID --json
"""


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SIGNQ_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ManifestError, ConfigError, StorageKeyError, ValueError) as e:
        return fail(args, EXIT_USAGE, f"error: {e}")
    except (JobNotFound, DatasetNotFound, ModelNotFound, FileNotFoundError) as e:
        return fail(args, EXIT_NOT_FOUND, f"error: {e}")
    except TimeoutError as e:
        return fail(args, EXIT_TIMEOUT, f"error: {e}")
    except KeyboardInterrupt:
        return 130


def fail(args, code: int, message: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": message.removeprefix("error: "), "exit_code": code}))
    else:
        print(message, file=sys.stderr)
    return code


def settings_from(args) -> Settings:
    return Settings.from_env(storage=getattr(args, "storage", None), chunk_size=getattr(args, "chunk_size", None),
                             classes=getattr(args, "classes", None), concurrency=getattr(args, "concurrency", None))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signq", description="Turn image manifests into clean datasets and trained "
                                "image classifiers, on Celery and Redis.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    common.add_argument("--storage", help="storage root, path or fsspec URL (default $SIGNQ_STORAGE or ./signq-data)")
    common.add_argument("--timeout", type=float, help="when waiting: give up after this many seconds (exit 4)")

    ingest = argparse.ArgumentParser(add_help=False, parents=[common])
    ingest.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="manifest paths or fsspec URLs: URL JSON Lines, base64 JSON, CSV[.gz], class folders, .npz")
    ingest.add_argument("--format", dest="fmt", choices=("urls", "base64", "csv", "folder", "npz"),
                        help="override format detection")
    ingest.add_argument("--dataset", default="dataset", help="dataset name (default: dataset)")
    ingest.add_argument("--chunk-size", type=int, help="records per chunk job (default $SIGNQ_CHUNK_SIZE or 4000)")
    ingest.add_argument("--classes", help="class set: letters24 (default), digits, or 'a,b,c'")
    ingest.add_argument("--concurrency", type=int, help="embedded worker processes (default 2)")
    ingest.add_argument("--then", choices=("train",), help="train a model on the dataset once ingestion is done "
                        "(training flags below apply)")
    try:
        from signq.cli_model import add_train_options

        add_train_options(ingest.add_argument_group("with --then train"))
    except ImportError:
        pass

    s = sub.add_parser("submit", parents=[ingest], help="split sources into chunk jobs and enqueue them",
                       description="Enqueue an ingestion job and print its id (needs SIGNQ_BROKER_URL and running "
                       "workers; without a broker use `signq run`).")
    s.add_argument("--wait", action="store_true", help="show progress and exit 0 when done, 1 when failed")
    s.set_defaults(func=cmd_submit)

    r = sub.add_parser("run", parents=[ingest], help="submit and wait (embedded broker + workers when no broker is set)",
                       description="Submit an ingestion job and wait for it. With no SIGNQ_BROKER_URL, signq starts a "
                       "private broker and worker processes, runs the job, and stops them.")
    r.set_defaults(func=cmd_run, wait=True)

    st = sub.add_parser("status", parents=[common], help="a job's state, counts, rejects by reason, rate, location")
    st.add_argument("job_id", metavar="JOB")
    st.set_defaults(func=cmd_status)

    j = sub.add_parser("jobs", parents=[common], help="recent jobs")
    j.add_argument("-n", type=int, default=20)
    j.set_defaults(func=cmd_jobs)

    d = sub.add_parser("datasets", parents=[common], help="list finished datasets, or show one (NAME[:VERSION])")
    d.add_argument("name", nargs="?", metavar="NAME[:VERSION]")
    d.set_defaults(func=cmd_datasets)

    w = sub.add_parser("worker", help="start a Celery worker (same as `celery -A worker worker`)")
    w.add_argument("-Q", "--queues", default="ingest", help="ingest (default) or model; run one worker per queue")
    w.add_argument("-c", "--concurrency", type=int, help="processes (ingest: $SIGNQ_CONCURRENCY; model: 1)")
    w.add_argument("--loglevel", default="INFO")
    w.set_defaults(func=cmd_worker)

    b = sub.add_parser("beat", help="start celery beat with the schedule in $SIGNQ_SCHEDULE")
    b.add_argument("--loglevel", default="INFO")
    b.set_defaults(func=cmd_beat)

    for register in _plugins():
        register(sub, common)
    return p


def _plugins():
    regs = []
    for mod in ("signq.cli_predict", "signq.cli_model"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ImportError:
            continue
        regs.append(module.register)
    return regs


def submission(args):
    from producer.submit import Submission

    return Submission(sources=args.sources, dataset=args.dataset, fmt=args.fmt)


def cmd_submit(args) -> int:
    settings = settings_from(args)
    if not settings.broker_url:
        return fail(args, EXIT_USAGE, "error: `signq submit` needs SIGNQ_BROKER_URL (workers must be able to reach "
                    "the broker); use `signq run` for the embedded default")
    return _ingest(args, settings)


def cmd_run(args) -> int:
    return _ingest(args, settings_from(args))


def _ingest(args, settings) -> int:
    from signq.client import Client

    queues = ("ingest", "model") if args.then else ("ingest",)
    with Client.open(settings, queues=queues) as client:
        sub = submission(args)
        ingest_id, last = chain_then(args, client, sub)
        job_id = client.submit(sub, job_id=ingest_id)
        if not args.wait:
            print(json.dumps({"job_id": job_id, **({"then": last} if last else {})}) if args.json else job_id)
            return EXIT_OK
        st = client.wait(job_id, progress=not args.json, timeout=args.timeout)
        if last and st["state"] == "done":
            st = {"ingest": st, **client.wait(last, progress=not args.json, timeout=args.timeout)}
    return report_final(args, st)


def chain_then(args, client, sub) -> tuple[str | None, str | None]:
    """Pre-create the follow-up job; finalize starts it once the dataset exists. Returns (ingest id, follow id)."""
    if not args.then:
        return None, None
    import uuid

    from signq.cli_model import then_train_spec

    ingest_id = uuid.uuid4().hex[:20]
    spec = then_train_spec(args, f"{sub.dataset}:{ingest_id}")
    follow = client.jobs.create("train", spec)
    sub.then.append({"task": "signq.model.train", "job_id": follow})
    return ingest_id, follow


def report_final(args, st: dict) -> int:
    code = EXIT_OK if st["state"] == "done" else EXIT_FAILED
    if args.json:
        print(json.dumps(st, indent=None, default=str))
    else:
        print(format_status(st))
    return code


def format_status(st: dict) -> str:
    lines = [f"job {st['job_id']} ({st.get('kind')}): {st['state']}"]
    if st.get("chunks_total", -1) >= 0 or st.get("chunks_done"):
        total = st["chunks_total"] if st["chunks_total"] >= 0 else "?"
        lines.append(f"  chunks    {st['chunks_done']}/{total}")
        lines.append(f"  records   {st['records_ok']} ok, {st['records_rejected']} rejected "
                     f"({st['rate']:.0f}/s over {st['elapsed']:.2f}s)")
    for reason, n in st.get("rejects_by_reason", {}).items():
        lines.append(f"    {reason:20s} {n}")
    if st.get("progress"):
        lines.append("  progress  " + ", ".join(f"{k}={v}" for k, v in st["progress"].items()))
    result = st.get("result") or {}
    for key in ("model", "test_accuracy", "val_accuracy", "dataset"):
        if result.get(key) is not None:
            lines.append(f"  {key:9s} {result[key]}")
    if st.get("location"):
        lines.append(f"  location  {st['location']}")
    if st.get("error"):
        lines.append(f"  error     {st['error']}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    from signq.client import job_status
    from signq.jobs import JobStore, connect
    from signq.storage import Storage

    settings = settings_from(args)
    url = settings.broker_url
    if url:
        st = job_status(JobStore(connect(url)), Storage(settings.storage), args.job_id)
    else:
        path = Storage(settings.storage).path("jobs", args.job_id, "status.json")
        if not Storage(settings.storage).exists(path):
            raise JobNotFound(f"No job {args.job_id!r}: no SIGNQ_BROKER_URL is set and no saved status in {path}")
        st = Storage(settings.storage).read_json(path)
    if args.json:
        print(json.dumps(st, default=str))
    else:
        print(format_status(st))
    return EXIT_OK


def cmd_jobs(args) -> int:
    from signq.jobs import JobStore, connect

    settings = settings_from(args)
    if not settings.broker_url:
        return fail(args, EXIT_USAGE, "error: `signq jobs` needs SIGNQ_BROKER_URL")
    store = JobStore(connect(settings.broker_url))
    rows = []
    for j in store.recent(args.n):
        try:
            rows.append(store.status(j))
        except JobNotFound:             # its hash expired (30 days); the index entry outlives it
            continue
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        for st in rows:
            print(f"{st['job_id']}  {st['kind']:8s} {st['state']:10s} {st['records_ok']:>8} ok "
                  f"{st['records_rejected']:>6} rejected  {st.get('location') or ''}")
    return EXIT_OK


def cmd_datasets(args) -> int:
    from signq.dataset import resolve
    from signq.storage import Storage

    storage = Storage(settings_from(args).storage)
    if args.name:
        directory, manifest = resolve(storage, args.name)
        report = storage.read_json(directory + "/report.json")
        out = {"location": directory, **{k: v for k, v in manifest.items() if k != "shards"},
               "shards": len(manifest["shards"]), "report": report}
        if args.json:
            print(json.dumps(out))
        else:
            print(f"{manifest['name']}:{manifest['version']}  {manifest['count']} images  {directory}")
            print(f"  rejected {report['records_rejected']}: {report['rejects_by_reason']}")
            print("  classes  " + "  ".join(f"{k}={v}" for k, v in manifest["class_counts"].items()))
        return EXIT_OK
    names = storage.listdir(storage.path("datasets"))
    rows = []
    for name in names:
        try:
            _, m = resolve(storage, name)
            rows.append({"name": name, "version": m["version"], "count": m["count"]})
        except DatasetNotFound:
            continue
    print(json.dumps(rows) if args.json else "\n".join(f"{r['name']}:{r['version']}  {r['count']}" for r in rows))
    return EXIT_OK


def cmd_worker(args) -> int:
    from signq.embedded import worker_command

    settings = Settings.from_env()
    n = args.concurrency or (settings.concurrency if args.queues == "ingest" else settings.model_concurrency)
    cmd = worker_command(args.queues, n, f"{args.queues.replace(',', '-')}-{os.getpid()}", args.loglevel)
    os.execvp(cmd[0], cmd)


def cmd_beat(args) -> int:
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "worker", "beat", f"--loglevel={args.loglevel}"])


if __name__ == "__main__":
    sys.exit(main())

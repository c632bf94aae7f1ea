"""``signq predict MODEL SOURCE... --out FILE``: batch prediction over any ingestible source."""
from __future__ import annotations

import argparse
import json
import sys

from signq.cli import EXIT_OK, report_final, settings_from


def register(sub, common):
    p = sub.add_parser("predict", parents=[common], help="predict every record of SOURCE... with a stored model",
                       description="Ingest SOURCE... chunk by chunk on the model queue, predict with MODEL "
                       "(NAME = latest version, or NAME:VERSION), and write one row per input record: key, "
                       "source, predicted class, confidence and top-3, or the reject reason.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  signq predict signs urls.jsonl --out predictions.csv --wait")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", help="write the predictions here (.csv for CSV, anything else JSON Lines)")
    p.add_argument("--format", dest="fmt", choices=("urls", "base64", "csv", "folder", "npz"))
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--wait", action="store_true", help="show progress and wait (always on with the embedded default)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from producer.submit import for_model, predict_submission
    from signq.client import Client
    from signq.storage import Storage
    from worker.modelstore import resolve

    settings = settings_from(args)
    _, meta = resolve(Storage(settings.storage), args.model)
    settings = for_model(settings, meta)
    wait = args.wait or not settings.broker_url or args.out
    with Client.open(settings, queues=("model", "ingest")) as client:
        sub = predict_submission(meta, args.sources, args.fmt)
        job_id = client.submit(sub)
        if not wait:
            print(json.dumps({"job_id": job_id}) if args.json else job_id)
            return EXIT_OK
        st = client.wait(job_id, progress=not args.json, timeout=args.timeout)
        if st["state"] == "done" and args.out:
            _copy_out(client.storage, st["result"], args.out)
            st["result"]["out"] = args.out
    if not args.json and st["state"] == "done":
        r = st["result"]
        print(f"{r['predicted']} predicted, {r['rejected']} rejected {r['rejects_by_reason']}; "
              f"mean confidence {r['mean_confidence']}", file=sys.stderr)
    return report_final(args, st)


def _copy_out(storage, result: dict, out: str):
    src = result["files"]["csv" if out.lower().endswith(".csv") else "jsonl"]
    with open(out, "wb") as f:
        f.write(storage.read_bytes(src))

"""Scheduled ingestion: celery beat runs ``signq.ingest.scan`` for each watch in a TOML config file.

    # $SIGNQ_SCHEDULE, e.g. /data/schedule.toml
    [[watch]]
    name = "letters"                 # a unique name
    location = "/data/incoming"      # a folder or fsspec prefix (s3://bucket/incoming, ...)
    pattern = "*.jsonl"              # glob for new manifests (default "*")
    dataset = "letters"              # dataset each manifest is ingested into
    every = 60                       # seconds between scans
    format = "urls"                  # optional, as --format

Each manifest is ingested exactly once, keyed by the SHA-256 of its content: the key is claimed with
``SET NX`` before submitting, so a re-run, a second beat tick or two beats never ingest it twice, and a
renamed copy of an ingested manifest is recognised.
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import tomllib

import fsspec

from signq.errors import ConfigError, ManifestError
from signq.storage import check_name

log = logging.getLogger(__name__)
CLAIM = "signq:ingested:{dataset}:{sha}"
CLAIM_TTL = 600


def load_watches(path: str) -> list[dict]:
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"Cannot read the schedule file {path}: {e}") from None
    watches = config.get("watch", [])
    for w in watches:
        missing = {"name", "location", "dataset"} - w.keys()
        if missing:
            raise ConfigError(f"{path}: a [[watch]] entry lacks {sorted(missing)}. Received: {w}")
        check_name(w["name"], "watch name")
        check_name(w["dataset"], "dataset name")
    return watches


def beat_schedule(path: str) -> dict:
    import os

    if not os.path.exists(path):
        log.warning("schedule file %s does not exist: celery beat runs no signq watches until it does", path)
        return {}
    return {f"signq-watch-{w['name']}": {"task": "signq.ingest.scan", "schedule": float(w.get("every", 60)),
                                         "args": [w]} for w in load_watches(path)}


def content_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(url, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def new_manifests(watch: dict) -> list[str]:
    fs, root = fsspec.core.url_to_fs(watch["location"])
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    pattern = watch.get("pattern", "*")
    found = sorted(p for p in fs.ls(root, detail=False) if fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern))
    return [p if proto in ("file", "local") else f"{proto}://{p}" for p in found]


def scan(watch: dict, r, submit) -> list[dict]:
    """Submit each manifest of the watch not ingested before. ``submit(url) -> job_id``."""
    started = []
    r.incr(f"signq:scans:{watch['name']}")      # lets operators (and tests) see beat ticking
    for url in new_manifests(watch):
        sha = content_sha256(url)
        key = CLAIM.format(dataset=watch["dataset"], sha=sha)
        if not r.set(key, "claimed", nx=True, ex=CLAIM_TTL):   # expires if this scan dies before submitting
            continue
        try:
            job_id = submit(url)
        except ManifestError as e:
            r.set(key, f"failed: {e}")
            log.warning("scheduled manifest %s rejected: %s", url, e)
            continue
        except Exception:
            r.delete(key)            # infrastructure failure: let the next tick try again
            raise
        r.set(key, job_id)
        started.append({"manifest": url, "sha256": sha, "job_id": job_id})
        log.info("scheduled ingestion of %s (sha256 %s) as job %s", url, sha[:12], job_id)
    return started

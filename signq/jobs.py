"""The job store: each job's spec, state and per-chunk stats in Redis (the broker's Redis by default).

Keys (prefix ``signq:``):
    job:<id>          hash: kind, spec (JSON), state, chunks_total, records_in, created, started, finished,
                      result (JSON), error, progress (JSON)
    job:<id>:chunks   hash: chunk index -> JSON stats; HSET is idempotent, so a redelivered chunk never
                      counts twice
    job:<id>:running  hash: chunk index -> pid of the process working on it (for operators and tests)
    job:<id>:final    the id of the task allowed to finalize (SET NX): finalize runs exactly once
    jobs              sorted set of job ids by creation time

States: queued -> running -> finalizing -> done | failed.
"""
from __future__ import annotations

import json
import time
import uuid

import redis

from signq.errors import JobNotFound

PREFIX = "signq:"
STATES = ("queued", "running", "finalizing", "done", "failed")
TTL = 30 * 24 * 3600


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


class JobStore:
    def __init__(self, client: redis.Redis):
        self.r = client

    def _k(self, job_id: str, suffix: str = "") -> str:
        return f"{PREFIX}job:{job_id}{suffix}"

    def create(self, kind: str, spec: dict, job_id: str | None = None) -> str:
        job_id = job_id or uuid.uuid4().hex[:20]
        now = time.time()
        self.r.hset(self._k(job_id), mapping={
            "kind": kind, "spec": json.dumps(spec), "state": "queued", "chunks_total": -1,
            "records_in": -1, "created": now,
        })
        self.r.expire(self._k(job_id), TTL)
        self.r.zadd(PREFIX + "jobs", {job_id: now})
        return job_id

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self._k(job_id)))

    def spec(self, job_id: str) -> dict:
        raw = self.r.hget(self._k(job_id), "spec")
        if raw is None:
            raise JobNotFound(f"No job {job_id!r} in the job store. `signq jobs` lists recent jobs.")
        return json.loads(raw)

    def update(self, job_id: str, **fields):
        mapping = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
        self.r.hset(self._k(job_id), mapping=mapping)

    def set_state(self, job_id: str, state: str, **fields):
        assert state in STATES, state
        stamp = {"running": "started", "done": "finished", "failed": "finished"}.get(state)
        if stamp and not (state == "running" and self.r.hexists(self._k(job_id), "started")):
            fields[stamp] = time.time()
        self.update(job_id, state=state, **fields)

    def start(self, job_id: str):
        """First chunk started: queued -> running (never moves a job backwards)."""
        if self.r.hsetnx(self._k(job_id), "started", time.time()):
            self.r.hset(self._k(job_id), "state", "running")

    def fail(self, job_id: str, error: str):
        self.set_state(job_id, "failed", error=error)

    def set_total(self, job_id: str, chunks: int, records: int) -> bool:
        """Producer finished splitting. Returns True when every chunk is already done."""
        self.update(job_id, chunks_total=chunks, records_in=records)
        return self.all_done(job_id)

    def chunk_running(self, job_id: str, idx: int, pid: int):
        self.r.hset(self._k(job_id, ":running"), str(idx), pid)
        self.r.expire(self._k(job_id, ":running"), TTL)

    def chunk_done(self, job_id: str, idx: int, stats: dict) -> bool:
        """Record a chunk's stats (idempotent). Returns True when it completes the job's chunks."""
        pipe = self.r.pipeline()
        pipe.hset(self._k(job_id, ":chunks"), str(idx), json.dumps(stats))
        pipe.expire(self._k(job_id, ":chunks"), TTL)
        pipe.hdel(self._k(job_id, ":running"), str(idx))
        pipe.execute()
        return self.all_done(job_id)

    def chunk_stats(self, job_id: str) -> dict[int, dict]:
        raw = self.r.hgetall(self._k(job_id, ":chunks"))
        return {int(k): json.loads(v) for k, v in raw.items()}

    def running_chunks(self, job_id: str) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.r.hgetall(self._k(job_id, ":running")).items()}

    def all_done(self, job_id: str) -> bool:
        total = int(self.r.hget(self._k(job_id), "chunks_total") or -1)
        return total >= 0 and self.r.hlen(self._k(job_id, ":chunks")) >= total

    def claim_finalize(self, job_id: str, task_id: str) -> bool:
        """True for exactly one finalize task id (and for its own redeliveries)."""
        key = self._k(job_id, ":final")
        if self.r.set(key, task_id, nx=True, ex=TTL):
            return True
        return self.r.get(key) == task_id

    def raw(self, job_id: str) -> dict:
        h = self.r.hgetall(self._k(job_id))
        if not h:
            raise JobNotFound(f"No job {job_id!r} in the job store. `signq jobs` lists recent jobs.")
        return h

    def status(self, job_id: str) -> dict:
        """The status object `signq status --json` prints."""
        h = self.raw(job_id)
        chunks = self.chunk_stats(job_id)
        by_reason: dict[str, int] = {}
        for st in chunks.values():
            for reason, n in st.get("rejects_by_reason", {}).items():
                by_reason[reason] = by_reason.get(reason, 0) + n
        ok = sum(st.get("ok", 0) for st in chunks.values())
        rejected = sum(st.get("rejected", 0) for st in chunks.values())
        started = float(h.get("started") or 0)
        end = float(h.get("finished") or 0) or time.time()
        elapsed = max(end - started, 1e-9) if started else 0.0
        result = json.loads(h["result"]) if h.get("result") else {}
        if result.get("duplicates") is not None:   # cross-chunk duplicates are only known at finalize
            ok, rejected = result["records_ok"], result["records_rejected"]
            by_reason = result["rejects_by_reason"]
        return {
            "job_id": job_id,
            "kind": h.get("kind"),
            "state": h.get("state"),
            "chunks_done": len(chunks),
            "chunks_total": int(h.get("chunks_total", -1)),
            "records_in": int(h.get("records_in", -1)),
            "records_done": sum(st.get("records", 0) for st in chunks.values()),
            "records_ok": ok,
            "records_rejected": rejected,
            "rejects_by_reason": dict(sorted(by_reason.items())),
            "rate": round(sum(st.get("records", 0) for st in chunks.values()) / elapsed, 1) if elapsed else 0.0,
            "elapsed": round(elapsed, 3),
            "location": result.get("location"),
            "result": result,
            "progress": json.loads(h["progress"]) if h.get("progress") else None,
            "error": h.get("error"),
        }

    def recent(self, n: int = 20) -> list[str]:
        return list(self.r.zrevrange(PREFIX + "jobs", 0, n - 1))

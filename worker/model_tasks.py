"""Model-queue tasks, kept thin: read the job spec, call plain functions, record state. No TensorFlow here:
``worker.training`` & co. are imported inside the tasks, i.e. in the worker child, after the fork.

    signq.model.train(job_id)               TrainSpec -> model version (resumable; one copy at a time)
    signq.model.evaluate(job_id)            {model, dataset} -> evaluation next to the model version
    signq.model.tune(job_id)                TuneSpec -> round 0's trials enqueued as tune_trial tasks
    signq.model.tune_trial(job_id, trial)   one trial; the last of a round advances the search or finishes it

Locks: a training (and each trial) holds ``signq:lock:<id>`` (SET NX with an expiry that a heartbeat thread
extends). A redelivered copy that finds the lock held retries later; if its holder was SIGKILLed, the lock
expires and the copy resumes from the last epoch's backup in the job's work directory.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading

from signq.errors import SignqError, TransientError
from signq.jobs import JobStore
from signq.storage import Storage
from worker.app import app
from worker.tasks import context

log = logging.getLogger(__name__)
LOCK_TTL = 60          # seconds without a heartbeat before a dead holder's lock expires
PERMANENT = (SignqError, ValueError, LookupError)


class Lock:
    """A Redis lock with a heartbeat: SET NX EX, extended every TTL/3 while held, released if still ours."""

    def __init__(self, r, name: str, ttl: int = LOCK_TTL):
        self.r, self.key, self.ttl = r, f"signq:lock:{name}", ttl
        self.token = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self._stop = threading.Event()
        self._thread = None

    def acquire(self) -> bool:
        if not (self.r.set(self.key, self.token, nx=True, ex=self.ttl) or self.r.get(self.key) == self.token):
            return False
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{self.key}")
        self._thread.start()
        return True

    def _beat(self):
        while not self._stop.wait(self.ttl / 3):
            if self.r.get(self.key) == self.token:
                self.r.expire(self.key, self.ttl)

    def release(self):
        self._stop.set()
        if self.r.get(self.key) == self.token:
            self.r.delete(self.key)


def workdir(storage: Storage, kind: str, job_id: str) -> str:
    """Local per-job work directory (backups, checkpoints, logs): under the storage root when it is local."""
    if storage.local:
        return storage.path("work", kind, job_id)
    return os.path.join(tempfile.gettempdir(), "signq-work", kind, job_id)


def reporter(jobs: JobStore, job_id: str):
    return lambda progress: jobs.update(job_id, progress=progress)


def finished(jobs: JobStore, job_id: str) -> dict | None:
    raw = jobs.raw(job_id)
    if raw.get("state") in ("done", "failed"):
        return json.loads(raw["result"]) if raw.get("result") else {"state": raw["state"], "error": raw.get("error")}
    return None


def run_locked(task, lock_name: str, fn, job_id: str):
    """Run ``fn()`` under the lock unless job ``job_id`` already ended (checked again once the lock is held,
    so a copy that waited for it finds the work done); map errors: transient -> retry, others -> job failed."""
    settings, storage, jobs = context()
    done = finished(jobs, job_id)
    if done is not None:
        return done
    lock = Lock(jobs.r, lock_name)
    if not lock.acquire():
        log.info("%s is running elsewhere: retrying later", lock_name)
        raise task.retry(countdown=LOCK_TTL / 2, max_retries=None)
    try:
        done = finished(jobs, job_id)
        return done if done is not None else fn()
    except TransientError as e:
        if task.request.retries < 5:
            raise task.retry(exc=e, countdown=10, max_retries=5)
        jobs.fail(job_id, f"{type(e).__name__}: {e} (after 5 retries)")
        raise
    except Exception as e:
        log.exception("%s failed", lock_name)
        jobs.fail(job_id, f"{type(e).__name__}: {e}")
        if isinstance(e, PERMANENT):
            return {"error": str(e)}
        raise
    finally:
        lock.release()


@app.task(name="signq.model.train", bind=True)
def train(self, job_id: str) -> dict:
    settings, storage, jobs = context()

    def work():
        from worker import training

        jobs.set_state(job_id, "running")
        raw = jobs.spec(job_id)
        then = raw.pop("then", [])
        spec = training.TrainSpec.from_json(raw)
        wd = workdir(storage, "train", job_id)
        result = training.run_training(storage, spec, wd, report=reporter(jobs, job_id), job_id=job_id)
        for follow in then:                    # before "done", so a redelivery re-submits, never skips
            start_predict(settings, storage, jobs, follow, result["model"])
        jobs.set_state(job_id, "done", result=result)
        shutil.rmtree(wd, ignore_errors=True)
        return result

    return run_locked(self, f"train:{job_id}", work, job_id)


def start_predict(settings, storage, jobs: JobStore, follow: dict, model_ref: str):
    """``signq train ... --then predict SOURCE...``: predict with the model just trained (submitted once)."""
    from producer.submit import for_model, predict_submission, submit
    from worker import modelstore

    if int(jobs.r.hget(f"signq:job:{follow['job_id']}", "chunks_total") or -1) >= 0:
        return                                  # fully submitted by an earlier delivery of this training
    # (a partial earlier submission is redone with the same job id: chunks are idempotent by index)
    _, meta = modelstore.resolve(storage, model_ref)
    submit(app, jobs, storage, for_model(settings, meta), predict_submission(meta, follow["sources"]),
           job_id=follow["job_id"])


@app.task(name="signq.model.evaluate", bind=True)
def evaluate(self, job_id: str) -> dict:
    settings, storage, jobs = context()

    def work():
        from worker import evaluation

        jobs.set_state(job_id, "running")
        spec = jobs.spec(job_id)
        result = evaluation.evaluate_version(storage, spec["model"], spec["dataset"], spec.get("batch_size", 512))
        jobs.set_state(job_id, "done", result=result)
        return result

    return run_locked(self, f"evaluate:{job_id}", work, job_id)


@app.task(name="signq.model.tune", bind=True)
def tune(self, job_id: str) -> dict:
    settings, storage, jobs = context()

    def work():
        from worker import tuning

        spec = dict(jobs.spec(job_id))
        in_process = spec.pop("in_process", False)
        tspec = tuning.TuneSpec.from_json(spec)
        jobs.set_state(job_id, "running")
        if in_process:
            best = tuning.run_keras_tuner(storage, job_id, tspec, workdir(storage, "tune", job_id))
            result = {"location": tuning.tune_dir(storage, job_id), "best": best}
            jobs.set_state(job_id, "done", result=result)
            return result
        trials = tuning.start(storage, job_id, tspec)
        total = sum(n for n, _ in tuning.plan(tspec))
        jobs.update(job_id, progress={"round": 0, "trials_done": 0, "trials_total": total})
        if jobs.r.set(f"signq:tune:{job_id}:round:0:enqueued", 1, nx=True, ex=30 * 24 * 3600):
            enqueue_trials(job_id, trials)
        return {"location": tuning.tune_dir(storage, job_id), "trials": len(trials)}

    return run_locked(self, f"tune:{job_id}", work, job_id)


def enqueue_trials(job_id: str, trials: list[dict]):
    for t in trials:
        app.send_task("signq.model.tune_trial", args=[job_id, t["trial_id"]])


@app.task(name="signq.model.tune_trial", bind=True)
def tune_trial(self, job_id: str, trial_id: str) -> dict:
    settings, storage, jobs = context()

    def work():
        from worker import tuning

        wd = workdir(storage, "tune", job_id)
        try:
            result = tuning.run_trial(storage, job_id, trial_id, wd)
        except PERMANENT as e:            # a bad point of the space must not stall the whole round
            result = {**tuning.trial(storage, job_id, trial_id), "val_accuracy": 0.0, "val_loss": None,
                      "error": f"{type(e).__name__}: {e}"}
            storage.write_json(f"{tuning.tune_dir(storage, job_id)}/results/{trial_id}.json", result)
        after_trial(storage, jobs, job_id, result["round"])
        return result

    return run_locked(self, f"tune:{job_id}:{trial_id}", work, job_id)


def after_trial(storage, jobs: JobStore, job_id: str, round_: int):
    """Record progress; the one task that claims a finished round advances the search or finishes the job."""
    from worker import tuning

    spec = tuning.load_spec(storage, job_id)
    results = tuning.results(storage, job_id)
    best = max((r["val_accuracy"] for r in results), default=None)
    jobs.update(job_id, progress={"round": round_, "trials_done": len(results),
                                  "trials_total": sum(n for n, _ in tuning.plan(spec)), "best_val_accuracy": best})
    if not tuning.round_done(storage, job_id, round_):
        return
    if not jobs.r.set(f"signq:tune:{job_id}:round:{round_}:advance", 1, nx=True, ex=30 * 24 * 3600):
        return
    trials = tuning.advance(storage, job_id, round_)
    if trials:
        enqueue_trials(job_id, trials)
        return
    best = tuning.write_best(storage, job_id)
    jobs.set_state(job_id, "done", result={"location": tuning.tune_dir(storage, job_id), "best": best})

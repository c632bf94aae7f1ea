"""The Celery app: broker, serialization, acknowledgement and routing policy in one place.

Reliability: ``task_acks_late`` + ``task_reject_on_worker_lost`` (a SIGKILLed child's message is requeued),
prefetch 1 (chunks and trainings are long), a visibility timeout longer than any task, JSON only.
Queues: ``ingest`` (fetch/decode/clean/write, finalize: no TensorFlow) and ``model`` (train, evaluate,
tune trials, predict chunks: TensorFlow is imported inside the tasks, after the worker forks).
"""
from __future__ import annotations

import importlib.util

from celery import Celery
from kombu import Queue

from signq.settings import Settings

DEFAULT_WORKER_BROKER = "redis://127.0.0.1:6379/0"
INGEST_QUEUE, MODEL_QUEUE = "ingest", "model"
TASK_MODULES = ("worker.tasks", "worker.model_tasks", "worker.predict_tasks")


def make_app(settings: Settings) -> Celery:
    broker = settings.broker_url or DEFAULT_WORKER_BROKER
    modules = [m for m in TASK_MODULES if importlib.util.find_spec(m) is not None]
    app = Celery("signq", broker=broker, backend=broker, include=modules)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1, worker_max_tasks_per_child=None,
        # Messages of a worker killed outright come back after the visibility timeout; kombu (>= 5.6) sweeps
        # for them every unacked_restore_interval s (its default, 10 s x a throttle of 10, is ~100 s).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout,
                                  "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 5)),
                                  "unacked_restore_throttle": 1},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600, task_ignore_result=False, task_track_started=True,
        task_default_queue=INGEST_QUEUE,
        task_queues=[Queue(INGEST_QUEUE), Queue(MODEL_QUEUE)],
        task_routes={"signq.model.*": {"queue": MODEL_QUEUE}, "signq.ingest.*": {"queue": INGEST_QUEUE}},
        worker_hijack_root_logger=False, worker_redirect_stdouts=False,
    )
    if settings.schedule:
        from worker.schedule import beat_schedule

        app.conf.beat_schedule = beat_schedule(settings.schedule)
    app.signq_settings = settings
    return app


settings = Settings.from_env()
app = make_app(settings)

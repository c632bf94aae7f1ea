"""signq's Celery workers: ``celery -A worker worker -Q ingest,model`` (or ``signq worker``)."""
from worker.app import app

celery = app
__all__ = ["app", "celery"]

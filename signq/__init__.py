"""signq: manifests of images -> clean datasets -> trained image classifiers, on Celery and Redis.

The public Python API is small:

    from signq import load_dataset
    images, labels, keys = load_dataset("sign-mnist")       # latest version, default storage
"""
from signq.dataset import load_dataset

__all__ = ["load_dataset"]
__version__ = "0.1.0"

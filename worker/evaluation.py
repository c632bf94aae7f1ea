"""Evaluation: accuracy, loss, per-class precision/recall/F1 and the confusion matrix, from batches of predictions.

The arithmetic is plain numpy (``metrics_from_confusion``) so it is tested without a model; ``evaluate_batches``
streams (images, labels) batches through a model and accumulates the confusion matrix and the log loss, so a
test set never has to fit in memory. ``write_report`` puts metrics.json, confusion.json, confusion.png and
table.txt in a directory (next to a model version).
"""
from __future__ import annotations

import io
import logging

import numpy as np

log = logging.getLogger(__name__)
EPS = 1e-7


def confusion_update(cm: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Add a batch to the confusion matrix (rows: true class, columns: predicted class), in place."""
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, class_names, loss: float | None = None) -> dict:
    """Accuracy, macro averages and per-class precision/recall/F1/support from a confusion matrix."""
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(axis=0).astype(float), cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    total = int(cm.sum())
    per_class = {
        name: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
               "f1": round(float(f1[i]), 6), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "count": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "loss": None if loss is None else float(loss),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion": cm.tolist(),
    }


def evaluate_batches(model, batches, class_names) -> dict:
    """Stream ``(images, labels)`` batches through ``model``; returns ``metrics_from_confusion`` with log loss."""
    n = len(class_names)
    cm = np.zeros((n, n), np.int64)
    loss_sum, count = 0.0, 0
    for images, labels in batches:
        probs = np.asarray(model.predict_on_batch(np.asarray(images, np.float32)))
        labels = np.asarray(labels, np.int64)
        loss_sum += float(-np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0)).sum())
        count += len(labels)
        confusion_update(cm, labels, probs.argmax(axis=1))
    return metrics_from_confusion(cm, class_names, loss_sum / count if count else None)


def format_table(metrics: dict) -> str:
    """A fixed-width text table: one row per class, then macro averages and accuracy."""
    lines = [f"{'class':<8}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<8}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>9d}")
    lines.append(f"{'macro':<8}{metrics['macro_precision']:>10.4f}{metrics['macro_recall']:>10.4f}"
                 f"{metrics['macro_f1']:>10.4f}{metrics['count']:>9d}")
    loss = "n/a" if metrics.get("loss") is None else f"{metrics['loss']:.4f}"
    lines.append(f"accuracy {metrics['accuracy']:.4f}   loss {loss}   n={metrics['count']}")
    return "\n".join(lines)


def confusion_png(cm, class_names) -> bytes:
    """The confusion matrix as a PNG (counts in cells, true class on rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(0.35 * len(class_names) + 3, 0.35 * len(class_names) + 2.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    return _png(fig)


def curves_png(history: dict) -> bytes:
    """Loss and accuracy per epoch (train and validation) from a history dict of lists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key in (metric, f"val_{metric}"):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(storage, directory: str, metrics: dict, extra: dict | None = None):
    """metrics.json (with ``extra``), confusion.json, confusion.png and table.txt under ``directory``."""
    summary = {k: v for k, v in metrics.items() if k != "confusion"}
    storage.write_json(f"{directory}/metrics.json", {**summary, **(extra or {})})
    storage.write_json(f"{directory}/confusion.json",
                       {"class_names": metrics["class_names"], "matrix": metrics["confusion"]})
    storage.write_bytes(f"{directory}/confusion.png", confusion_png(metrics["confusion"], metrics["class_names"]))
    storage.write_bytes(f"{directory}/table.txt", (format_table(metrics) + "\n").encode())
    log.info("evaluation written to %s: accuracy=%.4f n=%d", directory, metrics["accuracy"], metrics["count"])


def evaluate_version(storage, model_ref: str, dataset_ref: str, batch_size: int = 512) -> dict:
    """Evaluate a stored model on a whole finished dataset; write the report under the model version's
    ``evaluations/<dataset>-<version>/`` and return the metrics with ``location`` and ``table``.

    Dataset labels are mapped onto the model's classes by name; a class the model does not know is an error.
    """
    from signq import dataset as ds_format
    from worker import modelstore

    directory, meta = modelstore.resolve(storage, model_ref)
    model_ref = f"{meta['name']}:{meta['version']}"          # resolved once: LATEST may move meanwhile
    model, meta = modelstore.load_model(storage, model_ref)
    _, manifest = ds_format.resolve(storage, dataset_ref)
    mapping = label_mapping(manifest["class_names"], meta["class_names"], dataset_ref, model_ref)
    keep = held_out_rows(storage, directory, f"{manifest['name']}:{manifest['version']}")
    batches = ((shard["images"][m][a:a + batch_size], mapping[shard["labels"][m][a:a + batch_size]])
               for shard, m in zip(ds_format.iter_shards(storage, dataset_ref), keep or _all_rows())
               for a in range(0, int(np.count_nonzero(m) if keep else len(shard["labels"])), batch_size))
    metrics = evaluate_batches(model, batches, meta["class_names"])
    out = f"{directory}/evaluations/{manifest['name']}-{manifest['version']}"
    extra = {"model": model_ref, "dataset": f"{manifest['name']}:{manifest['version']}",
             "dataset_content_sha256": manifest.get("content_sha256"),
             "rows": "the model's held-out test split (the dataset is in its lineage)" if keep else "all"}
    write_report(storage, out, metrics, extra)
    return {**extra, **{k: v for k, v in metrics.items() if k != "confusion"}, "location": out,
            "table": format_table(metrics)}


def _all_rows():
    while True:
        yield slice(None)


def held_out_rows(storage, model_dir: str, dataset_ref: str) -> list | None:
    """When the model trained on ``dataset_ref``, a boolean mask per shard of its test-split rows (the split
    is recomputed from the lineage: same datasets, seed and fractions); otherwise None (use every row)."""
    from worker import training

    path = f"{model_dir}/lineage.json"
    lineage = storage.read_json(path) if storage.exists(path) else {}
    split = lineage.get("split") or {}
    refs = split.get("datasets") or []
    if dataset_ref not in refs:
        return None
    spec = training.TrainSpec.from_json({"datasets": refs, "seed": split["seed"],
                                         "val_fraction": split["val_fraction"], "test_fraction": split["test_fraction"]})
    idx = training.assign_split(training.index_shards(storage, refs), spec)
    which = refs.index(dataset_ref)
    return [codes == training.TEST for d, codes in zip(idx.dataset_of, idx.codes) if d == which]


def label_mapping(dataset_classes, model_classes, dataset_ref="dataset", model_ref="model") -> np.ndarray:
    """Dataset class index -> model class index, by name."""
    index = {name: i for i, name in enumerate(model_classes)}
    missing = [c for c in dataset_classes if c not in index]
    if missing:
        raise ValueError(f"Dataset {dataset_ref!r} has classes the model {model_ref!r} does not know: {missing}. "
                         f"Model classes: {list(model_classes)}")
    return np.array([index[c] for c in dataset_classes], np.int64)

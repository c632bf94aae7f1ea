import numpy as np
import pytest

import keras
from signq.storage import Storage
from worker import evaluation


def test_metrics_from_confusion_by_hand():
    cm = np.array([[3, 1, 0], [0, 2, 0], [1, 0, 0]])
    m = evaluation.metrics_from_confusion(cm, ["A", "B", "C"], loss=0.5)
    assert m["accuracy"] == pytest.approx(5 / 7) and m["count"] == 7 and m["loss"] == 0.5
    assert m["per_class"]["A"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    assert m["per_class"]["B"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["per_class"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_confusion_update_accumulates():
    cm = np.zeros((2, 2), np.int64)
    evaluation.confusion_update(cm, [0, 0, 1], [0, 1, 1])
    evaluation.confusion_update(cm, [0], [0])
    assert cm.tolist() == [[2, 1], [0, 1]]


def test_evaluate_batches_matches_keras_evaluate():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)).astype("float32"), rng.integers(0, 3, 50)
    m = evaluation.evaluate_batches(model, [(x[:20], y[:20]), (x[20:], y[20:])], ["a", "b", "c"])
    loss, acc = model.evaluate(x, y, verbose=0)
    assert m["accuracy"] == pytest.approx(acc, abs=1e-6) and m["loss"] == pytest.approx(loss, rel=1e-4)


def test_write_report_and_table(tmp_path):
    st = Storage(str(tmp_path))
    m = evaluation.metrics_from_confusion(np.array([[5, 0], [1, 4]]), ["A", "B"], loss=0.1)
    evaluation.write_report(st, st.path("out"), m, {"dataset": "d:1"})
    for name in ("metrics.json", "confusion.json", "confusion.png", "table.txt"):
        assert (tmp_path / "out" / name).exists()
    assert st.read_json(st.path("out", "metrics.json"))["dataset"] == "d:1"
    table = evaluation.format_table(m)
    assert "accuracy 0.9000" in table and table.splitlines()[1].startswith("A ")

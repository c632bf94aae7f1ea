import numpy as np
import pytest

from model_fixtures import read_rows, tiny_hparams, write_dataset
from signq.storage import Storage, StorageKeyError
from worker import modelstore, predictor, training
from worker.training import TrainSpec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    st = Storage(str(root / "s"))
    images, labels = read_rows(360)
    write_dataset(st, "mini", images, labels)
    spec = TrainSpec.from_json({"datasets": ["mini"], "name": "tiny", "epochs": 1, "batch_size": 32,
                                "hparams": tiny_hparams(augment=True)})
    result = training.run_training(st, spec, str(root / "work"), job_id="abc")
    return st, result, images[:40]


@pytest.mark.parametrize("form", modelstore.FORMS)
def test_every_form_loads_back_with_identical_predictions(trained, form):
    st, result, images = trained
    reference, _ = modelstore.load_model(st, result["model"], form="keras")
    model, meta = modelstore.load_model(st, result["model"], form=form)
    want = np.asarray(reference.predict(images.astype("float32"), verbose=0))
    got = np.asarray(model.predict(images.astype("float32"), verbose=0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert meta["class_names"][0] == "A" and len(meta["class_names"]) == 24


def test_resolve_latest_and_named_version(trained):
    st, result, _ = trained
    name, version = result["model"].split(":")
    d1, m1 = modelstore.resolve(st, name)
    d2, m2 = modelstore.resolve(st, result["model"])
    assert d1 == d2 == result["location"] and m1["version"] == version


def test_list_and_show(trained):
    st, result, _ = trained
    rows = modelstore.list_models(st)
    assert [r["name"] for r in rows] == ["tiny"] and rows[0]["latest"]
    info = modelstore.show(st, "tiny")
    assert info["lineage"]["split"]["seed"] == 0 and info["lineage"]["datasets"][0]["content_sha256"]
    assert 0 <= info["metrics"]["test"]["accuracy"] <= 1 and info["hparams"]["hparams"]["filters"] == 4


def test_unknown_model_and_bad_refs(trained):
    st, _, _ = trained
    with pytest.raises(modelstore.ModelNotFound, match="No model named 'nope'"):
        modelstore.resolve(st, "nope")
    with pytest.raises(modelstore.ModelNotFound, match="tiny:v999"):
        modelstore.resolve(st, "tiny:v999")
    with pytest.raises(StorageKeyError):
        modelstore.resolve(st, "../etc")
    with pytest.raises(ValueError, match="Unknown model form"):
        modelstore.load_model(st, "tiny", form="onnx")


def test_predictor_rows_and_process_cache(trained):
    st, result, images = trained
    predictor.clear_cache()
    loaded = predictor.get_model(st, "tiny")
    assert predictor.get_model(st, result["model"]) is loaded
    rows = predictor.predict_rows(loaded, images[:5], keys=[f"train.csv:{i}" for i in range(5)])
    assert rows[0]["key"] == "train.csv:0" and rows[0]["source"] == "train.csv"
    assert rows[0]["predicted"] == rows[0]["top3"][0][0] and len(rows[0]["top3"]) == 3
    assert rows[0]["confidence"] >= rows[0]["top3"][1][1]
    with pytest.raises(ValueError, match=r"takes images shaped \(n, 28, 28, 1\)"):
        predictor.predict_arrays(loaded, np.zeros((2, 32, 32, 1), np.uint8))


def test_rows_from_proba_is_pure():
    rows = predictor.rows_from_proba(np.array([[0.1, 0.7, 0.2]]), ["A", "B", "C"])
    assert rows == [{"predicted": "B", "confidence": 0.7, "top3": [["B", 0.7], ["C", 0.2], ["A", 0.1]]}]

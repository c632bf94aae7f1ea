import numpy as np
import pytest

import keras
from model_fixtures import read_rows, tiny_hparams, write_dataset
from signq.storage import Storage
from worker import modelstore, training, transfer
from worker.training import TrainSpec


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    st = Storage(str(root / "s"))
    images, labels = read_rows(600)
    write_dataset(st, "letters", images[:300], labels[:300])
    keep = labels[300:] < 3                                   # a new, smaller class set: A, B, C
    write_dataset(st, "abc", images[300:][keep], labels[300:][keep], class_names=("A", "B", "C"))
    spec = TrainSpec.from_json({"datasets": ["letters"], "name": "source", "epochs": 1, "batch_size": 32,
                                "hparams": tiny_hparams()})
    training.run_training(st, spec, str(root / "work-source"))
    return st, root, images[:16]


def assert_forms_agree(st, ref, images, trust_external=False):
    want, _ = modelstore.load_model(st, ref, form="keras", trust_external=trust_external)
    want = np.asarray(want.predict(images.astype("float32"), verbose=0))
    for form in ("weights", "savedmodel"):
        model, _ = modelstore.load_model(st, ref, form=form, trust_external=trust_external)
        np.testing.assert_allclose(np.asarray(model.predict(images.astype("float32"), verbose=0)), want,
                                   rtol=1e-5, atol=1e-6)
    return want


def train_transfer(st, root, name, tspec, epochs=1):
    spec = TrainSpec.from_json({"datasets": ["abc"], "name": name, "epochs": epochs, "batch_size": 16,
                                "hparams": {"dense_units": 16}, "transfer": tspec})
    return training.run_training(st, spec, str(root / f"work-{name}"))


def test_from_signq_model_to_new_class_set_with_fine_tuning(store):
    st, root, images = store
    source, _ = modelstore.load_model(st, "source")
    result = train_transfer(st, root, "abc-from-model",
                            {"from": "model", "model": "source", "fine_tune_layers": 2, "fine_tune_epochs": 1})
    probs = assert_forms_agree(st, result["model"], images)
    assert probs.shape == (16, 3)
    model, meta = modelstore.load_model(st, result["model"])
    assert meta["class_names"] == ["A", "B", "C"]
    base = model.get_layer("base")
    # the conv base below the fine-tuned top layers is unchanged from the source model
    first_conv = source.get_layer("block1_conv0").get_weights()[0]
    np.testing.assert_array_equal(base.get_layer("block1_conv0").get_weights()[0], first_conv)
    assert len(st.read_json(result["location"] + "/history.json")["loss"]) == 2      # head + fine-tune


def test_frozen_base_stays_frozen_without_fine_tuning(store):
    st, _, _ = store
    source, _ = modelstore.load_model(st, "source")
    model, plan = transfer.build_from_spec(st, {"from": "model", "model": "source"}, (28, 28, 1), 3, {})
    assert plan is None and not model.get_layer("base").trainable
    assert len(model.trainable_weights) == 4                 # the new head only


def test_from_keras_application_with_local_weights(store, tmp_path):
    st, root, images = store
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    path = str(tmp_path / "mobilenet_v2_tiny.weights.h5")
    backbone.save_weights(path)
    tspec = {"from": "keras_app", "app": "MobileNetV2", "weights": path, "size": 32, "app_kwargs": {"alpha": 0.35},
             "fine_tune_layers": 3, "fine_tune_epochs": 1}
    model, _ = transfer.build_from_spec(st, tspec, (28, 28, 1), 3, {"dense_units": 8})
    loaded = [w for w in model.get_layer("base").weights if "depthwise" in w.path][0]
    assert np.array_equal(np.asarray(loaded), backbone.get_layer(loaded.path.split("/")[-2]).get_weights()[0])
    result = train_transfer(st, root, "abc-from-mobilenet", tspec)
    assert assert_forms_agree(st, result["model"], images).shape == (16, 3)


def test_keras_application_weights_must_be_a_local_file(store):
    st, _, _ = store
    with pytest.raises(ValueError, match="must be a local file.*Received: weights='imagenet'"):
        transfer.build_from_spec(st, {"from": "keras_app", "weights": "imagenet"}, (28, 28, 1), 3, {})
    with pytest.raises(ValueError, match="Unknown transfer source"):
        transfer.build_from_spec(st, {"from": "hub"}, (28, 28, 1), 3, {})


def test_from_savedmodel_feature_extractor(store, tmp_path):
    st, root, images = store
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    extractor = keras.Model(inputs, keras.layers.MaxPooling2D(2)(x))       # returns a feature map
    extractor.export(str(tmp_path / "hub"), verbose=False)
    result = train_transfer(st, root, "abc-from-savedmodel", {"from": "savedmodel", "path": str(tmp_path / "hub")})
    want = assert_forms_agree(st, result["model"], images, trust_external=True)
    assert want.shape == (16, 3)
    model, meta = modelstore.load_model(st, result["model"])            # safe mode: the self-contained export
    assert meta["default_form"] == "savedmodel"
    np.testing.assert_allclose(model.predict(images.astype("float32"), verbose=0), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="wraps an external SavedModel"):
        modelstore.load_model(st, result["model"], form="keras")
    trusted, _ = modelstore.load_model(st, result["model"], form="keras", trust_external=True)
    assert not trusted.get_layer("base").trainable

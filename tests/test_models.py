import numpy as np
import pytest

import keras
from worker import models


@pytest.mark.parametrize("arch", sorted(models.BUILDERS))
def test_each_architecture_builds_and_predicts_probabilities(arch):
    keras.utils.set_random_seed(0)
    hp = {"arch": arch, "filters": 4, "dense_units": 8}
    model = models.compile_model(models.make_model((28, 28, 1), 24, hp), hp)
    probs = model.predict(np.random.default_rng(0).integers(0, 255, (5, 28, 28, 1)).astype("float32"), verbose=0)
    assert probs.shape == (5, 24)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.layers[1].name == "rescale"


def test_augmentation_is_inside_the_model_and_never_flips():
    model = models.make_model((28, 28, 1), 24, {"augment": True, "filters": 4})
    aug = model.get_layer("augment")
    kinds = [type(lay).__name__ for lay in aug.layers]
    assert kinds == ["RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"]
    assert "RandomFlip" not in kinds
    no_aug = models.make_model((28, 28, 1), 24, {"augment": False, "filters": 4})
    assert "augment" not in [lay.name for lay in no_aug.layers]


def test_augmentation_is_identity_at_inference():
    keras.utils.set_random_seed(1)
    model = models.make_model((28, 28, 1), 3, {"augment": True, "filters": 4, "dense_units": 8})
    x = np.random.default_rng(1).integers(0, 255, (4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))


def test_builders_are_pure_and_seeded():
    keras.utils.set_random_seed(3)
    a = models.make_model((28, 28, 1), 24, {"filters": 4}).get_weights()
    keras.utils.set_random_seed(3)
    b = models.make_model((28, 28, 1), 24, {"filters": 4}).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_unknown_architecture_says_what_it_received():
    with pytest.raises(ValueError, match=r"Choose one of .*Received: arch='resnet9000'"):
        models.make_model((28, 28, 1), 24, {"arch": "resnet9000"})

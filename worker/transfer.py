"""Transfer learning: a frozen base (named ``base`` in the model) + a new classification head.

Sources, selected by ``spec["from"]``:

    model       a signq model version (``"model": "NAME[:VERSION]"``): its layers up to the last
                Flatten/GlobalPooling become the base, e.g. to learn a new class set
    keras_app   a Keras Applications backbone (``"app": "MobileNetV2"``) with weights from a LOCAL file
                (``"weights": "/path/x.h5"``; never downloaded); gray 28x28 is resized to ``"size"`` and
                made 3-channel inside the model, then scaled to [-1, 1]
    savedmodel  a TF-Hub-style SavedModel directory (``"path"``, ``"endpoint"`` default "serve") used as a frozen
                feature extractor through ``keras.layers.TFSMLayer``

Optional fine-tuning (``"fine_tune_layers": N > 0``): after the head is trained, the top N layers of the base
(batch normalization excepted) are unfrozen and trained ``"fine_tune_epochs"`` more at ``"fine_tune_lr"``.
Only built-in layers are used, so transferred models reload with ``safe_mode=True``.
"""
from __future__ import annotations

import logging
import os

import keras
from keras import layers

log = logging.getLogger(__name__)
SOURCES = ("model", "keras_app", "savedmodel")
FEATURE_LAYERS = (layers.Flatten, layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D)


def build_from_spec(storage, spec: dict, image_shape, num_classes: int, hparams: dict):
    """(compiled model, fine_tune or None) for a ``transfer`` spec; see the module docstring."""
    source = spec.get("from")
    if source not in SOURCES:
        raise ValueError(f"Unknown transfer source. Use 'from': one of {SOURCES}. Received: {source!r}")
    if source == "model":
        from worker import modelstore

        trained, _ = modelstore.load_model(storage, spec["model"])
        base = base_from_model(trained)
    elif source == "keras_app":
        base = base_from_application(spec, image_shape)
    else:
        base = base_from_savedmodel(spec["path"], image_shape, spec.get("endpoint", "serve"))
    model = with_new_head(base, image_shape, num_classes, hparams)
    compile_for(model, hparams.get("learning_rate", 1e-3))
    return model, fine_tune_plan(spec)


def fine_tune_plan(spec: dict) -> dict | None:
    n = int(spec.get("fine_tune_layers", 0) or 0)
    if n <= 0:
        return None
    return {"layers": n, "epochs": int(spec.get("fine_tune_epochs", 3)), "lr": float(spec.get("fine_tune_lr", 1e-5))}


def base_from_model(model: keras.Model) -> keras.Model:
    """The trained model up to (and including) its last Flatten/GlobalPooling layer, frozen."""
    feature = next((lay for lay in reversed(model.layers) if isinstance(lay, FEATURE_LAYERS)), None)
    if feature is None:
        raise ValueError(f"Model {model.name!r} has no Flatten or GlobalPooling layer to cut its conv base at. "
                         f"Layers: {[lay.name for lay in model.layers]}")
    base = keras.Model(model.inputs, feature.output, name="base")
    base.trainable = False
    return base


def base_from_application(spec: dict, image_shape) -> keras.Model:
    """A Keras Applications backbone with local weights; the model's input is the raw gray image."""
    weights = spec.get("weights")
    if weights is not None and not os.path.isfile(weights):
        raise ValueError("Backbone weights must be a local file (no downloads). "
                         f"Received: weights={weights!r}")
    app = getattr(keras.applications, spec.get("app", "MobileNetV2"), None)
    if app is None:
        raise ValueError(f"No keras.applications.{spec.get('app')}. Received: app={spec.get('app')!r}")
    size = int(spec.get("size", 96))
    backbone = app(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg",
                   **spec.get("app_kwargs", {}))
    if weights:
        backbone.load_weights(weights)
    backbone.trainable = False
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    x = layers.Resizing(size, size, name="resize")(inputs)
    if image_shape[-1] == 1:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x)
    base = keras.Model(inputs, backbone(x, training=False), name="base")
    base.trainable = False
    return base


def base_from_savedmodel(path: str, image_shape, endpoint: str = "serve") -> keras.Model:
    """A SavedModel's endpoint as a frozen feature extractor (pooled to a vector when it returns a map)."""
    if not os.path.isdir(path):
        raise ValueError(f"A SavedModel feature extractor must be a local directory. Received: path={path!r}")
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    x = keras.layers.TFSMLayer(path, call_endpoint=endpoint, trainable=False, name="savedmodel")(inputs)
    if isinstance(x, dict):
        x = next(iter(x.values()))
    x = layers.GlobalAveragePooling2D()(x) if len(x.shape) == 4 else layers.Flatten()(x)
    base = keras.Model(inputs, x, name="base")
    base.trainable = False
    return base


def with_new_head(base: keras.Model, image_shape, num_classes: int, hparams: dict) -> keras.Model:
    """base (inference mode) -> Dense(dense_units) -> Dropout -> softmax(num_classes)."""
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    x = base(inputs, training=False)
    x = layers.Dense(int(hparams.get("dense_units", 128)), activation="relu", name="head_dense")(x)
    x = layers.Dropout(float(hparams.get("dropout", 0.3)), name="head_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="signq_transfer")


def compile_for(model: keras.Model, lr: float):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def unfreeze_top(model: keras.Model, plan: dict) -> keras.Model:
    """Unfreeze the top ``plan["layers"]`` weight layers of the base (BatchNorm stays frozen); recompile at low LR."""
    base = model.get_layer("base")
    base.trainable = True
    flat = _leaf_layers(base)
    with_weights = [lay for lay in flat if lay.weights]
    for lay in flat:
        lay.trainable = False
    for lay in with_weights[-plan["layers"]:]:
        if not isinstance(lay, layers.BatchNormalization) and not isinstance(lay, keras.layers.TFSMLayer):
            lay.trainable = True
    compile_for(model, plan["lr"])
    log.info("fine-tuning %d layers at lr=%g: %d trainable weights", plan["layers"], plan["lr"],
             len(model.trainable_weights))
    return model


def _leaf_layers(model) -> list:
    out = []
    for lay in model.layers:
        out.extend(_leaf_layers(lay) if isinstance(lay, keras.Model) else [lay])
    return out

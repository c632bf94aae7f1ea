"""Model builders: small pure functions ``make_model(input_shape, num_classes, hparams) -> keras.Model``.

Architectures, selected by ``hparams["arch"]``:

    dense        the course's baseline: Flatten -> Dense(512) -> softmax
    cnn          the course's CNN: 2 x (Conv 64 -> MaxPool) -> Dense(128) -> Dropout -> softmax
    regularized  the course CNN with L2 weight decay, batch normalization and dropout
    default      the best we have: 3 conv blocks (Conv-BN-ReLU x2, MaxPool, Dropout), Dense head with BN

Every model takes raw uint8-valued pixels: ``Rescaling(1/255)`` is the first layer, and optional augmentation
(small rotation, zoom, translation, contrast; never flips, which change a sign's meaning) sits inside the model,
active only in training. Only built-in Keras layers are used, so models reload with ``safe_mode=True``.
This module imports Keras: only model-queue processes import it.
"""
from __future__ import annotations

import keras
from keras import layers

DEFAULTS = {
    "arch": "default",
    "filters": 16,             # first conv block; later blocks double it (32 is ~4x slower on CPU)
    "dense_units": 256,
    "dropout": 0.4,
    "conv_dropout": 0.1,
    "l2": 1e-4,
    "learning_rate": 1e-3,
    "augment": None,           # None: on for "default", off for the course's architectures (--augment turns it on)
    "rotation": 0.04,          # fraction of a full turn (0.04 ~ 15 degrees)
    "zoom": 0.1,
    "translation": 0.1,
    "contrast": 0.1,
}


def resolve_hparams(hparams: dict | None) -> dict:
    """DEFAULTS overlaid with ``hparams``; rejects unknown architectures."""
    hp = {**DEFAULTS, **(hparams or {})}
    if hp["arch"] not in BUILDERS:
        raise ValueError(f"Unknown model architecture. Choose one of {sorted(BUILDERS)}. Received: arch={hp['arch']!r}")
    if hp["augment"] is None:
        hp["augment"] = hp["arch"] == "default"
    return hp


def make_model(input_shape, num_classes: int, hparams: dict | None = None) -> keras.Model:
    """An uncompiled model for ``input_shape`` (H, W, C) images with ``num_classes`` softmax outputs."""
    hp = resolve_hparams(hparams)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if hp["augment"]:
        x = augmentation(hp)(x)
    x = BUILDERS[hp["arch"]](x, hp)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"signq_{hp['arch']}")


def compile_model(model: keras.Model, hparams: dict | None = None) -> keras.Model:
    hp = resolve_hparams(hparams)
    model.compile(optimizer=keras.optimizers.Adam(hp["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def augmentation(hp: dict) -> keras.Sequential:
    """Realistic, label-preserving jitter: a hand is slightly turned, nearer, off-centre or lit differently."""
    return keras.Sequential([
        layers.RandomRotation(hp["rotation"], fill_mode="nearest"),
        layers.RandomZoom(hp["zoom"], fill_mode="nearest"),
        layers.RandomTranslation(hp["translation"], hp["translation"], fill_mode="nearest"),
        layers.RandomContrast(hp["contrast"]),
    ], name="augment")


def _dense(x, hp):
    x = layers.Flatten()(x)
    return layers.Dense(512, activation="relu")(x)


def _cnn(x, hp):
    for _ in range(2):
        x = layers.Conv2D(64, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return layers.Dropout(0.2)(x)


def _regularized(x, hp):
    reg = keras.regularizers.L2(hp["l2"])
    for i in range(2):
        x = layers.Conv2D(hp["filters"] * 2 ** i, 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(hp["conv_dropout"])(x)
    x = layers.Flatten()(x)
    x = layers.Dense(hp["dense_units"], activation="relu", kernel_regularizer=reg)(x)
    return layers.Dropout(hp["dropout"])(x)


def _conv_block(x, filters, hp, name):
    reg = keras.regularizers.L2(hp["l2"]) if hp["l2"] else None
    for j in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv{j}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{j}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{j}")(x)
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return layers.Dropout(hp["conv_dropout"], name=f"{name}_drop")(x)


def _default(x, hp):
    for i in range(3):                       # 28 -> 14 -> 7 -> 3
        x = _conv_block(x, hp["filters"] * 2 ** i, hp, name=f"block{i + 1}")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hp["dense_units"], use_bias=False, name="head_dense")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Activation("relu", name="head_relu")(x)
    return layers.Dropout(hp["dropout"], name="head_drop")(x)


BUILDERS = {"dense": _dense, "cnn": _cnn, "regularized": _regularized, "default": _default}

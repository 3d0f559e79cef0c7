"""Entry points of examples/keras.yaml: a Keras 3 CNN trained on PyTorch, and a PyTorch student.

``digits()`` stands in for your own Keras training script: on first use it trains a small Keras CNN
with ``model.fit`` on the training split, early-stopped on the validation split (Keras on its
PyTorch backend, no TensorFlow, nothing downloaded), and saves it as ``keras_digits.keras`` beside
this file; the recipe then loads that file as ``task.model``. Training shows leanml's progress bar
(``leanml.pipeline.keras_progress``, a Keras callback). The images stay channels-last (samples
shaped 8x8x1), Keras' layout, and so does the exported ONNX model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

MODEL_FILE = Path(__file__).with_name("keras_digits.keras")
# The teacher's training: enough epochs for this CNN to pass 98 % on digits' test split, stopped
# early when validation accuracy has not improved for PATIENCE epochs.
EPOCHS = 40
PATIENCE = 8
LEARNING_RATE = 3e-3
BATCH_SIZE = 64


def digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``task.data``: :func:`digits_splits`; trains and saves the Keras model first when
    ``keras_digits.keras`` does not exist yet."""
    splits = digits_splits()
    if not MODEL_FILE.exists():
        train_keras_cnn(splits, MODEL_FILE)
    return splits


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits as channels-last images (N, 8, 8, 1) in [0, 1], split 65/15/20."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.1875, random_state=0, stratify=y_rest
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def train_keras_cnn(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, epochs: int = EPOCHS
) -> Path:
    """A small Keras CNN, trained with ``fit`` on Keras' PyTorch backend (early stopping on the
    validation split, its best weights kept) and saved as ``.keras``."""
    os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is first imported
    import keras

    from leanml.pipeline import keras_progress

    (x, y), (x_val, y_val) = splits["train"], splits["val"]
    print(f"keras_digits.py: training the Keras teacher on {len(x)} digits, up to {epochs} epochs")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10)(h)
    model = keras.Model(inputs, outputs, name="keras_digits")
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=PATIENCE, restore_best_weights=True
    )
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        validation_data=(x_val, y_val),
        callbacks=[stop, keras_progress("keras teacher")],
        verbose=0,
    )
    _, val_accuracy = model.evaluate(x_val, y_val, verbose=0)
    tmp = path.with_name(f".{path.name}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)  # a run stopped mid-save leaves no half-written model
    print(f"keras_digits.py: saved {path.name} (validation accuracy {val_accuracy:.4f})")
    return path


class ChannelsLastCNN(nn.Module):
    """A PyTorch student that takes the teacher's channels-last images."""

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, width: int = 16) -> None:
        super().__init__()
        channels = in_shape[-1]
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(2 * width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.permute(0, 3, 1, 2)).flatten(1))


def student(*, in_shape: tuple[int, ...], n_outputs: int, width: int = 16) -> nn.Module:
    """``distill.student.model: "keras_digits:student"``."""
    return ChannelsLastCNN(in_shape, n_outputs, width)

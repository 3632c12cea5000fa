"""Running a model over an image set: the one compiled forward per model, batching.

:func:`compiled_forward` is the one compiled inference function per model;
:func:`iterate_batches` streams a uint8 image set as float batches so memory does not
grow with the number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from .data.images import to_unit_float
from .runtime import compiled
from .sharding import sharded


def image_spec(model) -> tf.TensorSpec:
    """Input signature with a free batch dimension (one trace for every batch size)."""
    return tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)


def compiled_forward(model) -> Callable[[tf.Tensor], tf.Tensor]:
    """``f(x) -> logits`` compiled once; inference mode (batch-norm statistics frozen);
    run on per-replica shards of the batch under a multi-device strategy."""

    @compiled(input_signature=[image_spec(model)])
    def forward(x):
        return model(x, training=False)

    return sharded(forward)


def iterate_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start_index, float32 [0,1] batch, int64 labels)``."""
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        yield (
            start,
            to_unit_float(images[start:stop]),
            np.asarray(labels[start:stop], dtype=np.int64),
        )


def predict_logits(
    model, images: np.ndarray, batch_size: int = 32, forward: Callable | None = None
) -> np.ndarray:
    """Logits for a uint8 (or [0,1] float) image array, batched."""
    forward = forward or compiled_forward(model)
    out = []
    for start in range(0, len(images), batch_size):
        out.append(forward(tf.constant(to_unit_float(images[start : start + batch_size]))).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def first_correct(
    forward: Callable[[tf.Tensor], tf.Tensor],
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    batch_size: int = 32,
) -> list[int]:
    """Positions of the first ``n`` images whose top-1 prediction is right (fewer if
    there are not ``n``); stops predicting as soon as it has them."""
    found: list[int] = []
    for start, x, y in iterate_batches(images, labels, batch_size):
        pred = forward(tf.constant(x)).numpy().argmax(1)
        found += [start + int(i) for i in np.flatnonzero(pred == y)]
        if len(found) >= n:
            break
    return found[:n]

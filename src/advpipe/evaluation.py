"""Turning logits into accuracy: one place used by baseline, sweeps, defenses and transfer.

Also holds :func:`compiled_forward`, the one compiled inference function per model,
and :func:`iterate_batches`, which streams a uint8 image set as float batches so
memory does not grow with the number of images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from .data.images import to_unit_float


def image_spec(model) -> tf.TensorSpec:
    """Input signature with a free batch dimension (one trace for every batch size)."""
    return tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)


def compiled_forward(model) -> Callable[[tf.Tensor], tf.Tensor]:
    """``f(x) -> logits`` compiled once; inference mode (batch-norm statistics frozen)."""

    @tf.function(input_signature=[image_spec(model)])
    def forward(x):
        return model(x, training=False)

    return forward


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean per example: is the label among the ``k`` largest logits?"""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


@dataclass
class TopKCounter:
    """Running top-1 / top-5 accuracy over batches."""

    n: int = 0
    top1: int = 0
    top5: int = 0

    def update(self, logits, labels) -> None:
        logits = np.asarray(logits)
        self.n += len(labels)
        self.top1 += int(topk_hits(logits, labels, 1).sum())
        self.top5 += int(topk_hits(logits, labels, 5).sum())

    def as_dict(self) -> dict[str, float]:
        if self.n == 0:
            return {"top1": float("nan"), "top5": float("nan")}
        return {"top1": self.top1 / self.n, "top5": self.top5 / self.n}


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start_index, float32 [0,1] batch, int64 labels)``."""
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        yield (start, to_unit_float(images[start:stop]),
               np.asarray(labels[start:stop], dtype=np.int64))


def predict_logits(model, images: np.ndarray, batch_size: int = 32,
                   forward: Callable | None = None) -> np.ndarray:
    """Logits for a uint8 (or [0,1] float) image array, batched."""
    forward = forward or compiled_forward(model)
    out = []
    for start in range(0, len(images), batch_size):
        out.append(forward(tf.constant(to_unit_float(images[start:start + batch_size]))).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    counter = TopKCounter()
    counter.update(logits, labels)
    return counter.as_dict()


@dataclass
class Timer:
    """Accumulates wall-clock seconds over ``with timer:`` blocks."""

    seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start
        return False


def first_correct(forward: Callable[[tf.Tensor], tf.Tensor], images: np.ndarray,
                  labels: np.ndarray, n: int, batch_size: int = 32) -> list[int]:
    """Positions of the first ``n`` images whose top-1 prediction is right (fewer if
    there are not ``n``); stops predicting as soon as it has them."""
    found: list[int] = []
    for start, x, y in iterate_batches(images, labels, batch_size):
        pred = forward(tf.constant(x)).numpy().argmax(1)
        found += [start + int(i) for i in np.flatnonzero(pred == y)]
        if len(found) >= n:
            break
    return found[:n]

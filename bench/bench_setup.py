"""What every benchmark script shares: the model options, the tiled sample images and a
one-line description of the platform. Imported by the scripts in bench/ (run them as
``python bench/<name>.py``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from advpipe.data.samples import load_samples
from advpipe.models.zoo import build_model


def model_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--random-weights", action="store_true", help="no pretrained weights")


def model_and_samples(args: argparse.Namespace):
    """The model named by ``--model`` and the 20 bundled samples at its input size."""
    model = build_model(args.model, weights=not args.random_weights)
    images, manifest = load_samples(model.input_shape[1])
    return model, images, manifest["label"].to_numpy(np.int64)


def seeded_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """``n`` of ``n_total`` positions drawn by a permutation seeded by ``seed``, sorted: the
    same images for every script given the same ``--n`` and ``--seed``."""
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def saved_defense(model_path, split: str, n: int | None, seed: int, *, random: bool = True):
    """A defense model the pipeline saved (``<workspace>/models/defense/<name>.keras``) and
    uint8 images and class positions of a split of its workspace (``<workspace>/data/defense``):
    ``n`` of them drawn by :func:`seeded_subset` (``random``) or the first ``n``; all when
    ``n`` is None. The same images for every script given the same ``n`` and ``seed``."""
    from advpipe.defenses.dataset import load_split
    from advpipe.defenses.model import load_info, load_model

    path = Path(model_path)
    classes = load_info(path)["classes"]
    images, labels, _ = load_split(path.parents[2] / "data" / "defense", split, classes)
    if n and random:
        pick = seeded_subset(len(images), min(n, len(images)), seed)
        images, labels = images[pick], labels[pick]
    elif n:
        images, labels = images[:n], labels[:n]
    return load_model(path), images, np.asarray(labels, np.int64)


def describe(args: argparse.Namespace, settings: str) -> str:
    return (
        f"model {args.model} ({'random' if args.random_weights else 'pretrained'} weights), "
        f"{settings}, TF {tf.__version__}, {os.cpu_count()} CPUs, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}"
    )

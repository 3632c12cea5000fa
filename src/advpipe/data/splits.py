"""Deterministic, per-class stratified train/val/test split.

Each class is shuffled with a seeded generator and cut in the proportions given
(the paper's 300/100/100 per class of 500 gives exactly 300/100/100). When a
class cannot be cut exactly, its leftover images go to the split whose total is
furthest below its target share of the whole set, so the overall proportions
stay right even for tiny classes (such as the bundled one-image-per-class
samples); the assignment depends only on the labels, the proportions and the seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def stratified_split(labels: Sequence[int], proportions: Mapping[str, float],
                     seed: int) -> np.ndarray:
    """Return an array of split names ("train"/"val"/"test"), one per label."""
    labels = np.asarray(labels)
    weights = np.array([float(proportions[s]) for s in SPLITS])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"split proportions must be non-negative and not all 0: {proportions}")
    share = weights / weights.sum()
    out = np.empty(len(labels), dtype=object)
    assigned = np.zeros(len(SPLITS))
    seen = 0
    rng = np.random.default_rng(seed)
    for cls in np.unique(labels):  # sorted: independent of the input order of classes
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        counts = np.floor(len(idx) * share).astype(int)
        seen += len(idx)
        for _ in range(len(idx) - counts.sum()):
            deficit = share * seen - (assigned + counts)
            deficit[share == 0] = -np.inf
            counts[int(np.argmax(deficit))] += 1
        assigned += counts
        start = 0
        for name, n in zip(SPLITS, counts):
            out[idx[start:start + n]] = name
            start += n
    return out

"""Running a per-image compiled function on per-replica shards of each batch.

Every attack and evaluation function of the pipeline maps a batch to per-image
results (adversarial images, logits, flags): image *i*'s result depends on image *i*
(and its own seed) only. :func:`sharded` runs such a function under the current
``tf.distribute`` strategy with ``strategy.run``: the batch is cut into contiguous
shards, one per replica, in replica order, and the per-replica results are
concatenated back in that order, so the caller sees the same per-image results as on
one device (counts are then taken over per-image results: no mean of means).

*The global batch* is the batch the caller passes (``batch_size`` in the params): it is
split, not multiplied, by the number of replicas. A batch of ``n`` images over ``R``
replicas gives the first ``n mod R`` replicas ``⌈n/R⌉`` images and the others ``⌊n/R⌋``
(a replica may get none when the last batch is smaller than ``R``: it then computes one
image again and its result is dropped); per-image seeds travel with their images, so
randomness stays tied to the dataset index.

On one device (TensorFlow's default strategy, or a one-replica one), and under a
multi-worker strategy (each worker then computes the whole batch on its own device:
attacks need no cross-worker reduction), the function is returned unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf


def shard_bounds(n: int, replicas: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of each replica's contiguous share of ``n`` images."""
    base, extra = divmod(int(n), int(replicas))
    bounds, start = [], 0
    for r in range(replicas):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _multi_worker(strategy) -> bool:
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def sharded(
    fn: Callable,
    strategy: tf.distribute.Strategy | None = None,
    *,
    replicated: Sequence[int] = (),
) -> Callable:
    """``fn`` (batch in, per-image tensors out) run on per-replica shards of the batch.

    ``strategy``: the one to run under (default: the strategy in scope when this is
    called). ``replicated``: positions of arguments passed whole to every replica (a
    scalar ε); every other argument is cut along its first axis. Outputs may be any
    nest of tensors whose first axis is the image.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1 or _multi_worker(strategy):
        return fn
    replicas = strategy.num_replicas_in_sync
    whole = set(replicated)

    specs = getattr(fn, "input_signature", None)
    first = next(i for i in range(len(specs or [None])) if i not in whole)

    def share(n, rid):
        """``(start, size)`` of replica ``rid``: the first n mod R replicas take one more."""
        base, extra = n // replicas, n % replicas
        return rid * base + tf.minimum(rid, extra), base + tf.cast(rid < extra, tf.int32)

    def replica_fn(*args):
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        n = tf.shape(args[first])[0]
        start, size = share(n, rid)
        # a replica without images computes the last image again and drops it below (a
        # convolution over an empty batch fails in TensorFlow's CPU kernels)
        start = tf.minimum(start, tf.maximum(n - 1, 0))
        stop = start + tf.maximum(size, 1)
        return fn(*(a if i in whole else a[start:stop] for i, a in enumerate(args)))

    def run_all(*args):
        n = tf.shape(args[first])[0]
        out = strategy.run(replica_fn, args=args)
        parts = strategy.experimental_local_results(out)  # replica order = shard order
        kept = [
            tf.nest.map_structure(lambda t, r=r: t[: share(n, r)[1]], part)
            for r, part in enumerate(parts)
        ]
        return tf.nest.map_structure(lambda *p: tf.concat(p, axis=0), *kept)

    # strategy.run inside one graph (traced once: the batch dimension is free); the
    # compiled fn is the per-replica body, so XLA, when on, applies there
    call = tf.function(run_all, input_signature=specs, reduce_retracing=specs is None)
    return call

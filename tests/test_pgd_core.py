"""The pure-TensorFlow attack core and PGD: against Foolbox, per-example ε, compiled use."""

import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks import PGD, core
from advpipe.attacks.base import example_seeds
from wiring import build_attack


def test_pgd_equals_foolbox_from_the_same_start(tiny, batch):
    import foolbox as fb

    x, y = batch
    eps = [0.01, 0.03]
    ours = PGD(tiny, steps=7, rel_stepsize=0.3, random_start=False)(x, y, eps)
    attack = fb.attacks.LinfPGD(steps=7, rel_stepsize=0.3, random_start=False)
    _, theirs, _ = attack(
        fb.TensorFlowModel(tiny, bounds=(0, 1)), tf.constant(x), tf.constant(y), epsilons=eps
    )
    for a, b, e in zip(ours, theirs, eps):
        # equal up to float rounding; and not trivially equal to the clean images
        assert np.abs(a - b.numpy()).max() <= 1e-5
        assert np.abs(a - x).max() == pytest.approx(e, abs=1e-6)


def test_pgd_l2_equals_foolbox_from_the_same_start(tiny, batch):
    import foolbox as fb

    x, y = batch
    eps = [0.5, 2.0]  # L2 radii (the 32x32x3 images: an L-inf 1/255 step is ~0.22 in L2)
    ours = PGD(tiny, steps=7, rel_stepsize=0.3, random_start=False, norm="l2")(x, y, eps)
    attack = fb.attacks.L2PGD(steps=7, rel_stepsize=0.3, random_start=False)
    _, theirs, _ = attack(
        fb.TensorFlowModel(tiny, bounds=(0, 1)), tf.constant(x), tf.constant(y), epsilons=eps
    )
    for a, b, e in zip(ours, theirs, eps):
        assert np.abs(a - b.numpy()).max() <= 1e-5
        norms = np.sqrt(((a - x).astype(np.float64) ** 2).reshape(len(x), -1).sum(1))
        assert norms.max() <= e * (1 + 1e-5) and norms.max() > 0.5 * e


def test_pgd_l2_random_start_stays_in_the_ball_and_beats_no_attack(tiny, batch):
    x, y = batch
    eps = 3.0
    adv = PGD(tiny, steps=10, rel_stepsize=0.25, random_start=True, norm="l2", seed=2)(x, y, eps)
    norms = np.sqrt(((adv - x).astype(np.float64) ** 2).reshape(len(x), -1).sum(1))
    assert norms.max() <= eps * (1 + 1e-5) and adv.min() >= 0 and adv.max() <= 1
    ce = lambda images: tf.nn.sparse_softmax_cross_entropy_with_logits(y, tiny(images)).numpy()
    assert ce(adv).mean() > ce(x).mean()
    with pytest.raises(ValueError, match="norm"):
        PGD(tiny, norm="l1")


def test_pgd_is_stronger_than_fgsm_and_stays_in_the_ball(tiny, batch):
    x, y = batch
    eps = 0.03
    pgd = PGD(tiny, steps=10, rel_stepsize=0.25, random_start=True, seed=3)
    adv = pgd(x, y, eps)
    assert np.abs(adv - x).max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1

    def loss(images):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(y, tiny(images)).numpy()

    fgsm = build_attack(
        "fgsm", tiny, {"seed": 0, "attacks": {"labels": "ground_truth", "fgsm": {}}}
    )(x, y, eps)
    assert loss(adv).mean() > loss(fgsm).mean()
    # random start: a different seed gives a different result; the same seed the same
    again = PGD(tiny, steps=10, rel_stepsize=0.25, random_start=True, seed=3)(x, y, eps)
    other = PGD(tiny, steps=10, rel_stepsize=0.25, random_start=True, seed=4)(x, y, eps)
    np.testing.assert_array_equal(adv, again)
    assert np.abs(adv - other).max() > 0


@pytest.mark.parametrize("name", ["fgsm", "fgm", "rfgsm", "step_ll", "pgd"])
def test_generate_takes_per_example_epsilon_inside_a_compiled_function(tiny, batch, name):
    x, y = batch
    params = {
        "seed": 1,
        "attacks": {
            "labels": "ground_truth",
            "fgsm": {},
            "step_ll": {},
            "fgm": {"norm": "linf_equivalent"},
            "rfgsm": {"alpha_fraction": 0.5},
            "pgd": {"steps": 3, "rel_stepsize": 0.5, "random_start": True, "norm": "linf"},
        },
    }
    attack = build_attack(name, tiny, params)
    eps = np.linspace(0.0, 0.05, len(x)).astype(np.float32)
    seeds = example_seeds(1, np.arange(len(x)))

    @tf.function
    def run(xb, yb, e):
        return attack.generate(xb, yb, e, seeds)

    adv = run(tf.constant(x), tf.constant(y), tf.constant(eps)).numpy()
    # each example equals the same attack run alone at its own scalar eps
    for i in (0, 5, len(x) - 1):
        alone = attack(x[i : i + 1], y[i : i + 1], float(eps[i]), index=[i])
        np.testing.assert_allclose(adv[i : i + 1], alone, atol=1e-5)
    if name != "fgm":  # FGM's eps is an L2 scale here (linf_equivalent): not an L-inf bound
        assert (np.abs(adv - x).reshape(len(x), -1).max(1) <= eps + 1e-6).all()


def test_core_functions_need_no_numpy(tiny, batch):
    """The core runs in graph mode on symbolic tensors (no .numpy(), no Python on values)."""
    x, y = batch
    noise = core.noise_sign(tf.shape(x), tf.constant([0, 1], tf.int64))
    graph = tf.function(lambda a, b, e: core.rfgsm(tiny, a, b, e, noise)[0]).get_concrete_function(
        tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([])
    )
    out = graph(tf.constant(x), tf.constant(y), tf.constant(0.02)).numpy()
    assert np.abs(out - x).max() <= 0.02 + 1e-6

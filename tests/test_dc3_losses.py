"""DC3's loss functions against independent NumPy computations, including the edge cases."""
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from libml import dc3

RNG = np.random.default_rng(0)
EPS = 1e-6        # L_A's and L_S's clip in the original (overclustering_training.be / ce)
CEINV_EPS = 1e-7  # CE^-1's clip in the original (inverse_ce: Keras' epsilon)


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_simplex(n, k):
    return softmax(RNG.normal(size=(n, k)) * 3)


def test_inverse_cross_entropy_matches_numpy():
    p, q = random_simplex(7, 15), random_simplex(7, 15)
    q[0, 3] = 1.0  # a saturated output must be clipped, not give inf
    p, q = p.astype(np.float32), q.astype(np.float32)  # clip at float32 resolution, as TF does
    clip = lambda x: np.clip(x, np.float32(CEINV_EPS), np.float32(1 - CEINV_EPS))
    expected = -np.sum(clip(p) * np.log(1 - clip(q)), axis=1)
    got = dc3.inverse_cross_entropy(tf.constant(p, tf.float32), tf.constant(q, tf.float32))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert np.all(np.isfinite(got.numpy()))


def test_soft_cross_entropy_matches_numpy():
    p, q = random_simplex(5, 20), random_simplex(5, 20)
    expected = -np.sum(np.clip(p, EPS, 1 - EPS) * np.log(np.clip(q, EPS, 1 - EPS)), axis=1)
    got = dc3.soft_cross_entropy(tf.constant(p, tf.float32), tf.constant(q, tf.float32))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize('labels', [[0, 1, 1, 2, 0, 0, 3], [5, 5, 5, 2], [1, 2]])
def test_partners_have_another_label_when_one_exists(labels):
    labels = np.array(labels)
    for seed in range(20):
        partners = dc3.choose_partners(tf.constant(labels), by_label=True, seed=seed).numpy()
        for i, j in enumerate(partners):
            assert labels[j] != labels[i], (i, j, labels)


def test_partners_fall_back_to_another_image_when_all_labels_are_equal():
    labels = tf.constant([3, 3, 3, 3, 3])
    seen = set()
    for seed in range(30):
        partners = dc3.choose_partners(labels, by_label=True, seed=seed).numpy()
        assert all(j != i for i, j in enumerate(partners))
        seen.update(partners.tolist())
    assert seen == set(range(5))  # the fallback is random, not always the same image


def test_partner_of_a_single_image_is_itself():
    assert dc3.choose_partners(tf.constant([1]), by_label=True).numpy().tolist() == [0]


def test_partners_are_uniform_among_valid_images():
    labels = tf.constant([0, 1, 1, 1, 2])
    counts = np.zeros(5)
    for seed in range(600):
        counts[dc3.choose_partners(labels, by_label=True, seed=seed).numpy()[0]] += 1
    assert counts[0] == 0
    valid = counts[1:]
    assert valid.min() > 0.7 * valid.mean()  # each of the four images ~150 times


def test_random_permutation_partners():
    partners = dc3.choose_partners(tf.constant([0, 0, 1, 1, 2, 2]), by_label=False, seed=3)
    assert sorted(partners.numpy().tolist()) == list(range(6))


def numpy_ambiguity_targets(scores, prior):
    """The original's rule (overclustering_training.get_ops, combined_output 4): n = the exact
    floor of B p_A (at least 1 here, at most B - 1); everything at or above the n-th highest
    score is ambiguous."""
    b = len(scores)
    n = min(max(int(Fraction(repr(prior)) * b), 1), b - 1)
    if n == 0:
        return np.zeros(b)
    cut = np.sort(scores)[b - n]
    return (scores >= cut).astype(float)


@pytest.mark.parametrize('size,prior', [(64, 0.6), (10, 0.44), (7, 0.0), (7, 1.0), (2, 0.6),
                                        (2, 0.1), (3, 0.99)])
def test_ambiguity_pseudo_labels_match_numpy(size, prior):
    p = RNG.uniform(size=size).astype(np.float32)
    got = dc3.ambiguity_pseudo_labels(tf.constant(p), prior).numpy()
    np.testing.assert_array_equal(got, numpy_ambiguity_targets(p, prior))
    assert 1 <= got.sum() <= size - 1  # both kinds exist


@pytest.mark.parametrize('size,prior,expected', [(180, 0.65, 117), (100, 0.29, 29),
                                                 (64, 0.6, 38), (10, 0.3, 3), (50, 0.07, 3)])
def test_cutoff_is_the_exact_floor(size, prior, expected):
    # float32 gives 116 for 180 x 0.65 and float64 gives 28 for 100 x 0.29.
    assert int(np.floor(np.float32(size) * np.float32(prior))) != expected or size != 180
    assert dc3.ambiguity_cutoff(size, prior).numpy() == expected


def test_uncertainty_rank_scores_order_as_one_minus_the_top_class_probability():
    logits = RNG.normal(size=(16, 5)).astype(np.float32) * 3
    ambiguity_logits = RNG.normal(size=16).astype(np.float32)
    got = dc3.ambiguity_rank_scores(tf.constant(ambiguity_logits), tf.constant(logits),
                                    'uncertainty').numpy()
    probs = softmax(logits.astype(np.float64))
    top = probs.max(axis=1)
    np.testing.assert_allclose(got, np.log((1 - top) / top), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.argsort(got), np.argsort(1 - top))
    got = dc3.ambiguity_rank_scores(tf.constant(ambiguity_logits), tf.constant(logits),
                                    'p_a').numpy()
    np.testing.assert_array_equal(np.argsort(got), np.argsort(ambiguity_logits))


def test_rank_scores_keep_saturated_images_apart():
    # sigmoid(20) == sigmoid(30) == 1.0 and 1 - max p_n == 0 for both rows in float32; the scores
    # still order them.
    logits = tf.constant([[30.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    assert float(tf.sigmoid(20.0)) == float(tf.sigmoid(30.0)) == 1.0
    scores = dc3.ambiguity_rank_scores(tf.constant([30.0, 20.0]), logits, 'uncertainty').numpy()
    assert scores[1] > scores[0]
    scores = dc3.ambiguity_rank_scores(tf.constant([30.0, 20.0]), logits, 'p_a').numpy()
    assert scores[0] > scores[1]
    targets = dc3.ambiguity_pseudo_labels(tf.constant([30.0, 20.0, 25.0]), 0.34).numpy()
    assert targets.tolist() == [1, 0, 0]


def test_ambiguity_pseudo_labels_batch_of_one_is_certain():
    assert dc3.ambiguity_pseudo_labels(tf.constant([0.9]), 0.6).numpy().tolist() == [0.0]


def test_ambiguity_pseudo_labels_ties_at_the_cutoff_are_all_ambiguous():
    # As in the original (prob >= cut-off): four tied images and a cut-off of 2 call all four.
    assert dc3.ambiguity_pseudo_labels(tf.constant([0.5, 0.5, 0.5, 0.5]), 0.5).numpy().tolist() \
        == [1, 1, 1, 1]
    assert dc3.ambiguity_pseudo_labels(tf.constant([0.1, 0.5, 0.5, 0.9]), 0.5).numpy().tolist() \
        == [0, 1, 1, 1]


def test_ambiguity_loss_is_the_originals_clipped_bce():
    logits = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 2.0, 12.0, 30.0], np.float32)
    targets = np.array([1, 0, 1, 0, 1, 1, 0, 1], np.float32)
    p = np.clip(1 / (1 + np.exp(-logits.astype(np.float64))), EPS, 1 - EPS)
    h = np.clip(targets, EPS, 1 - EPS)
    expected = -(h * np.log(p) + (1 - h) * np.log(1 - p))
    logit_var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        got = dc3.ambiguity_loss(logit_var, tf.constant(targets))
        total = tf.reduce_sum(got)
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-4)
    assert got.numpy().max() < 14.0  # bounded by the clip: -ln(1e-6) = 13.8
    grad = tape.gradient(total, logit_var).numpy()
    assert grad[0] == 0 and grad[-1] == 0  # saturated past the clip: no gradient
    assert np.all(grad[1:-1] != 0)


@pytest.mark.parametrize('soft,rescale', [(1, 0), (0, 0), (1, 1), (0, 1)])
def test_scaling_weights_match_numpy(soft, rescale):
    p = RNG.uniform(size=12).astype(np.float32)
    p[0] = 0.5  # tf.round in the original: half to even, so 0.5 counts as certain
    amb = p if soft else (p > 0.5).astype(np.float64)
    cert = 1 - amb
    if rescale:
        b = len(p)
        cert = cert * b / np.clip(cert.sum(), 1, b - 1)
        amb = amb * b / np.clip(amb.sum(), 1, b - 1)
    got_cert, got_amb = dc3.scaling_weights(tf.constant(p), 0, soft, rescale)
    np.testing.assert_allclose(got_cert.numpy(), cert, rtol=1e-5)
    np.testing.assert_allclose(got_amb.numpy(), amb, rtol=1e-5)


@pytest.mark.parametrize('prob_gradient', [0, 1])
def test_scaling_weights_gradient_follows_prob_gradient(prob_gradient):
    p = tf.Variable([0.2, 0.7, 0.4])
    with tf.GradientTape() as tape:
        certain, ambiguous = dc3.scaling_weights(p, prob_gradient, 1, 0)
        loss = tf.reduce_sum(certain * [1.0, 2.0, 3.0]) + tf.reduce_sum(ambiguous)
    grad = tape.gradient(loss, p)
    if prob_gradient:
        np.testing.assert_allclose(grad.numpy(), [0.0, -1.0, -2.0], atol=1e-6)
    else:
        assert grad is None or not np.any(grad.numpy())


def test_rescale_with_all_weight_on_one_side_is_clipped():
    certain, ambiguous = dc3.scaling_weights(tf.zeros([4]), 0, 1, 1)
    # sum(certain) = 4 is clipped to B - 1 = 3; sum(ambiguous) = 0 is clipped to 1.
    np.testing.assert_allclose(certain.numpy(), np.full(4, 4 / 3), rtol=1e-6)
    np.testing.assert_allclose(ambiguous.numpy(), np.zeros(4))


def test_config_rejects_invalid_values():
    for bad in (dict(combined_output=2), dict(prior_fuzzy_distribution=1.5),
                dict(prior_fuzzy_distribution=float('nan')), dict(wou=-1),
                dict(wf=float('inf')), dict(use_soft_prob=2), dict(scale_labeled_ceinv=2),
                dict(supervised_certainty='both'),
                dict(overcluster_factor=0), dict(ambiguity_rank='entropy')):
        with pytest.raises(dc3.DC3Error):
            dc3.DC3Config(**bad)


def test_vanilla_config_is_disabled_and_ceinv_only_has_no_ambiguity_head():
    assert not dc3.DC3Config(combined_output=0, wou=0, wol=0).enabled
    ceinv = dc3.DC3Config(combined_output=0, wou=10, wol=10)
    assert ceinv.enabled and ceinv.overcluster_head and not ceinv.ambiguity_head
    cc = dc3.DC3Config(combined_output=4, wou=0, wol=0)
    assert cc.ambiguity_head and cc.overcluster_head

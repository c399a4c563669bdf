"""DC3's loss functions against independent NumPy computations, including the edge cases."""
import numpy as np
import pytest
import tensorflow as tf

from libml import dc3

RNG = np.random.default_rng(0)
EPS = 1e-6


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_simplex(n, k):
    return softmax(RNG.normal(size=(n, k)) * 3)


def test_inverse_cross_entropy_matches_numpy():
    p, q = random_simplex(7, 15), random_simplex(7, 15)
    q[0, 3] = 1.0  # a saturated output must be clipped, not give inf
    p, q = p.astype(np.float32), q.astype(np.float32)  # clip at float32 resolution, as TF does
    expected = -np.sum(np.clip(p, EPS, 1 - EPS) * np.log(1 - np.clip(q, EPS, 1 - EPS)), axis=1)
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


def numpy_ambiguity_targets(p, prior):
    b = len(p)
    n = min(max(int(np.floor(b * prior)), 1), b - 1)
    order = np.argsort(-p, kind='stable')
    h = np.zeros(b)
    h[order[:n]] = 1
    return h


@pytest.mark.parametrize('size,prior', [(64, 0.6), (10, 0.44), (7, 0.0), (7, 1.0), (2, 0.6),
                                        (2, 0.1), (3, 0.99)])
def test_ambiguity_pseudo_labels_match_numpy(size, prior):
    p = RNG.uniform(size=size).astype(np.float32)
    got = dc3.ambiguity_pseudo_labels(tf.constant(p), prior).numpy()
    np.testing.assert_array_equal(got, numpy_ambiguity_targets(p, prior))
    assert 1 <= got.sum() <= size - 1  # both kinds exist


def test_uncertainty_rank_scores_are_one_minus_the_top_class_probability():
    logits = RNG.normal(size=(16, 5)).astype(np.float32) * 3
    ambiguity_logits = RNG.normal(size=16).astype(np.float32)
    got = dc3.ambiguity_rank_scores(tf.constant(ambiguity_logits), tf.constant(logits),
                                    'uncertainty').numpy()
    np.testing.assert_allclose(got, 1 - softmax(logits).max(axis=1), rtol=1e-5, atol=1e-6)
    got = dc3.ambiguity_rank_scores(tf.constant(ambiguity_logits), tf.constant(logits),
                                    'p_a').numpy()
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-ambiguity_logits)), rtol=1e-5)


def test_ambiguity_pseudo_labels_batch_of_one_is_certain():
    assert dc3.ambiguity_pseudo_labels(tf.constant([0.9]), 0.6).numpy().tolist() == [0.0]


def test_ambiguity_pseudo_labels_ties_are_deterministic():
    p = tf.constant([0.5, 0.5, 0.5, 0.5])
    assert dc3.ambiguity_pseudo_labels(p, 0.5).numpy().tolist() == [1, 1, 0, 0]


def test_ambiguity_loss_matches_numpy_bce():
    logits = RNG.normal(size=9).astype(np.float32) * 4
    targets = (RNG.uniform(size=9) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    got = dc3.ambiguity_loss(tf.constant(logits), tf.constant(targets)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize('soft,rescale', [(1, 0), (0, 0), (1, 1), (0, 1)])
def test_scaling_weights_match_numpy(soft, rescale):
    p = RNG.uniform(size=12).astype(np.float32)
    amb = p if soft else (p >= 0.5).astype(np.float64)
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
                dict(prior_fuzzy_distribution=-0.1), dict(wou=-1), dict(use_soft_prob=2),
                dict(overcluster_factor=0), dict(ambiguity_rank='entropy')):
        with pytest.raises(dc3.DC3Error):
            dc3.DC3Config(**bad)


def test_vanilla_config_is_disabled_and_ceinv_only_has_no_ambiguity_head():
    assert not dc3.DC3Config(combined_output=0, wou=0, wol=0).enabled
    ceinv = dc3.DC3Config(combined_output=0, wou=10, wol=10)
    assert ceinv.enabled and ceinv.overcluster_head and not ceinv.ambiguity_head
    cc = dc3.DC3Config(combined_output=4, wou=0, wol=0)
    assert cc.ambiguity_head and cc.overcluster_head

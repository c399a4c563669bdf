"""DC3's loss functions: pure, per sample, each checked against NumPy (tests/test_dc3_losses.py).

``libml.dc3`` composes them into the training loss and re-exports them (``dc3.inverse_cross_entropy``
...). Formulas and clips follow the original code (Emprime/dc3) unless the README's "Differences
from the original code" names the difference.
"""
import fractions

import tensorflow as tf

from libml import distribute

EPS = 1e-6          # clip of L_A's and L_S's probabilities (the original's ``be`` and ``ce``)
CEINV_EPS = 1e-7    # clip of CE^-1's probabilities (the original uses Keras' epsilon there)
AMBIGUITY_RANKS = ('p_a', 'uncertainty')



def choose_partners(labels, by_label=True, seed=None):
    """For every image, the index of another image of the batch, chosen without a Python loop.

    With ``by_label``, a uniformly random image with a different label; if the batch has none, any
    other image; a batch of one pairs the image with itself. Without ``by_label``, a random
    permutation of the batch.
    """
    size = tf.shape(labels)[0]
    if not by_label:
        return tf.random.shuffle(tf.range(size), seed=seed)
    # Score every pair: 2 for another label, 1 for same label but another image, 0 for itself,
    # plus uniform noise in [0, 1) that breaks ties at random; the best score wins.
    differs = tf.cast(labels[:, None] != labels[None, :], tf.float32)
    other = 1.0 - tf.eye(size)
    noise = tf.random.uniform([size, size], seed=seed)
    return tf.argmax(2.0 * differs + other + noise, axis=1, output_type=tf.int32)


def inverse_cross_entropy(p, q):
    """``CE^-1(p, q) = -sum_c p_c ln(1 - q_c)``, both clipped to [1e-7, 1 - 1e-7]; shape [B]."""
    p = tf.clip_by_value(p, CEINV_EPS, 1.0 - CEINV_EPS)
    q = tf.clip_by_value(q, CEINV_EPS, 1.0 - CEINV_EPS)
    return -tf.reduce_sum(p * tf.math.log(1.0 - q), axis=-1)


def soft_cross_entropy(p, q):
    """``-sum_c p_c ln q_c``, both clipped to [1e-6, 1 - 1e-6]; shape [B]. ``L_S`` uses it.

    The gradient reaches both sides; the caller stops it where the method does.
    """
    p = tf.clip_by_value(p, EPS, 1.0 - EPS)
    q = tf.clip_by_value(q, EPS, 1.0 - EPS)
    return -tf.reduce_sum(p * tf.math.log(q), axis=-1)


def ambiguity_cutoff(batch_size, prior):
    """How many images of a batch of ``batch_size`` are pseudo-labeled ambiguous.

    ``floor(B p_A)`` in exact arithmetic (``p_A`` read as the decimal it was written as: a float32
    product gives 116 for 180 x 0.65), clamped to [1, B - 1] so both kinds exist; a batch of one
    gets 0 (the clamp to ``B - 1`` wins), i.e. its single image is called certain.
    """
    ratio = fractions.Fraction(repr(float(prior))).limit_denominator(10 ** 6)
    batch_size = tf.cast(batch_size, tf.int64)
    count = batch_size * ratio.numerator // ratio.denominator
    return tf.cast(tf.minimum(tf.maximum(count, 1), batch_size - 1), tf.int32)


def log_uncertainty(class_logits):
    """``ln(sum_{j != top} p_j / p_top)``: increases with ``1 - max p_n`` but, unlike it, does
    not round to 0 in float32 once the top class leads by more than ~17 in logits."""
    shifted = class_logits - tf.reduce_max(class_logits, axis=-1, keepdims=True)
    top = tf.one_hot(tf.argmax(class_logits, axis=-1), tf.shape(class_logits)[-1]) > 0
    return tf.reduce_logsumexp(tf.where(top, float('-inf'), shifted), axis=-1)


def ambiguity_rank_scores(ambiguity_logits, class_logits, rank_by='p_a'):
    """The per-image score L_A's ranking sorts by (no gradient).

    In the same order as ``p_a`` (``'p_a'``) or ``1 - max p_n`` (``'uncertainty'``), but computed
    where float32 keeps them apart: the logit itself, and ``log_uncertainty``. (``sigmoid`` is
    exactly 1.0 for every logit above ~16.6, which would turn the ranking into ties.)
    """
    if rank_by == 'uncertainty':
        scores = log_uncertainty(tf.cast(class_logits, tf.float32))
    else:
        scores = ambiguity_logits
    return tf.stop_gradient(scores)


def ambiguity_pseudo_labels(scores, prior):
    """``h``: 1 for the images whose score reaches the ``ambiguity_cutoff``-th highest, else 0.

    As in the original code, every image tied with that score is called ambiguous, so a tie at
    the cut-off can make more than ``floor(B p_A)`` ones. No gradient.
    """
    scores = tf.stop_gradient(scores)
    size = tf.shape(scores)[0]
    cutoff = ambiguity_cutoff(size, prior)
    descending = tf.sort(scores, direction='DESCENDING')
    # A cut-off of 0 (a batch of one) calls nothing ambiguous.
    threshold = tf.where(cutoff > 0, descending[tf.maximum(cutoff - 1, 0)],
                         tf.constant(float('inf'), scores.dtype))
    return tf.cast(scores >= threshold, tf.float32)


def ambiguity_loss(ambiguity_logits, targets):
    """Binary cross-entropy of ``p_a = sigmoid(logit)`` against 0/1 targets; shape [B].

    As in the original code, both ``p_a`` and the targets are clipped to [1e-6, 1 - 1e-6]: the
    loss is bounded and has no gradient once ``p_a`` saturates past the clip.
    """
    probs = tf.clip_by_value(tf.sigmoid(ambiguity_logits), EPS, 1.0 - EPS)
    targets = tf.clip_by_value(targets, EPS, 1.0 - EPS)
    return -(targets * tf.math.log(probs) + (1.0 - targets) * tf.math.log(1.0 - probs))


def scaling_weights(ambiguity_probs, prob_gradient=0, use_soft_prob=1, use_loss_rescale=0):
    """(certain weights ``1 - p_a``, ambiguous weights ``p_a``) that scale the per-image losses.

    ``prob_gradient=0`` stops gradients through them; ``use_soft_prob=0`` rounds ``p_a`` to {0, 1}
    (half to even, as ``tf.round``: 0.5 counts as certain); ``use_loss_rescale=1`` multiplies
    each by ``B / sum(weights)`` (the sum clipped to [1, B - 1]) so that the weighted mean keeps
    the scale of an unweighted one; ``B`` and the sum cover the global batch when several
    replicas train together.
    """
    return subset_scaling_weights([ambiguity_probs], prob_gradient, use_soft_prob,
                                  use_loss_rescale)[0]


def subset_scaling_weights(probs_per_subset, prob_gradient=0, use_soft_prob=1, use_loss_rescale=0):
    """``scaling_weights`` of several subsets (labeled, unlabeled), each rescaled by its own sums.

    With several replicas the sums of every subset travel together in a single all-reduce, one
    collective op (and one in the backward pass with ``prob_gradient=1``) instead of one per sum.
    """
    pairs = []
    for probs in probs_per_subset:
        ambiguous = probs if prob_gradient else tf.stop_gradient(probs)
        if not use_soft_prob:
            ambiguous = tf.stop_gradient(tf.round(ambiguous))
        pairs.append((1.0 - ambiguous, ambiguous))
    if not use_loss_rescale:
        return pairs
    totals = distribute.global_sum(tf.stack([tf.reduce_sum(w) for pair in pairs for w in pair]))
    rescaled = []
    for i, pair in enumerate(pairs):
        size = tf.cast(distribute.global_batch_size(pair[0]), tf.float32)
        limit = tf.maximum(size - 1.0, 1.0)
        rescaled.append(tuple(w * size / tf.clip_by_value(totals[2 * i + j], 1.0, limit)
                              for j, w in enumerate(pair)))
    return rescaled

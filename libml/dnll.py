"""DNLL: mutual learning with pseudo-negative labels (Xu et al., Knowledge-Based Systems 2023).

Two sub-networks learn from each other. In every step one of them names, for each unlabeled
image, a few classes the image most likely does *not* belong to (its lowest predicted
probabilities), and the other lowers its own probability on exactly those classes:

    L_neg(x) = -sum_{c in N(x)} ln(1 - p_c(x))

A wrong negative label costs little: it only pushes one of k - 1 wrong-looking classes down, where
a wrong positive pseudo-label would pull the whole distribution towards one class. That is why
DNLL can use images whose top prediction is far from confident.

This module holds the hyperparameters, the two pure functions (selection and loss, per image,
testable against NumPy) and ``build_pair``, the one Keras model that holds both sub-networks so
that the shared optimiser, EMA, checkpoints and evaluation need no change.
"""
import dataclasses

import keras
import tensorflow as tf

from libml import hparams, models
from libml.errors import DC3Error
from libml.models import CLASS_HEAD

PEER_HEAD = 'peer_logits'   # class logits of sub-network B in the pair's output dict
EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class DNLLConfig:
    """DNLL's hyperparameters, checked once so a bad flag fails before any network is built.

    The paper's values were not available to us; these defaults are ours.
    """
    # Mean Teacher's weight here: the same softmax-MSE loss.
    consistency_weight: float = hparams.field(
        50.0, 'Weight of each sub-network\'s Mean-Teacher consistency loss.')
    # One ramp for consistency and negatives, as Mean Teacher's.
    warmup_pos: float = hparams.field(0.4, 'Share of training over which the unlabeled losses '
                                           'ramp up.')
    # A log-loss like the labeled cross-entropy: the same scale.
    negative_weight: float = hparams.field(1.0, 'Weight of the pseudo-negative label loss.')
    # "A few": a third of CIFAR-10's wrong classes.
    num_negatives: int = hparams.field(3, 'Pseudo-negative labels per unlabeled image (at most '
                                          'k - 1).')
    # Half the uniform probability for k = 10: an untrained, near-uniform network names no
    # negatives, and those it names later are classes it clearly rules out.
    negative_threshold: float = hparams.field(
        0.05, 'A class is a pseudo-negative label only if the naming sub-network gives it a '
              'probability below this.')

    def __post_init__(self):
        checks = [
            (self.consistency_weight >= 0,
             f'--consistency_weight must be >= 0, got {self.consistency_weight}'),
            (0 <= self.warmup_pos <= 1, f'--warmup_pos must be in [0, 1], got {self.warmup_pos}'),
            (self.negative_weight >= 0,
             f'--negative_weight must be >= 0, got {self.negative_weight}'),
            (self.num_negatives >= 1,
             f'--num_negatives must be >= 1, got {self.num_negatives}'),
            (0 < self.negative_threshold <= 1,
             f'--negative_threshold must be in (0, 1], got {self.negative_threshold}'),
        ]
        for ok, message in checks:
            if not ok:
                raise DC3Error(message)


# ---------------------------------------------------------------------------------------------
# Loss functions (per image)
# ---------------------------------------------------------------------------------------------

def select_negatives(probs, num_negatives, threshold):
    """{0, 1} mask [B, k] of each image's pseudo-negative classes (no gradient).

    The ``num_negatives`` classes with the lowest probability (at most k - 1, so the most likely
    class is never called negative), kept only where that probability is below ``threshold``: an
    early, near-uniform network then names no negatives instead of random ones. Equal
    probabilities go to the lower class index first (``tf.math.top_k``'s documented order), so
    the mask is deterministic.
    """
    probs = tf.stop_gradient(probs)
    k = probs.shape[-1]
    count = min(int(num_negatives), k - 1)
    _, lowest = tf.math.top_k(-probs, k=count)                      # [B, count]
    chosen = tf.reduce_max(tf.one_hot(lowest, k, dtype=probs.dtype), axis=1)  # [B, k]
    return chosen * tf.cast(probs < threshold, probs.dtype)


def negative_loss(probs, mask):
    """``-sum_c mask_c ln(1 - p_c)`` with ``p`` clipped to [1e-6, 1 - 1e-6]; shape [B]."""
    probs = tf.clip_by_value(probs, EPS, 1.0 - EPS)
    return -tf.reduce_sum(mask * tf.math.log(1.0 - probs), axis=-1)


# ---------------------------------------------------------------------------------------------
# The pair of sub-networks
# ---------------------------------------------------------------------------------------------

def sub_network_names(name):
    """Names of sub-networks A and B inside the pair called ``name``."""
    return f'{name}_a', f'{name}_b'


def build_pair(name, heads, image_size, **build):
    """One Keras model holding two independent networks, A and B, on the same input.

    Outputs A's dict (every head in ``heads``, DC3's included, and ``'embedding'``) plus
    ``PEER_HEAD``, B's class logits. B gets only the class head: DC3 and evaluation read A, and
    B exists only to exchange negative labels and be a second opinion. Keeping both in one model
    means one list of trainable variables (one GradientTape, one optimiser), one EMA copy built the
    same way with the variables in the same order, and one checkpoint entry.
    """
    name_a, name_b = sub_network_names(name)
    net_a = models.build_network(name=name_a, heads=heads, image_size=image_size, **build)
    net_b = models.build_network(name=name_b, heads={CLASS_HEAD: heads[CLASS_HEAD]},
                                 image_size=image_size, **build)
    images = keras.Input((image_size, image_size, 3), name='image')
    outputs = dict(net_a(images))
    outputs[PEER_HEAD] = net_b(images)[CLASS_HEAD]
    return keras.Model(images, outputs, name=name)

"""FOC: Fuzzy Overclustering (Schmarje et al., "Beyond Cats and Dogs", Sensors 2021).

FOC trains one backbone with two heads -- the normal head (``k`` classes) and an overclustering
head (``k' > k`` clusters) -- by maximising IIC's mutual information between the outputs of two
views of an image on both heads, plus, for labeled images, cross-entropy on the normal head and
CE^-1 (``libml.dc3.inverse_cross_entropy``) on the overclustering head. Ambiguous images, which
fit no single class, can then get a cluster of their own instead of being forced into a class.

This module holds FOC's configuration and its pure pieces: the mutual-information loss and the
same-class partner choice (TensorFlow, per batch), the supervised warm-up weight, and the
evaluation helpers (majority mapping of clusters to classes, purity) in NumPy. The method class,
which wires them into the training loop, is ``foc.py`` at the repository root.
"""
import dataclasses
import math

import numpy as np
import sklearn.metrics
import tensorflow as tf

from libml import hparams
from libml.errors import DC3Error

# Floor of the joint distribution and its marginals before the logarithm. Far below any value a
# real batch produces (1 / (B k'^2) ~ 1e-6), so it only guards log(0) for pairs of clusters that
# no image of the batch occupies; such entries then add ~EPS ln EPS ~ 1e-9 to I.
EPS = 1e-10
# floor(B r / (1 - r)) is computed in floating point: 8 * 0.2 / 0.8 must give 2, not 1.999...
_ROUNDING = 1e-9


@dataclasses.dataclass(frozen=True)
class FOCConfig:
    """FOC's own hyperparameters.

    * ``unlabeled_ratio`` r: the unlabeled images make up at most this share of a step's batch;
      0 trains on labeled images only (their MI still uses the supervised second view).
    * ``supervised_warmup``: share of the training steps during which the supervised terms (CE and
      CE^-1) get weight 0 and only the mutual information trains; afterwards weight 1.
    * ``ceinv_weight``: weight of CE^-1 on the overclustering head relative to the normal head's
      cross-entropy (the role of DC3's ``wol``, and its default 10: on the synthetic data it
      used more clusters and made them purer on ambiguous images than 1 did).
    * ``overcluster_factor``: k' = factor * k clusters; 6 gives CIFAR-10's 60 of the paper. Its
      flag is the one DC3 has (``--overcluster_factor``), with FOC's default.
    """
    unlabeled_ratio: float = hparams.field(0.5, 'Largest share of unlabeled images in a batch '
                                                '(0: labeled images only).')
    supervised_warmup: float = hparams.field(0.1, 'Share of training with the supervised terms '
                                                  'off (only the mutual information trains).')
    ceinv_weight: float = hparams.field(10.0, 'Weight of CE^-1 on the overclustering head.')
    overcluster_factor: int = hparams.field(6, 'Overclustering head size k\' = factor * k.')

    def __post_init__(self):
        if not 0.0 <= self.unlabeled_ratio < 1.0:
            raise DC3Error(f'--unlabeled_ratio must be in [0, 1) (the unlabeled share of a batch; '
                           f'0: labeled images only), got {self.unlabeled_ratio}')
        if not 0.0 <= self.supervised_warmup < 1.0:
            raise DC3Error(f'--supervised_warmup must be in [0, 1) (a share of the training '
                           f'steps), got {self.supervised_warmup}')
        if self.ceinv_weight < 0:
            raise DC3Error(f'--ceinv_weight must be >= 0, got {self.ceinv_weight}')
        if self.overcluster_factor < 1:
            raise DC3Error(f'--overcluster_factor must be >= 1, got {self.overcluster_factor}')

    def unlabeled_count(self, labeled_batch):
        """Unlabeled images per step next to ``labeled_batch`` labeled ones:
        ``floor(B_l r / (1 - r))``, the largest count whose share of the batch is at most r."""
        r = self.unlabeled_ratio
        return int(math.floor(labeled_batch * r / (1.0 - r) + _ROUNDING))

    def uratio(self, labeled_batch):
        """The smallest ``uratio`` whose unlabeled batches hold ``unlabeled_count`` images."""
        return max(1, math.ceil(self.unlabeled_count(labeled_batch) / labeled_batch))


# ---------------------------------------------------------------------------------------------
# Losses (TensorFlow)
# ---------------------------------------------------------------------------------------------

def iic_mutual_information(z, z_prime):
    """IIC's mutual information between the cluster assignments of paired views; a scalar.

    ``z`` and ``z_prime`` are softmax outputs [B, k] of the two views of B pairs. Their joint
    distribution over the batch is ``P = z^T z' / B`` ([k, k]), symmetrised as ``(P + P^T) / 2``
    because the two views are interchangeable. With marginals ``P_c`` (rows) and ``P_c'``
    (columns), taken before the floor ``EPS``:

        I = sum_{c,c'} P_cc' ln(P_cc' / (P_c P_c'))

    I is at most ``ln k``, reached when both views agree (confident, identical assignments) and
    the batch spreads evenly over the k clusters; the loss is ``-I``. Maximising it rewards
    consistency and balanced clusters at once, which is what keeps IIC from collapsing all images
    into one cluster.
    """
    batch = tf.cast(tf.shape(z)[0], z.dtype)
    joint = tf.matmul(z, z_prime, transpose_a=True) / batch
    joint = (joint + tf.transpose(joint)) / 2.0
    rows = tf.reduce_sum(joint, axis=1, keepdims=True)
    cols = tf.reduce_sum(joint, axis=0, keepdims=True)
    joint, rows, cols = (tf.maximum(t, EPS) for t in (joint, rows, cols))
    return tf.reduce_sum(joint * (tf.math.log(joint) - tf.math.log(rows) - tf.math.log(cols)))


def same_class_partners(labels, seed=None):
    """For every image, the index of a uniformly random OTHER image of the batch with its label.

    FOC's supervised augmentation: the second "view" of a labeled image is another labeled image
    of the same class, so the mutual information learns that same-class images belong together.
    An image whose label no other image of the batch has is paired with itself (its two views are
    then identical). Vectorised: every candidate scores 1 + uniform noise in [0, 1), the image
    itself 0.5, everything else 0, and the best score wins.
    """
    size = tf.shape(labels)[0]
    itself = tf.eye(size)
    candidates = tf.cast(labels[:, None] == labels[None, :], tf.float32) * (1.0 - itself)
    noise = tf.random.uniform([size, size], seed=seed)
    return tf.argmax(candidates * (1.0 + noise) + 0.5 * itself, axis=1, output_type=tf.int32)


def supervised_weight(progress, warmup):
    """0 for the first ``warmup`` share of training, then 1 (a step, not a ramp).

    During the warm-up only the mutual information trains, so both heads first find clusters of
    their own; a step keeps the labeled terms at full strength for the rest of training.
    """
    return tf.cast(progress >= warmup, tf.float32)


# ---------------------------------------------------------------------------------------------
# Evaluation (NumPy)
# ---------------------------------------------------------------------------------------------

def majority_mapping(cluster_ids, labels, num_clusters):
    """Maps every cluster to the class most frequent among the labeled images it holds.

    Returns an int array [num_clusters]. A cluster that no labeled image falls into maps to the
    most frequent class of the labeled images overall: with no evidence about the cluster, that is
    the guess with the highest expected accuracy. Ties go to the lower class index.
    """
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if labels.size else 1
    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (cluster_ids, labels), 1)
    overall = int(np.argmax(counts.sum(axis=0)))
    return np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), overall)


def overcluster_metrics(cluster_ids, labels, mapping):
    """``overcluster_accuracy`` and ``overcluster_macro_f1``: the clusters, each replaced by its
    mapped class (``majority_mapping``), against ``labels``; None for an empty split. Macro F1 is
    computed as ``libml.metrics.split_metrics`` computes the normal head's ``macro_f1``."""
    labels = np.asarray(labels, dtype=np.int64)
    if not labels.size:
        return {'overcluster_accuracy': None, 'overcluster_macro_f1': None}
    predicted = np.asarray(mapping)[np.asarray(cluster_ids, dtype=np.int64)]
    return {
        'overcluster_accuracy': float(np.mean(predicted == labels)),
        'overcluster_macro_f1': float(sklearn.metrics.f1_score(labels, predicted, average='macro',
                                                               zero_division=0)),
    }


def purity(groups, targets):
    """Share of images whose target is the most frequent target of their group.

    1 when every group holds one target only. It can only grow when groups are split, so compare
    groupings with similar numbers of groups, or against a chance baseline.
    """
    groups = np.asarray(groups)
    targets = np.asarray(targets)
    if not groups.size:
        return None
    agreeing = 0
    for group in np.unique(groups):
        _, counts = np.unique(targets[groups == group], return_counts=True)
        agreeing += counts.max()
    return float(agreeing / groups.size)

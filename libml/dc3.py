"""DC3: Data-Centric Classification & Clustering (Schmarje et al., ECCV 2022).

DC3 adds two heads to any SSL method's network -- an overclustering head ``p_o`` with
``overcluster_factor * k`` outputs and an ambiguity head ``p_a`` (one sigmoid logit) -- and three
losses. Per image, with ``w = stop_gradient(p_a)`` by default:

    L = L_SSL (1 - w) + wol/wou CE^-1 (1 - w) + wf L_A + ws L_S w

* ``CE^-1(p, q) = -sum_c p_c ln(1 - q_c)`` pushes the overcluster output of an image away from that
  of a partner image with a different (ground-truth or pseudo) label.
* ``L_A`` is the binary cross-entropy of ``p_a`` against batch-rank pseudo-labels: the
  ``floor(B_u p_A)`` unlabeled images with the highest ``p_a`` are called ambiguous. (Our option
  ``ambiguity_rank='uncertainty'`` ranks by the classifier's uncertainty ``1 - max p_n`` instead;
  see ``DC3Config.ambiguity_rank``.)
* ``L_S = -sum_c p_o(x)_c ln p_o(x')_c`` between two views of an unlabeled image.

Which view carries ``p_a`` and which one is L_S's other side is the method's choice
(``SSLMethod.views``), as in the original code: the student's view for Mean Teacher, the Pi-model
and the supervised baseline, the weak view for FixMatch, the only view for Pseudo-Label. Every
default follows the original code (Emprime/dc3, ``libml/overclustering_training.py``) unless the
README's "Differences from the original code" names the difference.

An image with ``p_a < 0.5`` is classified (``argmax p_n``), otherwise clustered (``argmax p_o``).

This module holds the heads' configuration, the loss functions (pure, per sample, testable against
NumPy) and ``DC3Mixin``, which any method class composes with through ``with_dc3``.
"""
import dataclasses
import fractions

import tensorflow as tf

from libml import distribute, losses
from libml.errors import DC3Error
from libml.models import CLASS_HEAD

OVERCLUSTER_HEAD = 'overcluster_logits'
AMBIGUITY_HEAD = 'ambiguity_logit'
EPS = 1e-6          # clip of L_A's and L_S's probabilities (the original's ``be`` and ``ce``)
CEINV_EPS = 1e-7    # clip of CE^-1's probabilities (the original uses Keras' epsilon there)
AMBIGUITY_RANKS = ('p_a', 'uncertainty')
SUPERVISED_CERTAINTY = ('labeled', 'unlabeled')
# Recorded in args.json: runs of the code before the losses followed the original code (no such
# key) are told apart by scripts/report.py.
LOSSES_VERSION = 2


@dataclasses.dataclass(frozen=True)
class DC3Config:
    """DC3's hyperparameters, named as the original code's flags."""
    combined_output: int = 4            # 4: ambiguity head on (DC3); 0: off (vanilla / CE^-1 only)
    wou: float = 10.0                   # weight of CE^-1 on unlabeled images
    wol: float = 10.0                   # weight of CE^-1 on labeled images
    wf: float = 0.1                     # weight of the ambiguity loss L_A
    ws: float = 0.1                     # weight of the overcluster consistency L_S
    ceinv_labels: int = 1               # 1: partner has another label; 0: random permutation
    prob_gradient: int = 0              # 1: let gradients flow through the p_a scaling weights
    use_soft_prob: int = 1              # 0: round the scaling weights to {0, 1}
    use_loss_rescale: int = 0           # 1: rescale weights by B / sum(weights)
    # p_A, the expected share of ambiguous images. A negative value (the original's default -1)
    # takes the dataset's own estimate from meta.json; see cli.build.
    prior_fuzzy_distribution: float = 0.6
    overcluster_factor: int = 5         # k' = factor * k
    # What L_A's batch ranking sorts by. 'p_a' (the paper, the original code and the spec): the
    # head's own output, so L_A's only signal is p_a's earlier ranking; on our synthetic data the
    # head then splits the images by class, not by ambiguity (BENCHMARKS.md, section 8).
    # 'uncertainty' (our addition): 1 - max p_n, so p_a learns to predict which images the
    # classifier is unsure of. The default stays the spec's, so the paper's command lines
    # reproduce the paper.
    ambiguity_rank: str = 'p_a'
    # 1 (ours, the paper's Eq. 1): the labeled CE^-1 is scaled by the labeled images' 1 - p_a like
    # every other certain-image term. 0: unscaled, as in the original code.
    scale_labeled_ceinv: int = 1
    # What scales the supervised baseline's cross-entropy (its only SSL term): 'labeled' (the
    # spec) each labeled image's own 1 - p_a; 'unlabeled' (the original ce.py with its default
    # weighted cross-entropy) the unlabeled batch's mean 1 - p_a.
    supervised_certainty: str = 'labeled'
    losses_version: int = dataclasses.field(default=LOSSES_VERSION, init=False)

    def __post_init__(self):
        if self.combined_output not in (0, 4):
            raise DC3Error(f'--combined_output must be 0 (no ambiguity head) or 4 (DC3), '
                           f'got {self.combined_output}')
        if not self.prior_fuzzy_distribution <= 1.0:  # also refuses NaN
            raise DC3Error(f'--prior_fuzzy_distribution must be in [0, 1] (or negative: the '
                           f'dataset\'s estimate), got {self.prior_fuzzy_distribution}')
        for name in ('wou', 'wol', 'wf', 'ws'):
            if not 0 <= getattr(self, name) < float('inf'):
                raise DC3Error(f'--{name} must be a finite number >= 0, got {getattr(self, name)}')
        if self.ambiguity_rank not in AMBIGUITY_RANKS:
            raise DC3Error(f'--ambiguity_rank must be one of {", ".join(AMBIGUITY_RANKS)}, '
                           f'got {self.ambiguity_rank!r}')
        if self.supervised_certainty not in SUPERVISED_CERTAINTY:
            raise DC3Error(f'--supervised_certainty must be one of '
                           f'{", ".join(SUPERVISED_CERTAINTY)}, got {self.supervised_certainty!r}')
        if self.overcluster_factor < 1:
            raise DC3Error(f'--overcluster_factor must be >= 1, got {self.overcluster_factor}')
        for name in ('ceinv_labels', 'prob_gradient', 'use_soft_prob', 'use_loss_rescale',
                     'scale_labeled_ceinv'):
            if getattr(self, name) not in (0, 1):
                raise DC3Error(f'--{name} must be 0 or 1, got {getattr(self, name)}')

    @property
    def ambiguity_head(self):
        return self.combined_output == 4

    @property
    def overcluster_head(self):
        return self.ambiguity_head or self.wou > 0 or self.wol > 0

    @property
    def enabled(self):
        """False exactly when the method runs vanilla (no extra heads, no extra losses)."""
        return self.overcluster_head

    def with_dataset_prior(self, dataset_prior):
        """This config, with a negative ``prior_fuzzy_distribution`` replaced by the dataset's
        estimate (the original code's ``-1``, there from per-dataset constants)."""
        if self.prior_fuzzy_distribution >= 0:
            return self
        return dataclasses.replace(self, prior_fuzzy_distribution=float(dataset_prior))


# ---------------------------------------------------------------------------------------------
# Loss functions (per sample)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The mixin
# ---------------------------------------------------------------------------------------------

class DC3Mixin:
    """Adds DC3's heads and losses to an SSL method class (see ``with_dc3``).

    It overrides two hooks of ``libml.train.SSLMethod``: ``heads`` (adds the overclustering and
    ambiguity heads) and ``combine_losses`` (scales the method's terms by certainty and adds
    CE^-1, L_A and L_S). The method's own ``method_losses`` is untouched; its ``views`` says which
    unlabeled view carries ``p_a`` and which one is L_S's other side.
    """
    dc3: DC3Config

    def heads(self):
        heads = super().heads()
        if self.dc3.overcluster_head:
            heads[OVERCLUSTER_HEAD] = self.dc3.overcluster_factor * self.num_classes
        if self.dc3.ambiguity_head:
            heads[AMBIGUITY_HEAD] = 1
        return heads

    def combine_losses(self, batch, outputs, terms):
        cfg = self.dc3
        labeled = outputs.labeled
        views = self.views(outputs)
        main = views.main
        monitors = {}

        # (certain, ambiguous) per-image weights of the labeled images and of the main unlabeled
        # view; (1, 0) without the ambiguity head.
        subsets = [labeled] + ([main] if main is not None else [])
        if cfg.ambiguity_head:
            weights = subset_scaling_weights(
                [tf.sigmoid(subset[AMBIGUITY_HEAD][:, 0]) for subset in subsets],
                cfg.prob_gradient, cfg.use_soft_prob, cfg.use_loss_rescale)
        else:
            ones = [tf.ones(tf.shape(subset[CLASS_HEAD])[:1]) for subset in subsets]
            weights = [(w, tf.zeros_like(w)) for w in ones]
        certain_l = weights[0][0]
        certain_u, ambiguous_u = weights[1] if main is not None else (None, None)

        total = self._scaled_method_losses(terms, certain_l, certain_u, monitors)
        if cfg.wol > 0:
            ceinv = _ceinv_to_partners(labeled[OVERCLUSTER_HEAD], batch['label'], None, cfg)
            scaled = ceinv * certain_l if cfg.scale_labeled_ceinv else ceinv
            weighted = cfg.wol * tf.reduce_mean(scaled)
            total += weighted
            monitors.update({'dc3/ceinv_labeled': tf.reduce_mean(ceinv),
                             'dc3/ceinv_labeled_weighted': weighted})
        if main is not None and cfg.wou > 0:
            pseudo, mask = losses.confident_pseudo_labels(main[CLASS_HEAD], views.confidence)
            # Without label-based partners the original masks nothing.
            mask = mask if cfg.ceinv_labels else tf.ones_like(mask)
            ceinv = _ceinv_to_partners(main[OVERCLUSTER_HEAD], pseudo, mask, cfg)
            weighted = cfg.wou * tf.reduce_mean(ceinv * certain_u)
            total += weighted
            monitors.update({'dc3/ceinv_unlabeled': tf.reduce_mean(ceinv),
                             'dc3/ceinv_unlabeled_weighted': weighted,
                             'dc3/ceinv_mask_rate': tf.reduce_mean(mask)})
        if cfg.ambiguity_head:
            # L_A ranks the main unlabeled view; a method without unlabeled images (the
            # supervised baseline on a dataset without them) ranks the labeled batch instead.
            ranked = main if main is not None else labeled
            total += self._ambiguity_term(ranked, monitors)
            if main is not None and views.other is not None:
                loss_s = soft_cross_entropy(tf.nn.softmax(main[OVERCLUSTER_HEAD]),
                                            tf.nn.softmax(views.other[OVERCLUSTER_HEAD]))
                weighted = cfg.ws * tf.reduce_mean(loss_s * ambiguous_u)
                total += weighted
                monitors.update({'dc3/loss_consistency': tf.reduce_mean(loss_s),
                                 'dc3/loss_consistency_weighted': weighted})
        return total, monitors

    def _scaled_method_losses(self, terms, certain_l, certain_u, monitors):
        """The method's own terms, scaled by certainty. Without an unlabeled loss (the supervised
        baseline) the labeled cross-entropy is the SSL term and is scaled instead."""
        if terms.ssl is not None:
            ssl = tf.reduce_mean(terms.ssl * certain_u)
            monitors['losses/ssl_scaled'] = ssl
            return tf.reduce_mean(terms.labeled_xe) + terms.ssl_weight * ssl
        if self.dc3.supervised_certainty == 'unlabeled' and certain_u is not None:
            return tf.reduce_mean(terms.labeled_xe) * tf.reduce_mean(certain_u)
        return tf.reduce_mean(terms.labeled_xe * certain_l)

    def _ambiguity_term(self, ranked, monitors):
        """``wf * L_A`` on the images of ``ranked``, pseudo-labeled over the global batch (so that
        several replicas call the same images ambiguous as one device would)."""
        cfg = self.dc3
        logit = ranked[AMBIGUITY_HEAD][:, 0]
        prior = cfg.prior_fuzzy_distribution
        scores = ambiguity_rank_scores(logit, ranked[CLASS_HEAD], cfg.ambiguity_rank)
        targets = distribute.on_global_batch(lambda s: ambiguity_pseudo_labels(s, prior), scores)
        loss_a = tf.reduce_mean(ambiguity_loss(logit, targets))
        cutoff = ambiguity_cutoff(distribute.global_batch_size(logit), prior)
        monitors.update({'dc3/loss_ambiguity': loss_a,
                         'dc3/loss_ambiguity_weighted': cfg.wf * loss_a,
                         'dc3/mean_p_a': tf.reduce_mean(tf.sigmoid(logit)),
                         'dc3/rank_cutoff': tf.cast(cutoff, tf.float32),
                         'dc3/pseudo_ambiguous_share': tf.reduce_mean(targets)})
        return cfg.wf * loss_a


def _ceinv_to_partners(overcluster_logits, labels, mask, cfg):
    """Per-image CE^-1 between each image's overcluster output and its partner's (masked).

    With several replicas, partners come from the replica's own batch: CE^-1 differentiates the
    partner's output too, and a partner on another replica would need that replica's backward
    pass. (So this term, unlike the rest of the loss, sees a smaller pool of partners.)
    """
    probs = tf.nn.softmax(overcluster_logits)
    partners = choose_partners(labels, by_label=bool(cfg.ceinv_labels))
    ceinv = inverse_cross_entropy(probs, tf.gather(probs, partners))
    return ceinv if mask is None else ceinv * mask


def with_dc3(method_cls):
    """The method class with DC3 composed in: ``class <Method>DC3(DC3Mixin, <Method>)``."""
    return type(f'{method_cls.__name__}DC3', (DC3Mixin, method_cls),
                {'method_name': method_cls.method_name})

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

This module holds the heads' configuration and ``DC3Mixin``, which any method class composes with
through ``with_dc3``; the loss functions (pure, per sample, tested against NumPy) live in
``libml/dc3_losses.py`` and are re-exported here.
"""
import dataclasses
import sys

import tensorflow as tf

from libml import distribute, hparams, losses
from libml.dc3_losses import (  # noqa: F401  (re-exported: the losses are dc3's API)
    AMBIGUITY_RANKS, CEINV_EPS, EPS, ambiguity_cutoff, ambiguity_loss, ambiguity_pseudo_labels,
    ambiguity_rank_scores, choose_partners, inverse_cross_entropy, log_uncertainty,
    scaling_weights, soft_cross_entropy, subset_scaling_weights)
from libml.errors import DC3Error
from libml.models import CLASS_HEAD

OVERCLUSTER_HEAD = 'overcluster_logits'
AMBIGUITY_HEAD = 'ambiguity_logit'
SUPERVISED_CERTAINTY = ('labeled', 'unlabeled')
# Recorded in args.json: runs of the code before the losses followed the original code (no such
# key) are told apart by scripts/report.py.
LOSSES_VERSION = 2


@dataclasses.dataclass(frozen=True)
class DC3Config:
    """DC3's hyperparameters, named as the original code's flags."""
    combined_output: int = hparams.field(4, '4: DC3 with the ambiguity head; 0: no ambiguity '
                                            'head.')
    wou: float = hparams.field(10.0, 'Weight of CE^-1 on unlabeled images (0: off).')
    wol: float = hparams.field(10.0, 'Weight of CE^-1 on labeled images (0: off).')
    wf: float = hparams.field(0.1, 'Weight of the ambiguity loss L_A.')
    ws: float = hparams.field(0.1, 'Weight of the overcluster consistency L_S.')
    ceinv_labels: int = hparams.field(1, '1: CE^-1 partner has another (pseudo-)label; 0: '
                                         'random.')
    prob_gradient: int = hparams.field(0, '1: gradients flow through the p_a loss weights.')
    use_soft_prob: int = hparams.field(1, '0: round the p_a loss weights to {0, 1}.')
    use_loss_rescale: int = hparams.field(0, '1: rescale the weights by B / sum(weights).')
    # p_A, the expected share of ambiguous images. A negative value (the original's default -1)
    # takes the dataset's own estimate from meta.json (``with_dataset_prior``).
    prior_fuzzy_distribution: float = hparams.field(
        0.6, 'p_A: expected share of ambiguous images; negative (the original code\'s -1): the '
             'dataset\'s estimate from meta.json.')
    overcluster_factor: int = hparams.field(5, 'Overclustering head size k\' = factor * k.')
    # What L_A's batch ranking sorts by. 'p_a' (the paper, the original code and the spec): the
    # head's own output, so L_A's only signal is p_a's earlier ranking; on our synthetic data the
    # head then splits the images by class, not by ambiguity (BENCHMARKS.md, section 8).
    # 'uncertainty' (our addition): 1 - max p_n, so p_a learns to predict which images the
    # classifier is unsure of. The default stays the spec's, so the paper's command lines
    # reproduce the paper.
    ambiguity_rank: str = hparams.field(
        'p_a', 'What L_A\'s batch ranking sorts by: p_a (the paper) or the classifier\'s '
               'uncertainty 1 - max p_n (ours; makes p_a predict ambiguity, see README).',
        choices=AMBIGUITY_RANKS)
    # 1 (ours, the paper's Eq. 1): the labeled CE^-1 is scaled by the labeled images' 1 - p_a like
    # every other certain-image term. 0: unscaled, as in the original code.
    scale_labeled_ceinv: int = hparams.field(
        1, '1: the labeled CE^-1 is scaled by 1 - p_a (the paper\'s Eq. 1); 0: unscaled, as in '
           'the original code.')
    # What scales the supervised baseline's cross-entropy (its only SSL term): 'labeled' (the
    # spec) each labeled image's own 1 - p_a; 'unlabeled' (the original ce.py with its default
    # weighted cross-entropy) the unlabeled batch's mean 1 - p_a.
    supervised_certainty: str = hparams.field(
        'labeled', 'fully_supervised.py with DC3: scale the labeled cross-entropy by each labeled '
                   'image\'s 1 - p_a (labeled, the spec) or by the unlabeled batch\'s mean 1 - '
                   'p_a (unlabeled, the original ce.py).', choices=SUPERVISED_CERTAINTY)
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
# The mixin
# ---------------------------------------------------------------------------------------------

class DC3Mixin:
    """Adds DC3's heads and losses to an SSL method class (see ``with_dc3``).

    It takes the ``DC3Config`` (keyword ``dc3``) and overrides hooks of
    ``libml.method.SSLMethod``: ``heads`` (adds the overclustering and ambiguity heads),
    ``combine_losses`` (scales the method's terms by certainty and adds CE^-1, L_A and L_S),
    ``inference`` (adds p_o and p_a), and the run's hyperparameters and folder name. The method's
    own ``method_losses`` is untouched; its ``views`` says which unlabeled view carries ``p_a``
    and which one is L_S's other side. A method without unlabeled views of its own may declare
    ``views_with_dc3``: the views it reads when DC3 is composed in (the supervised baseline: 2).
    """
    dc3: DC3Config

    def __init__(self, dataset, labeled_size, train, model, dc3=None, **hparams):
        dc3 = dc3 or DC3Config()
        resolved = dc3.with_dataset_prior(dataset.prior_ambiguity)
        if resolved is not dc3:
            print(f'note: --prior_fuzzy_distribution {dc3.prior_fuzzy_distribution:g} takes the '
                  f'dataset\'s estimate, {resolved.prior_fuzzy_distribution:.4g} (meta.json)',
                  file=sys.stderr)
        if train.batch < 2:
            raise DC3Error('DC3 needs --batch >= 2: CE^-1 pairs images within a batch and L_A '
                           'ranks them')
        self.dc3 = resolved
        super().__init__(dataset, labeled_size, train, model, **hparams)

    @property
    def unlabeled_views(self):
        views = super().unlabeled_views
        if not views and self.dataset.has_split('unlabeled'):
            views = getattr(self, 'views_with_dc3', 0)
        return views

    @property
    def has_ambiguity_head(self):
        return self.dc3.ambiguity_head

    @property
    def num_clusters(self):
        return self.heads().get(OVERCLUSTER_HEAD, self.num_classes)

    def hyperparameters(self):
        return {**super().hyperparameters(), **dataclasses.asdict(self.dc3)}

    def name_fields(self):
        cfg = self.dc3
        return (f'co{cfg.combined_output}_wol{cfg.wol:g}_wou{cfg.wou:g}'
                f'_pA{cfg.prior_fuzzy_distribution:g}_{super().name_fields()}')

    def inference_outputs(self, out):
        result = super().inference_outputs(out)
        if OVERCLUSTER_HEAD in out:
            result['cluster_probs'] = tf.nn.softmax(out[OVERCLUSTER_HEAD])
        if AMBIGUITY_HEAD in out:
            result['ambiguity'] = tf.sigmoid(out[AMBIGUITY_HEAD][:, 0])
        return result

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

"""Simulated relabeling with label proposals: DCIC's simulated proposal acceptance (SPA).

DC3's outputs are meant to help people relabel their data: an annotator is shown a proposed class
and accepts it or picks another one. Following the DCIC benchmark (Schmarje et al.,
``src/algorithms/spa.py``), a simulated annotator shown class ``c`` for an image whose
ground-truth soft label is ``g``

* accepts ``c`` with probability ``δ + (0.99 - δ)·g[c]`` (``δ`` models the pull of a proposal,
  per dataset: ``ACCEPTANCE_OFFSETS``), and otherwise
* picks another class ``j ≠ c`` with probability ``g[j] / (1 - g[c])``.

Checking a proposal costs ``CHECK_COST`` = 0.4 of an annotation made from scratch; annotating
from scratch draws the class from ``g`` and costs 1. The estimated soft label of an image is the
histogram of its ``r`` simulated annotations divided by ``r``.

The simulation uses Python's ``random.Random`` and draws in exactly DCIC's order, so that with
DCIC's seed (``DCIC_SEED``) and the same images, ground truth and proposals it gives DCIC's
result draw for draw (``bench/spa_dcic_check.py`` runs both). That includes two details of DCIC's
code, kept on purpose:

* per checked image, DCIC's budget bookkeeping (``AnnotationOracle.get_annotation``) first draws
  ``r`` annotations from ``g`` and throws them away; we make (and discard) the same draws;
* when ``g[c] = 1`` a rejection (probability 0.01 at ``δ = 0``) picks the first class ``≠ c``,
  although its ground-truth probability is 0.

Measures (paper Table 3, DCIC): KL(g ‖ estimate) with DCIC's clipping, macro F1 of the estimate's
argmax against the ground truth's argmax, Cohen's κ between the argmax labels of two independent
simulations (consistency), and the budget in annotations per image. Pure NumPy / scikit-learn.
"""
import random

import numpy as np
import sklearn.metrics

from libml.errors import DC3Error
from libml.metrics import AMBIGUITY_THRESHOLD

CHECK_COST = 0.4  # cost of checking one proposal, in annotations made from scratch (DCIC)
ACCEPT_CEILING = 0.99  # acceptance probability of a proposal whose g[c] is 1 at δ = 0 (DCIC)
DCIC_SEED = 49312  # the seed of DCIC's AnnotationOracle
KL_EPSILON = 1e-5  # DCIC's kl_div clips both distributions to [ε, 1 - ε]

# δ per dataset, from DCIC's spa.py (dataset_proposal_acceptance_offsets, a slope analysis of its
# user studies). Keys are normalised (lower case, letters and digits only). CIFAR-10N shows the
# CIFAR-10 images to crowd workers like CIFAR-10H, so it gets CIFAR-10H's value.
ACCEPTANCE_OFFSETS = {
    'plankton': 0.6481, 'micebone': 0.4103, 'turkey': 0.1417, 'cifar10h': 0.0, 'cifar10n': 0.0,
    'qualitymri': 0.0, 'benthic': 0.4017, 'treeversity1': 0.2608, 'treeversity6': 0.2067,
    'pig': 0.2572, 'synthetic': 0.2608,
}


def normalised_name(name):
    """``'Treeversity#1'`` -> ``'treeversity1'``: how dataset names are matched."""
    return ''.join(ch for ch in str(name).lower() if ch.isalnum())


def acceptance_offset(dataset_name):
    """DCIC's δ for a dataset; a clear error for a dataset DCIC has not measured."""
    key = normalised_name(dataset_name)
    if key not in ACCEPTANCE_OFFSETS:
        known = ', '.join(sorted(ACCEPTANCE_OFFSETS))
        raise DC3Error(f'DCIC has no proposal acceptance offset for dataset {dataset_name!r} '
                       f'(known: {known}); pass --acceptance_offset (0 = annotators are not '
                       'pulled towards proposals)')
    return ACCEPTANCE_OFFSETS[key]


def check_offset(offset):
    """δ must leave the acceptance probability a probability."""
    if not 0.0 <= offset <= ACCEPT_CEILING:
        raise DC3Error(f'acceptance offset {offset} is outside [0, {ACCEPT_CEILING}]')
    return float(offset)


# ---------------------------------------------------------------------------------------------
# Simulated annotators
# ---------------------------------------------------------------------------------------------

def _draw(rng, soft_gt, repetitions):
    """``repetitions`` classes drawn from ``soft_gt`` (DCIC: ``Random.choices`` with weights)."""
    return rng.choices(range(len(soft_gt)), weights=soft_gt, k=repetitions)


def _other_class(soft_gt, proposed, threshold):
    """DCIC's pick after a rejection: the first class ``≠ proposed`` whose cumulative ground-truth
    probability (skipping ``proposed``) reaches ``threshold``."""
    cumulative = 0.0
    last = None
    for j, g in enumerate(soft_gt):
        if j == proposed:
            continue
        cumulative += g
        last = j
        if threshold <= cumulative:
            return j
    # Only reachable when float rounding leaves the sum just below the threshold (DCIC asserts).
    return last


def annotate_from_scratch(soft_gt, repetitions, rng):
    """Counts [n, k] of ``repetitions`` annotations per image drawn from its ground truth."""
    soft_gt = np.asarray(soft_gt, dtype=np.float64)
    counts = np.zeros_like(soft_gt)
    for i, g in enumerate(soft_gt):
        for label in _draw(rng, g, repetitions):
            counts[i, label] += 1
    return counts


def check_proposals(soft_gt, proposed, repetitions, offset, rng):
    """Counts [n, k] of ``repetitions`` simulated checks of proposal ``proposed[i]`` per image."""
    soft_gt = np.asarray(soft_gt, dtype=np.float64)
    counts = np.zeros_like(soft_gt)
    for i, (g, c) in enumerate(zip(soft_gt, np.asarray(proposed, dtype=np.int64))):
        c = int(c)
        _draw(rng, g, repetitions)  # DCIC's budget bookkeeping draws (and discards) annotations
        accept = offset + (ACCEPT_CEILING - offset) * g[c]
        for _ in range(repetitions):
            if rng.random() <= accept:
                label = c
            else:
                label = _other_class(g, c, rng.random() * (1.0 - g[c]))
            counts[i, label] += 1
    return counts


def simulate(soft_gt, proposed, repetitions, offset, seed):
    """One simulated relabeling of every image; ``proposed`` None means from scratch.

    Returns ``(estimated soft labels [n, k], weighted budget per image)``.
    """
    if repetitions < 1:
        raise DC3Error(f'repetitions {repetitions} must be at least 1')
    rng = random.Random(seed)
    if proposed is None:
        counts = annotate_from_scratch(soft_gt, repetitions, rng)
        cost = float(repetitions)
    else:
        counts = check_proposals(soft_gt, proposed, repetitions, offset, rng)
        cost = CHECK_COST * repetitions
    return counts / repetitions, cost


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------

def kl_divergence(soft_gt, estimate, epsilon=KL_EPSILON):
    """Mean KL(g ‖ estimate) over images, both clipped to [ε, 1 - ε] as DCIC's ``kl_div``."""
    y = np.clip(np.asarray(soft_gt, dtype=np.float64), epsilon, 1 - epsilon)
    x = np.clip(np.asarray(estimate, dtype=np.float64), epsilon, 1 - epsilon)
    return float(np.mean(np.sum(y * np.log(y / x), axis=1)))


def macro_f1(soft_gt, estimate):
    """Macro F1 of argmax(estimate) against argmax(g) over the classes of the data."""
    k = np.asarray(soft_gt).shape[1]
    return float(sklearn.metrics.f1_score(np.argmax(soft_gt, axis=1), np.argmax(estimate, axis=1),
                                          labels=list(range(k)), average='macro',
                                          zero_division=0))


def cohen_kappa(estimate_a, estimate_b):
    """Cohen's κ between the argmax labels of two simulations of the same images."""
    a, b = np.argmax(estimate_a, axis=1), np.argmax(estimate_b, axis=1)
    if len(np.union1d(a, b)) == 1:
        return 1.0  # both give every image the same single class: complete agreement
    return float(sklearn.metrics.cohen_kappa_score(a, b))


def equal_kl_speedup(reference_budgets, reference_kls, budget, kl):
    """How many times the budget annotating from scratch needs to reach ``kl``.

    ``reference_*`` is the from-scratch curve (budgets ascending); it is interpolated linearly
    between its points. Returns ``(speed-up, qualifier)``: ``'>'`` when even the largest
    from-scratch budget does not reach ``kl`` (the value is a lower bound), ``'<'`` when the
    smallest already beats it (an upper bound), else ``''``.
    """
    budgets = np.asarray(reference_budgets, dtype=np.float64)
    kls = np.asarray(reference_kls, dtype=np.float64)
    if kl < kls.min():
        return float(budgets[np.argmin(kls)] / budget), '>'
    if kl >= kls[0]:
        return float(budgets[0] / budget), '<'
    for j in range(1, len(budgets)):
        if kls[j] <= kl:
            t = (kls[j - 1] - kl) / (kls[j - 1] - kls[j])
            return float((budgets[j - 1] + t * (budgets[j] - budgets[j - 1])) / budget), ''
    return float(budgets[-1] / budget), '>'  # not reached for a monotone curve


# ---------------------------------------------------------------------------------------------
# Proposals from a run's predictions
# ---------------------------------------------------------------------------------------------

def cluster_majorities(labeled_clusters, labeled_labels, num_classes):
    """``{cluster: class}``: the most frequent label among the labeled images of each cluster.

    As DCIC's fuzzy mapping, the cluster's class histogram comes from the images whose labels
    are known (the labeled split); ties go to the lower class id.
    """
    majorities = {}
    for cluster in np.unique(labeled_clusters):
        histogram = np.bincount(np.asarray(labeled_labels)[labeled_clusters == cluster],
                                minlength=num_classes)
        majorities[int(cluster)] = int(np.argmax(histogram))
    return majorities


def proposals(class_probs, ambiguity=None, cluster_ids=None, majorities=None):
    """Proposed class per image and whether it came from the cluster.

    Vanilla runs (``ambiguity`` None) propose argmax p_n for every image. DC3 runs propose argmax
    p_n for images predicted certain (p_a < 0.5) and, for images predicted ambiguous, the
    majority class of their cluster's labeled members (``majorities``); a cluster without a
    labeled member falls back to argmax p_n (DCIC picks a random class there).
    Returns ``(proposed [n], from_cluster [n] bool)``.
    """
    proposed = np.argmax(class_probs, axis=1)
    from_cluster = np.zeros(len(proposed), dtype=bool)
    if ambiguity is None:
        return proposed, from_cluster
    ambiguous = np.asarray(ambiguity) >= AMBIGUITY_THRESHOLD
    for i in np.flatnonzero(ambiguous):
        cluster = int(cluster_ids[i])
        if cluster in majorities:
            proposed[i] = majorities[cluster]
            from_cluster[i] = True
    return proposed, from_cluster

"""Evaluation metrics of DC3 (paper Section 4 / DC3-SPEC "Metrics"), in pure NumPy + scikit-learn.

The training loop calls ``split_metrics`` once per split and report; the report scripts recompute
the same numbers from a prediction CSV with ``libml.prediction_csv.metrics_from_csv``. Every value
is a fraction in [0, 1] (tables multiply by 100). A value that is undefined for a split — F1 when
no image is predicted certain, the inner distance when none is predicted ambiguous — is ``None``,
never 0, so that it can never win a "best run" comparison by accident.
"""
import numpy as np
import sklearn.metrics

# An image is predicted ambiguous when its ambiguity probability p_a reaches this value.
AMBIGUITY_THRESHOLD = 0.5
# A run whose ambiguous share is at most this, or at least 1 - this, is degenerate.
DEGENERATE_SHARE = 0.1
_PROB_FLOOR = 1e-7


def inner_distance(soft_labels, groups):
    """Mean over non-empty groups of the mean L2 distance of a soft label to its group's mean."""
    per_group = []
    for g in np.unique(groups):
        members = soft_labels[groups == g]
        per_group.append(np.linalg.norm(members - members.mean(axis=0), axis=1).mean())
    return float(np.mean(per_group)) if per_group else None


def split_metrics(labels, soft_labels, class_probs, cluster_ids, ambiguity=None):
    """All DC3 and FixMatch-style metrics of one split.

    Args:
      labels: [n] int hard labels (used for ``accuracy`` and ``macro_f1``).
      soft_labels: [n, k] estimated soft labels l̂ (rows sum to 1).
      class_probs: [n, k] classification output p_n.
      cluster_ids: [n] int argmax of the overclustering output p_o.
      ambiguity: [n] ambiguity probability p_a, or None for a run without an ambiguity head.

    Images with ``ambiguity >= 0.5`` are predicted ambiguous, the others certain.

    * ``f1_certain``: weighted F1 of argmax p_n against argmax l̂ over the certain images.
    * ``inner_distance``: d over the ambiguous images grouped by ``cluster_ids``.
    * ``d_minus_f1``: d - F1 (lower is better).
    * ``ambiguous_share``: share of images predicted ambiguous.
    * ``degenerate``: the ambiguity head predicts (almost) only one kind, i.e. ambiguous share
      <= 0.1 or >= 0.9. Vanilla runs (``ambiguity is None``) predict every image certain by
      construction and are never flagged degenerate; for them F1 is taken over all images and d
      over all images grouped by argmax p_n (``cluster_ids`` is ignored), as in the paper.
    * ``accuracy``, ``macro_f1``: argmax p_n against ``labels`` over all images (macro F1 over
      the classes present in labels or predictions).
    * ``kl``: mean KL(l̂ || p_n), with p_n clipped at 1e-7.
    * ``num_images``.
    """
    labels = np.asarray(labels).astype(np.int64)
    soft_labels = np.asarray(soft_labels, dtype=np.float64)
    class_probs = np.asarray(class_probs, dtype=np.float64)
    predicted = class_probs.argmax(axis=1)
    target = soft_labels.argmax(axis=1)
    num_images = len(labels)

    if ambiguity is None:
        ambiguous = np.zeros(num_images, dtype=bool)
        certain = ~ambiguous
        distance = inner_distance(soft_labels, predicted)
    else:
        ambiguous = np.asarray(ambiguity, dtype=np.float64) >= AMBIGUITY_THRESHOLD
        certain = ~ambiguous
        distance = inner_distance(soft_labels[ambiguous], np.asarray(cluster_ids)[ambiguous])

    f1 = None
    if certain.any():
        f1 = float(sklearn.metrics.f1_score(target[certain], predicted[certain],
                                            average='weighted', zero_division=0))
    share = float(ambiguous.mean()) if num_images else None
    degenerate = (ambiguity is not None and share is not None
                  and (share <= DEGENERATE_SHARE or share >= 1 - DEGENERATE_SHARE))

    accuracy = macro_f1 = kl = None
    if num_images:
        accuracy = float(np.mean(predicted == labels))
        macro_f1 = float(sklearn.metrics.f1_score(labels, predicted, average='macro',
                                                  zero_division=0))
        log_ratio = np.log(np.where(soft_labels > 0, soft_labels, 1.0)) - np.log(
            np.clip(class_probs, _PROB_FLOOR, 1.0))
        kl = float(np.mean(np.sum(np.where(soft_labels > 0, soft_labels * log_ratio, 0.0),
                                  axis=1)))
    return {
        'f1_certain': f1,
        'inner_distance': distance,
        'd_minus_f1': distance - f1 if distance is not None and f1 is not None else None,
        'ambiguous_share': share,
        'degenerate': bool(degenerate),
        'accuracy': accuracy,
        'macro_f1': macro_f1,
        'kl': kl,
        'num_images': int(num_images),
    }


def auroc(scores, is_positive):
    """ROC AUC of ``scores`` ranking the positives first; None if only one class is present."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return None
    return float(sklearn.metrics.roc_auc_score(is_positive, np.asarray(scores, dtype=np.float64)))

"""libml.metrics against hand-computed values and a loop-based reference written here."""
import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from libml import metrics, prediction_csv


def one_hot_probs(predicted, k, confidence=0.8):
    """Class probabilities whose argmax is ``predicted``."""
    probs = np.full((len(predicted), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def reference_inner_distance(soft, groups):
    """d written out with Python loops: mean over groups of mean distance to the group mean."""
    members = {}
    for row, g in zip(soft, groups):
        members.setdefault(int(g), []).append(row)
    per_group = []
    for rows in members.values():
        mean = [sum(col) / len(rows) for col in zip(*rows)]
        dists = [math.sqrt(sum((a - b) ** 2 for a, b in zip(r, mean))) for r in rows]
        per_group.append(sum(dists) / len(dists))
    return sum(per_group) / len(per_group) if per_group else None


# A five-image example small enough to compute by hand.
SOFT = np.array([[1, 0, 0], [.5, .5, 0], [0, 0, 1], [1, 0, 0], [0, .5, .5]], dtype=float)
LABELS = np.array([0, 1, 2, 0, 1])
PREDICTED = np.array([0, 1, 1, 0, 2])
CLUSTERS = np.array([9, 5, 9, 5, 7])
AMBIGUITY = np.array([0.1, 0.9, 0.2, 0.5, 0.7])  # 0.5 already counts as ambiguous


def test_hand_computed_example():
    m = metrics.split_metrics(LABELS, SOFT, one_hot_probs(PREDICTED, 3), CLUSTERS, AMBIGUITY)
    # Certain: images 0 (target 0, predicted 0) and 2 (target 2, predicted 1). Class 1 has no
    # support among them, so weighted F1 = (1 * 1 + 1 * 0) / 2.
    assert m['f1_certain'] == pytest.approx(0.5)
    # Ambiguous: cluster 5 = images 1, 3 (mean [.75, .25, 0], both at distance sqrt(.125)),
    # cluster 7 = image 4 alone (distance 0).
    assert m['inner_distance'] == pytest.approx(math.sqrt(0.125) / 2)
    assert m['d_minus_f1'] == pytest.approx(math.sqrt(0.125) / 2 - 0.5)
    assert m['ambiguous_share'] == pytest.approx(0.6)
    assert m['degenerate'] is False
    # Against the hard labels: images 0, 1, 3 right.
    assert m['accuracy'] == pytest.approx(0.6)
    # Per class F1: class 0 -> 1, class 1 -> 0.5, class 2 -> 0.
    assert m['macro_f1'] == pytest.approx(0.5)
    assert m['num_images'] == 5


def test_kl_against_explicit_sum():
    probs = one_hot_probs(PREDICTED, 3)
    probs[0] = [1.0, 0.0, 0.0]  # zero probabilities must be clipped, not produce inf
    probs[2] = [0.0, 1.0, 0.0]
    expected = 0.0
    for s_row, p_row in zip(SOFT, probs):
        expected += sum(s * math.log(s / max(p, 1e-7)) for s, p in zip(s_row, p_row) if s > 0)
    m = metrics.split_metrics(LABELS, SOFT, probs, CLUSTERS, AMBIGUITY)
    assert m['kl'] == pytest.approx(expected / len(SOFT))
    assert math.isfinite(m['kl'])


@pytest.mark.parametrize('seed', range(5))
def test_random_splits_match_reference(seed):
    rng = np.random.default_rng(seed)
    n, k = 60, 4
    soft = rng.dirichlet(np.full(k, 0.5), size=n)
    probs = rng.dirichlet(np.ones(k), size=n)
    labels = rng.integers(0, k, n)
    clusters = rng.integers(0, 3 * k, n)
    ambiguity = rng.random(n)
    m = metrics.split_metrics(labels, soft, probs, clusters, ambiguity)

    amb = ambiguity >= 0.5
    f1 = f1_score(soft[~amb].argmax(1), probs[~amb].argmax(1), average='weighted')
    d = reference_inner_distance(soft[amb], clusters[amb])
    assert m['f1_certain'] == pytest.approx(f1)
    assert m['inner_distance'] == pytest.approx(d)
    assert m['d_minus_f1'] == pytest.approx(d - f1)
    assert m['ambiguous_share'] == pytest.approx(amb.mean())
    assert m['accuracy'] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert m['macro_f1'] == pytest.approx(f1_score(labels, probs.argmax(1), average='macro'))
    json.dumps(m)  # plain Python types, ready for metrics.jsonl


def test_singleton_clusters_have_zero_distance():
    soft = np.array([[.2, .8], [.6, .4], [.5, .5]])
    m = metrics.split_metrics([0, 1, 0], soft, one_hot_probs([0, 1, 0], 2), [0, 1, 2],
                              [0.9, 0.9, 0.1])
    assert m['inner_distance'] == 0.0


def test_no_image_ambiguous_leaves_d_undefined():
    m = metrics.split_metrics(LABELS, SOFT, one_hot_probs(PREDICTED, 3), CLUSTERS,
                              np.full(5, 0.49))
    assert m['inner_distance'] is None
    assert m['d_minus_f1'] is None
    assert m['f1_certain'] == pytest.approx(
        f1_score(SOFT.argmax(1), PREDICTED, average='weighted'))
    assert m['ambiguous_share'] == 0.0
    assert m['degenerate'] is True


def test_all_images_ambiguous_leaves_f1_undefined():
    m = metrics.split_metrics(LABELS, SOFT, one_hot_probs(PREDICTED, 3), CLUSTERS, np.ones(5))
    assert m['f1_certain'] is None
    assert m['d_minus_f1'] is None
    assert m['inner_distance'] == pytest.approx(reference_inner_distance(SOFT, CLUSTERS))
    assert m['degenerate'] is True


def test_vanilla_counts_everything_certain_and_clusters_by_class():
    probs = one_hot_probs(PREDICTED, 3)
    m = metrics.split_metrics(LABELS, SOFT, probs, CLUSTERS, None)
    assert m['f1_certain'] == pytest.approx(
        f1_score(SOFT.argmax(1), PREDICTED, average='weighted'))
    # Grouped by predicted class {0: images 0, 3}, {1: images 1, 2}, {2: image 4}; the cluster
    # ids passed in are ignored.
    assert m['inner_distance'] == pytest.approx(reference_inner_distance(SOFT, PREDICTED))
    assert m['inner_distance'] != pytest.approx(reference_inner_distance(SOFT, CLUSTERS))
    assert m['ambiguous_share'] == 0.0
    assert m['degenerate'] is False


@pytest.mark.parametrize('num_ambiguous, degenerate', [
    (0, True), (1, True), (2, False), (5, False), (8, False), (9, True), (10, True)])
def test_degenerate_boundaries(num_ambiguous, degenerate):
    n = 10
    ambiguity = np.where(np.arange(n) < num_ambiguous, 0.8, 0.2)
    soft = np.tile([.5, .5], (n, 1))
    m = metrics.split_metrics(np.zeros(n, int), soft, one_hot_probs(np.zeros(n, int), 2),
                              np.zeros(n, int), ambiguity)
    assert m['degenerate'] is degenerate
    assert m['ambiguous_share'] == pytest.approx(num_ambiguous / n)


def write_prediction_csv(path, labels, soft, probs, clusters, ambiguity):
    k = soft.shape[1]
    frame = pd.DataFrame({'path': [f'img_{i}.png' for i in range(len(labels))], 'split': 'val',
                          'index': np.arange(len(labels)), 'label': labels})
    for i in range(k):
        frame[f'soft_{i}'] = soft[:, i]
    for i in range(k):
        frame[f'prob_{i}'] = probs[:, i]
    frame['cluster'] = clusters
    frame['cluster_prob'] = 0.9
    frame['ambiguity'] = np.nan if ambiguity is None else ambiguity
    is_cluster = np.zeros(len(labels), bool) if ambiguity is None else ambiguity >= 0.5
    frame['output_kind'] = np.where(is_cluster, 'cluster', 'class')
    frame['output'] = np.where(is_cluster, clusters, probs.argmax(1))
    frame.to_csv(path, index=False)


@pytest.mark.parametrize('vanilla', [False, True])
def test_metrics_from_csv_equals_split_metrics(tmp_path, vanilla):
    rng = np.random.default_rng(3)
    n, k = 40, 3
    soft = rng.dirichlet(np.ones(k), size=n)
    probs = rng.dirichlet(np.ones(k), size=n)
    labels = rng.integers(0, k, n)
    clusters = rng.integers(0, 5 * k, n)
    ambiguity = None if vanilla else rng.random(n)
    write_prediction_csv(tmp_path / 'val.csv', labels, soft, probs, clusters, ambiguity)
    with open(tmp_path / 'val.csv', newline='') as f:
        cells = [row['ambiguity'] for row in csv.DictReader(f)]
    assert all(c == '' for c in cells) == vanilla  # vanilla runs leave the column empty
    from_csv = prediction_csv.metrics_from_csv(tmp_path / 'val.csv')
    direct = metrics.split_metrics(labels, soft, probs, clusters, ambiguity)
    assert from_csv.keys() == direct.keys()
    for key, value in direct.items():
        assert from_csv[key] == pytest.approx(value), key
    assert from_csv['degenerate'] is direct['degenerate']


def test_auroc():
    # Of the 4 (positive, negative) pairs, 3 are ordered correctly.
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert metrics.auroc([0.1, 0.2, 0.9], [False, False, True]) == pytest.approx(1.0)
    assert metrics.auroc([0.1, 0.2], [1, 1]) is None
    assert metrics.auroc([0.1, 0.2], [0, 0]) is None

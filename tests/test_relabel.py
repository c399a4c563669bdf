"""Simulated relabeling (libml/relabel.py, scripts/simulate_relabeling.py).

The simulated annotator is checked three ways: its annotation frequencies against the
probabilities written down from DCIC's description (δ + (0.99 − δ)·g[c], else g renormalised
without c), its random stream against a transcription of DCIC's ``spa.py`` loop, and the
measures against a few lines of NumPy each. The script runs on fake run folders whose prediction
CSVs are written by ``libml.prediction_csv.write_predictions``.
"""
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
from libml import prediction_csv, relabel
from libml.errors import DC3Error
from scripts import simulate_relabeling as simulate


# ---------------------------------------------------------------------------------------------
# The simulated annotator
# ---------------------------------------------------------------------------------------------

def frequencies(soft_gt, proposal, offset, n=20000, seed=3):
    """Share of each class among n single simulated checks of one image."""
    gt = np.tile(soft_gt, (n, 1))
    proposed = None if proposal is None else np.full(n, proposal)
    estimate, _ = relabel.simulate(gt, proposed, 1, offset, seed)
    return estimate.mean(axis=0)


@pytest.mark.parametrize('soft_gt, proposal, offset', [
    ([0.5, 0.3, 0.2], 1, 0.2),
    ([0.5, 0.3, 0.2], 2, 0.0),
    ([0.1, 0.0, 0.9], 0, 0.6481),
])
def test_acceptance_probabilities(soft_gt, proposal, offset):
    g = np.array(soft_gt)
    accept = offset + (0.99 - offset) * g[proposal]
    expected = (1 - accept) * g / (1 - g[proposal])
    expected[proposal] = accept
    n = 20000
    tolerance = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-9
    np.testing.assert_array_less(np.abs(frequencies(soft_gt, proposal, offset, n) - expected),
                                 tolerance)


def test_certain_proposal_is_rejected_once_in_a_hundred_towards_the_first_other_class():
    # DCIC's quirk: with g[c] = 1 a rejection picks the first class != c although g is 0 there.
    f = frequencies([0.0, 1.0, 0.0], 1, 0.0)
    assert abs(f[1] - 0.99) < 5 * math.sqrt(0.99 * 0.01 / 20000)
    assert f[0] == pytest.approx(1 - f[1]) and f[2] == 0


def test_annotating_from_scratch_follows_the_ground_truth():
    g = np.array([0.2, 0.0, 0.5, 0.3])
    tolerance = 5 * np.sqrt(g * (1 - g) / 20000) + 1e-9
    np.testing.assert_array_less(np.abs(frequencies(g, None, None) - g), tolerance)


def test_budget_and_estimates():
    gt = np.array([[0.5, 0.5], [1.0, 0.0]])
    estimate, cost = relabel.simulate(gt, None, 3, None, 0)
    assert cost == 3
    np.testing.assert_allclose(estimate.sum(axis=1), 1)
    assert set(np.round(estimate.ravel() * 3, 6)) <= {0, 1, 2, 3}
    assert estimate[1, 0] == 1  # g = (1, 0): every annotation from scratch is class 0
    _, cost = relabel.simulate(gt, np.array([0, 1]), 5, 0.1, 0)
    assert cost == pytest.approx(0.4 * 5)
    with pytest.raises(DC3Error):
        relabel.simulate(gt, None, 0, None, 0)


def dcic_spa_transcribed(soft_gt, proposals, repetitions, delta, seed):
    """DCIC's SimulatedProposalAcceptance.simulate_proposal_acceptance over the images in order,
    with its AnnotationOracle's random.Random (get_annotation draws for the budget first)."""
    r = random.Random(seed)
    results = []
    for soft, proposed_class in zip(soft_gt, proposals):
        r.choices(range(len(soft)), weights=soft, k=repetitions)   # oracle.get_annotation
        simulated_label = np.zeros(len(soft))
        for _ in range(repetitions):
            accept_rate = delta + (0.99 - delta) * soft[proposed_class]
            simulated_class = -1
            if r.random() <= accept_rate:
                simulated_class = proposed_class
            else:
                max_value = 1 - soft[proposed_class]
                rand_select = r.random() * max_value
                sum_gt = 0
                for k, g in enumerate(soft):
                    if proposed_class != k:
                        sum_gt += g
                        if rand_select <= sum_gt:
                            simulated_class = k
                            break
            simulated_label[simulated_class] += 1
        results.append(simulated_label / repetitions)
    return np.array(results)


@pytest.mark.parametrize('repetitions, delta', [(1, 0.0), (3, 0.2608), (5, 0.6481)])
def test_same_random_stream_as_dcic(repetitions, delta):
    rng = np.random.default_rng(repetitions)
    gt = rng.dirichlet(np.ones(5) * 0.5, size=300)
    gt[:20] = np.eye(5)[rng.integers(0, 5, 20)]  # some certain images
    proposals = rng.integers(0, 5, 300)
    ours, _ = relabel.simulate(gt, proposals, repetitions, delta, relabel.DCIC_SEED)
    np.testing.assert_array_equal(
        ours, dcic_spa_transcribed(gt, proposals, repetitions, delta, relabel.DCIC_SEED))


def test_offsets_per_dataset():
    assert relabel.acceptance_offset('CIFAR10H') == 0.0
    assert relabel.acceptance_offset('cifar10n') == 0.0
    assert relabel.acceptance_offset('Treeversity#1') == 0.2608
    assert relabel.acceptance_offset('Plankton') == 0.6481
    with pytest.raises(DC3Error, match='--acceptance_offset'):
        relabel.acceptance_offset('my_own_data')
    with pytest.raises(DC3Error):
        relabel.check_offset(1.0)


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------

def test_kl_divergence_matches_dcic_formula():
    gt = np.array([[1.0, 0.0], [0.25, 0.75]])
    est = np.array([[0.5, 0.5], [0.0, 1.0]])
    e = 1e-5
    first = (1 - e) * math.log((1 - e) / 0.5) + e * math.log(e / 0.5)
    second = 0.25 * math.log(0.25 / e) + 0.75 * math.log(0.75 / (1 - e))
    assert relabel.kl_divergence(gt, est) == pytest.approx((first + second) / 2, rel=1e-12)


def numpy_kappa(a, b, k):
    table = np.zeros((k, k))
    np.add.at(table, (a, b), 1)
    table /= table.sum()
    observed = np.trace(table)
    chance = table.sum(axis=1) @ table.sum(axis=0)
    return (observed - chance) / (1 - chance)


def numpy_macro_f1(true, pred, k):
    scores = []
    for c in range(k):
        tp = np.sum((pred == c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        fn = np.sum((pred != c) & (true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return np.mean(scores)


def test_kappa_and_macro_f1_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    b[:120] = a[:120]
    one_hot = np.eye(4)
    assert relabel.cohen_kappa(one_hot[a], one_hot[b]) == pytest.approx(numpy_kappa(a, b, 4))
    assert relabel.macro_f1(one_hot[a], one_hot[b]) == pytest.approx(numpy_macro_f1(a, b, 4))
    # A class absent from both counts as F1 0 in the macro mean over the data's classes.
    five = np.eye(5)
    assert relabel.macro_f1(five[a], five[b]) == pytest.approx(numpy_macro_f1(a, b, 5))
    assert relabel.cohen_kappa(one_hot[np.zeros(5, int)], one_hot[np.zeros(5, int)]) == 1.0


def test_equal_kl_speedup():
    budgets, kls = [1, 2, 4], [3.0, 2.0, 1.0]
    assert relabel.equal_kl_speedup(budgets, kls, 0.4, 1.5) == (pytest.approx(3 / 0.4), '')
    assert relabel.equal_kl_speedup(budgets, kls, 0.4, 0.5) == (pytest.approx(10.0), '>')
    assert relabel.equal_kl_speedup(budgets, kls, 0.4, 3.5) == (pytest.approx(2.5), '<')


# ---------------------------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------------------------

def test_dc3_proposes_the_cluster_majority_for_ambiguous_images():
    majorities = relabel.cluster_majorities(np.array([7, 7, 7, 3, 3]), np.array([2, 1, 2, 0, 1]),
                                            3)
    assert majorities == {7: 2, 3: 0}  # cluster 3 ties 0 and 1: the lower id
    probs = np.array([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8], [.6, .3, .1]])
    ambiguity = np.array([.1, .9, .7, .5])
    clusters = np.array([3, 7, 9, 3])  # cluster 9 has no labeled member
    proposed, from_cluster = relabel.proposals(probs, ambiguity, clusters, majorities)
    np.testing.assert_array_equal(proposed, [0, 2, 2, 0])
    np.testing.assert_array_equal(from_cluster, [False, True, False, True])
    proposed, from_cluster = relabel.proposals(probs)
    np.testing.assert_array_equal(proposed, [0, 1, 2, 0])
    assert not from_cluster.any()


# ---------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------

K = 3


def make_run(root, name, soft, probs, ambiguity=None, clusters=None, dataset='cifar10n',
             train_rows=None):
    """A run folder with one report: ``unlabeled.csv`` from the arrays, ``train.csv`` if given."""
    report = root / name / 'reports' / 'img0000000256'
    report.mkdir(parents=True)
    n = len(soft)

    def pred(paths, soft_, probs_, ambiguity_, clusters_):
        p = {'path': np.array(paths), 'index': np.arange(len(paths)),
             'label': np.argmax(soft_, axis=1), 'soft_label': np.asarray(soft_, np.float32),
             'probs': np.asarray(probs_, np.float32)}
        if ambiguity_ is not None:
            p['ambiguity'] = np.asarray(ambiguity_, np.float32)
            p['cluster_probs'] = np.eye(6, dtype=np.float32)[clusters_] * 0.9 + 0.1 / 6
        return p

    prediction_csv.write_predictions(str(report / 'unlabeled.csv'), 'unlabeled',
                            pred([f'u/{i}.png' for i in range(n)], soft, probs, ambiguity,
                                 clusters))
    if train_rows is not None:
        labels, train_clusters = train_rows
        m = len(labels)
        prediction_csv.write_predictions(str(report / 'train.csv'), 'train',
                                pred([f't/{i}.png' for i in range(m)], np.eye(K)[labels],
                                     np.full((m, K), 1 / K), np.full(m, 0.9), train_clusters))
    (root / name / 'args.json').write_text(json.dumps({'dataset_name': dataset}))
    return str(root / name)


@pytest.fixture()
def runs(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    soft = rng.dirichlet(np.ones(K) * 0.3, size=n)
    truth = soft.argmax(axis=1)
    good = np.eye(K)[truth] * 0.7 + 0.1       # proposes the ground truth's class
    bad = np.eye(K)[(truth + 1) % K] * 0.7 + 0.1  # always a wrong class
    vanilla = make_run(tmp_path, 'vanilla', soft, bad)
    # DC3: half the images ambiguous, in cluster 4 whose labeled members are all class 2.
    ambiguity = np.where(np.arange(n) % 2 == 0, 0.9, 0.1)
    dc3 = make_run(tmp_path, 'dc3', soft, good, ambiguity, np.full(n, 4),
                   train_rows=(np.array([2, 2, 2, 0]), np.array([4, 4, 4, 5])))
    return tmp_path, vanilla, dc3, soft


def test_script_table(runs):
    root, vanilla, dc3, soft = runs
    rows, estimates = simulate.run_simulations(
        {'vanilla': [vanilla], 'dc3': [dc3]}, ['unlabeled'], [1, 3], [0.5], 2, 7,
        progress=lambda _: None)
    # "none" is simulated once for the shared images, at each number of annotations.
    assert sorted(rows[rows['source'] == 'none']['repetitions']) == [1, 3]
    at1 = rows[rows['repetitions'] == 1].set_index('source')
    assert at1.loc['vanilla', 'proposal_right'] == 0
    truth = soft.argmax(axis=1)
    expected_dc3 = np.where(np.arange(len(soft)) % 2 == 0, 2, truth)
    assert at1.loc['dc3', 'proposal_right'] == pytest.approx(np.mean(expected_dc3 == truth))
    assert at1.loc['dc3', 'from_cluster'] == 0.5
    # With δ = 0.5, annotators follow right proposals more than wrong ones.
    assert at1.loc['dc3', 'accepted'] > at1.loc['vanilla', 'accepted']
    assert at1.loc['dc3', 'macro_f1'] > at1.loc['vanilla', 'macro_f1']
    assert at1.loc['none', 'budget'] == 1 and at1.loc['dc3', 'budget'] == pytest.approx(0.4)
    frame = estimates[('dc3', 0)]
    np.testing.assert_array_equal(frame['proposal'], expected_dc3)
    np.testing.assert_allclose(frame[[f'est_{j}' for j in range(K)]].sum(axis=1), 1)

    out = root / 'out'
    table = simulate.write_outputs(str(out), rows, estimates, 1)
    assert list(table['source']) == ['none', 'vanilla', 'dc3']
    md = (out / 'table3.md').read_text()
    assert '| dc3 | 0.5 | 1 |' in md and '| none | — | 1 |' in md
    assert len(pd.read_csv(out / 'estimates' / 'dc3-0.csv')) == len(soft)
    assert len(pd.read_csv(out / 'relabeling.csv')) == 2 + 2 + 2


def test_dc3_run_without_cluster_proposals_proposes_its_classes(runs):
    _, _, dc3, soft = runs
    rows, estimates = simulate.run_simulations({'dc3': [dc3]}, ['unlabeled'], [1], [0.5], 2, 7,
                                               progress=lambda _: None, cluster_proposals=False)
    frame = estimates[('dc3', 0)]
    np.testing.assert_array_equal(frame['proposal'], soft.argmax(axis=1))  # its 'good' p_n
    assert not frame['proposal_from_cluster'].any()


def test_dataset_offset_is_used_by_default(runs):
    _, vanilla, _, _ = runs
    rows, _ = simulate.run_simulations({'vanilla': [vanilla]}, ['unlabeled'], [1], [], 2, 7,
                                       progress=lambda _: None)
    assert set(rows['offset'].dropna()) == {0.0}  # CIFAR-10N: CIFAR-10H's δ


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / 'scripts' / 'simulate_relabeling.py'),
                           *args], capture_output=True, text=True, cwd=REPO)


def test_cli_and_its_errors(runs):
    root, vanilla, dc3, _ = runs
    out = root / 'cli_out'
    result = run_cli('--source', f'vanilla={vanilla}', '--source', f'dc3={dc3}', '--splits',
                     'unlabeled', '--repetitions', '1,2', '--out', str(out))
    assert result.returncode == 0, result.stderr
    assert (out / 'table3.csv').exists() and (out / 'relabeling.csv').exists()

    bad = [(['--source', f'x{vanilla}'], 'NAME=RUN_DIR'),
           (['--source', f'none={vanilla}'], 'reserved'),
           (['--source', f'v={vanilla}', '--splits', 'val'], "no 'val' predictions"),
           (['--source', f'v={vanilla}', '--table_repetitions', '4'], 'is not one of'),
           (['--source', f'v={vanilla}', '--acceptance_offset', '1.5'], 'outside'),
           (['--source', f'v={vanilla}', '--simulations', '1'], 'at least 2'),
           (['--source', f'v={root / "missing"}'], 'not found')]
    for args, message in bad:
        # Flags given later win, so the case's own flags override these defaults.
        result = run_cli('--splits', 'unlabeled', '--out', str(root / 'bad_out'), *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    assert not (root / 'bad_out').exists()


def test_dc3_run_without_labeled_csv_is_an_error(tmp_path):
    soft = np.eye(K)[[0, 1, 2]]
    run = make_run(tmp_path, 'dc3', soft, soft, np.full(3, 0.9), np.zeros(3, int))
    with pytest.raises(DC3Error, match='train.csv not found'):
        simulate.read_run(run, ['unlabeled'])

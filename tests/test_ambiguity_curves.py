"""bench/ambiguity_curves.py on a fake run folder: every report becomes a row, AUROCs as sklearn's."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bench import ambiguity_curves
from libml.errors import DC3Error


def fake_run(root, reports, name='MeanTeacher_x', train_kimg=2.0, seed=1):
    run = root / 'cifar10n.1@-1-10' / name
    run.mkdir(parents=True)
    (run / 'args.json').write_text(json.dumps(
        {'method': 'MeanTeacher', 'dataset_seed': seed, 'combined_output': 4, 'wou': 10, 'wol': 10,
         'prior_fuzzy_distribution': 0.6, 'losses_version': 2, 'train_kimg': train_kimg}))
    rng = np.random.default_rng(seed)
    with open(run / 'metrics.jsonl', 'w') as f:
        for images, f1 in reports:
            soft = np.eye(3)[rng.integers(3, size=40)]
            soft[::3] = [0.5, 0.5, 0.0]
            probs = rng.dirichlet(np.ones(3), size=40)
            frame = {'path': [f'img_{i}.png' for i in range(40)], 'label': soft.argmax(axis=1),
                     'cluster': probs.argmax(axis=1)}
            frame.update({f'soft_{c}': soft[:, c] for c in range(3)})
            frame.update({f'prob_{c}': probs[:, c] for c in range(3)})
            frame['ambiguity'] = rng.uniform(size=40) + 0.3 * (soft.max(axis=1) < 1)
            folder = run / 'reports' / f'img{images:010d}'
            folder.mkdir(parents=True)
            pd.DataFrame(frame).to_csv(folder / 'val.csv', index=False)
            ema = {'f1_certain': f1, 'inner_distance': 0.5, 'd_minus_f1': 0.5 - f1,
                   'ambiguous_share': 0.4, 'accuracy': 0.6}
            f.write(json.dumps({'images': images, 'kimg': images / 1024,
                                'splits': {'val': {'ema': ema}}}) + '\n')
    return run


def test_one_row_per_report_with_independent_aurocs(tmp_path):
    run = fake_run(tmp_path / 'runs', [(1024, 0.4), (2048, 0.5)])
    rows = ambiguity_curves.report_rows(str(run), 'val')
    assert [r['kimg'] for r in rows] == [1.0, 2.0]
    assert [r['F1'] for r in rows] == pytest.approx([40.0, 50.0])
    pred = pd.read_csv(run / 'reports' / 'img0000002048' / 'val.csv')
    disagree = pred[['soft_0', 'soft_1', 'soft_2']].max(axis=1) < 1
    assert rows[1]['AUROC p_a'] == pytest.approx(roc_auc_score(disagree, pred['ambiguity']))
    top = pred[['prob_0', 'prob_1', 'prob_2']].max(axis=1)
    assert rows[1]['AUROC 1-max p_n'] == pytest.approx(roc_auc_score(disagree, 1 - top))
    assert rows[0]['variant'] == '+DC3 (p_A=0.6)'
    out = tmp_path / 'out'
    assert ambiguity_curves.main([str(tmp_path / 'runs'), '--out', str(out)]) == 0
    assert len(pd.read_csv(out / 'curves.csv')) == 2


def test_truth_file_replaces_disagreement_and_names_unknown_images(tmp_path):
    run = fake_run(tmp_path / 'runs', [(1024, 0.4)])
    csv = run / 'reports' / 'img0000001024' / 'val.csv'
    pred = pd.read_csv(csv)
    pred['path'] = [f'fold1/img_{i:05d}.png' for i in range(len(pred))]
    pred.to_csv(csv, index=False)
    blend = np.arange(len(pred)) % 4 == 0  # unrelated to the soft labels' disagreement
    truth = pd.DataFrame({'image_path': pred['path'], 'alpha': np.where(blend, 0.5, 0.0)})
    truth.to_csv(tmp_path / 'truth.csv', index=False)
    rows = ambiguity_curves.report_rows(
        str(run), 'val', ambiguity_curves.read_truth(str(tmp_path / 'truth.csv')))
    assert rows[0]['AUROC p_a'] == pytest.approx(roc_auc_score(blend, pred['ambiguity']))
    top = pred[['prob_0', 'prob_1', 'prob_2']].max(axis=1)
    assert rows[0]['AUROC 1-max p_n'] == pytest.approx(roc_auc_score(blend, 1 - top))
    truth.iloc[1:].to_csv(tmp_path / 'partial.csv', index=False)
    with pytest.raises(DC3Error, match='1 predicted images are not in the truth file.*img_00000'):
        ambiguity_curves.report_rows(
            str(run), 'val', ambiguity_curves.read_truth(str(tmp_path / 'partial.csv')))
    with pytest.raises(DC3Error, match='cannot read the truth file'):
        ambiguity_curves.read_truth(str(tmp_path / 'missing.csv'))


def test_by_kimg_averages_the_seeds_of_a_variant(tmp_path):
    runs = [fake_run(tmp_path / 'runs', [(1024, f1)], name=f'MeanTeacher_s{seed}', seed=seed)
            for seed, f1 in ((1, 0.4), (2, 0.7))]
    rows = [row for run in runs for row in ambiguity_curves.report_rows(str(run), 'val')]
    aurocs, aurocs_top = [], []
    for run in runs:
        pred = pd.read_csv(run / 'reports' / 'img0000001024' / 'val.csv')
        disagree = pred[['soft_0', 'soft_1', 'soft_2']].max(axis=1) < 1
        aurocs.append(roc_auc_score(disagree, pred['ambiguity']))
        top = pred[['prob_0', 'prob_1', 'prob_2']].max(axis=1)
        aurocs_top.append(roc_auc_score(disagree, 1 - top))
    table = ambiguity_curves.by_kimg(pd.DataFrame(rows))
    f1, d_minus_f1, accuracy, auroc, auroc_top = (
        table.loc[1.0, 'MeanTeacher +DC3 (p_A=0.6)'].split(' / '))
    assert float(f1) == pytest.approx(55.0)  # (40 + 70) / 2
    assert float(d_minus_f1) == pytest.approx(50 - 55.0)
    assert float(accuracy) == pytest.approx(60.0)
    assert float(auroc) == pytest.approx(np.mean(aurocs), abs=5e-4)
    assert float(auroc_top) == pytest.approx(np.mean(aurocs_top), abs=5e-4)
    assert table.loc[1.0, 'kimg'] == '1'


def test_per_predicted_class_matches_a_loop():
    rng = np.random.default_rng(3)
    n, k = 60, 4
    probs = rng.dirichlet(np.ones(k), size=n)
    labels = rng.integers(k, size=n)
    p_a = rng.uniform(size=n)
    ambiguous = rng.uniform(size=n) < 0.4
    pred = {'class_probs': probs, 'labels': labels, 'ambiguity': p_a}  # as read_predictions
    table = ambiguity_curves.per_predicted_class(pred, ambiguous)
    predicted = probs.argmax(axis=1)
    assert sorted(table.index) == sorted(set(predicted))
    for c in set(predicted):
        members = predicted == c
        assert table.loc[c, 'images'] == members.sum()
        assert table.loc[c, 'mean_p_a'] == pytest.approx(p_a[members].mean())
        assert table.loc[c, 'ambiguous'] == pytest.approx(ambiguous[members].mean())
        assert table.loc[c, 'precision'] == pytest.approx((labels[members] == c).mean())

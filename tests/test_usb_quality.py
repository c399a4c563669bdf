"""bench/usb_quality.py's bookkeeping: which of our runs count, and the table's means."""
import argparse
import json
import os
import shutil

import numpy as np

from bench import usb_quality


def write_run(ours_dir, seed, name, train_kimg, reports, bn_momentum=0.99):
    """A run folder as the trainer leaves it: args.json and one metrics line per report."""
    folder = os.path.join(ours_dir, f'cifar10n.{seed}@-1-10', name)
    os.makedirs(folder)
    with open(os.path.join(folder, 'args.json'), 'w') as f:
        json.dump({'train_kimg': train_kimg, 'bn_momentum': bn_momentum}, f)
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        for kimg, accuracy, f1 in reports:  # the raw weights 10 points below the EMA ones
            val = {'ema': {'accuracy': accuracy, 'macro_f1': f1},
                   'raw': {'accuracy': accuracy - 0.1, 'macro_f1': f1 - 0.1}}
            f.write(json.dumps({'kimg': kimg, 'splits': {'val': val}}) + '\n')


def reestimated(accuracy):
    """A stand-in for the re-estimation (which needs a trained checkpoint): fixed rows."""
    return lambda run_dir, data_dir: {'raw_bn': {'accuracy': accuracy, 'macro_f1': accuracy},
                                      'ema_bn': {'accuracy': accuracy, 'macro_f1': accuracy}}


def test_only_finished_runs_of_the_budget_count_and_the_table_averages_seeds(tmp_path):
    ours_dir, out = str(tmp_path / 'ours'), str(tmp_path / 'results')
    os.makedirs(out)
    write_run(ours_dir, 1, 'MeanTeacher_a', 24.0, [(8.0, 0.30, 0.28), (24.0, 0.45, 0.43)])
    write_run(ours_dir, 2, 'MeanTeacher_b', 24.0, [(8.0, 0.31, 0.29), (24.0, 0.41, 0.40)])
    write_run(ours_dir, 3, 'MeanTeacher_c', 24.0, [(8.0, 0.99, 0.99)])      # killed at 8 kimg
    write_run(ours_dir, 3, 'MeanTeacher_d', 256.0, [(256.0, 0.99, 0.99)])   # another budget
    write_run(ours_dir, 3, 'FixMatch_e', 24.0, [(24.0, 0.99, 0.99)])        # another method
    write_run(ours_dir, 3, 'MeanTeacher_f', 24.0, [(24.0, 0.99, 0.99)], bn_momentum=0.999)
    for seed, accuracy in ((1, 0.44), (2, 0.40), (3, 0.46)):
        with open(usb_quality.usb_result_path(seed, 'mean_teacher', 24.0, 0.99, out), 'w') as f:
            json.dump({'ema': {'accuracy': accuracy, 'macro_f1': accuracy - 0.02},
                       'raw': {'accuracy': accuracy + 0.1, 'macro_f1': accuracy}}, f)

    assert usb_quality.ours_result(3, 'mean_teacher', 24.0, 0.99, ours_dir) is None
    assert usb_quality.ours_result(3, 'mean_teacher', 24.0, 0.999, ours_dir) is not None
    seed_1 = usb_quality.ours_result(1, 'mean_teacher', 24.0, 0.99, ours_dir)
    assert seed_1['ema']['accuracy'] == 0.45
    for seed in (1, 2, 3):  # --run stores seeds 1 and 2; seed 3 has not finished
        stored = usb_quality.store_ours(seed, 'mean_teacher', 24.0, 0.99, 'data', ours_dir, out,
                                        reestimated(0.5))
        assert (stored is None) == (seed == 3)
    args = argparse.Namespace(methods=['mean_teacher'], seeds=[1, 2, 3], kimg=24.0,
                              results=out, ours_dir=ours_dir, bn_momentum=0.99)
    ema, raw, ema_bn, raw_bn = usb_quality.table(args)
    assert (ema['model'], raw['model']) == ('ema', 'raw')
    assert ema_bn['ours_accuracy']['seeds'] == 2 and raw_bn['usb_accuracy']['seeds'] == 0
    assert ema['ours_accuracy']['seeds'] == 2 and ema['usb_accuracy']['seeds'] == 3
    assert np.isclose(ema['ours_accuracy']['mean'], (0.45 + 0.41) / 2)
    assert np.isclose(ema['ours_accuracy']['std'], np.std([0.45, 0.41], ddof=1))
    assert np.isclose(raw['ours_macro_f1']['mean'], (0.33 + 0.30) / 2)
    assert np.isclose(ema['usb_macro_f1']['mean'], np.mean([0.42, 0.38, 0.44]))
    assert np.isclose(raw['usb_accuracy']['mean'], np.mean([0.54, 0.50, 0.56]))
    table = usb_quality.table_path(out, ours_dir)
    assert os.path.dirname(table) == out and table.endswith('table.ours')
    with open(table + '.md') as f:
        lines = f.read().splitlines()
    assert lines[2].startswith('| mean_teacher | ema | 43.00 ± 2.83 (2) | 43.33 ± 3.06 (3) |')
    assert '| mean_teacher | 3 | raw | — | 56.00 | — | 46.00 |' in lines
    assert ('| mean_teacher | raw_bn | 50.00 ± 0.00 (2) | not run | 50.00 ± 0.00 (2) | not run '
            '| not run / not run | too few seeds / too few seeds |') in lines
    assert json.load(open(table + '.json'))['rows'] == [ema, raw, ema_bn, raw_bn]
    # Paired by seed: only seeds 1 and 2 have both sides. EMA: ours 0.45, 0.41 against USB's
    # 0.44, 0.40 -> +0.01 each; raw: 0.35, 0.31 against 0.54, 0.50 -> -0.19 each.
    assert np.isclose(ema['difference_accuracy']['mean'], 0.01)
    assert np.isclose(raw['difference_accuracy']['mean'], -0.19)
    assert raw['difference_accuracy']['seeds'] == 2
    assert (ema['verdict_accuracy'], raw['verdict_accuracy']) == ('ahead', 'behind')


def test_behind_by_less_than_either_sides_seed_spread_is_within_noise():
    stats = usb_quality._stats
    ours, usb = stats([0.40, 0.44, 0.42]), stats([0.43, 0.44, 0.45])  # std 0.02 and 0.01
    assert usb_quality.verdict(stats([-0.03, 0.0, -0.015]), ours, usb) == 'within noise'
    assert usb_quality.verdict(stats([-0.03, -0.02, -0.02]), ours, usb) == 'behind'  # 0.0233
    assert usb_quality.verdict(stats([0.01, -0.01, 0.0]), ours, usb) == 'ahead'
    assert usb_quality.verdict(stats([-0.01]), stats([0.4]), stats([0.41])) == 'too few seeds'


def test_stored_records_outlive_their_run_folders_but_not_a_retraining(tmp_path):
    ours_dir, out = str(tmp_path / 'ours'), str(tmp_path / 'results')
    write_run(ours_dir, 1, 'FixMatch_a', 24.0, [(24.0, 0.40, 0.38)])
    write_run(ours_dir, 2, 'FixMatch_b', 24.0, [(24.0, 0.42, 0.40)])
    for seed in (1, 2):
        usb_quality.store_ours(seed, 'fixmatch', 24.0, 0.99, 'data', ours_dir, out,
                               reestimated(0.46))
    args = argparse.Namespace(methods=['fixmatch'], seeds=[1, 2], kimg=24.0, results=out,
                              ours_dir=ours_dir, bn_momentum=0.99)
    # stored once, a record is not made again (the re-estimation would fail here)
    assert usb_quality.store_ours(1, 'fixmatch', 24.0, 0.99, 'data', ours_dir, out,
                                  reestimate=None)['raw_bn']['accuracy'] == 0.46
    # seed 2's folder is trained again under the same name: its record no longer counts
    shutil.rmtree(os.path.join(ours_dir, 'cifar10n.2@-1-10', 'FixMatch_b'))
    write_run(ours_dir, 2, 'FixMatch_b', 24.0, [(24.0, 0.30, 0.30)])
    ema, raw, ema_bn, raw_bn = usb_quality.table(args)
    assert ema['ours_accuracy']['seeds'] == 1 and ema['ours_accuracy']['mean'] == 0.40
    # a fresh checkout: no run folders, only the records
    shutil.rmtree(ours_dir)
    ema, raw, ema_bn, raw_bn = usb_quality.table(args)
    assert ema['ours_accuracy']['seeds'] == 2
    assert raw_bn['ours_accuracy']['mean'] == 0.46 and ema_bn['ours_macro_f1']['mean'] == 0.46
    # each --ours_dir keeps its own records; the default folder keeps the plain name
    assert usb_quality.ours_record_path(1, 'fixmatch', 24.0, 0.99, out).endswith(
        'ours_fixmatch_seed1_kimg24_bn0.99.json')
    assert usb_quality.ours_record_path(1, 'fixmatch', 24.0, 0.99, out, ours_dir) != \
        usb_quality.ours_record_path(1, 'fixmatch', 24.0, 0.99, out)


def test_batch_norm_statistics_are_re_estimated_as_the_mean_over_batches():
    import keras
    from libml import models
    rng = np.random.default_rng(0)
    images = rng.normal(3.0, 2.0, size=(70, 4, 4, 2)).astype(np.float32)
    layer = models.FusedBatchNormalization(momentum=0.99)
    inner = keras.Sequential([keras.Input((4, 4, 2)), layer])
    model = keras.Sequential([keras.Input((4, 4, 2)), inner])  # found inside a nested model too
    layer.moving_mean.assign([5.0, 5.0])  # whatever was there before must not count
    usb_quality.reestimate_bn_keras(model, images, batch=32)
    batches = [images[i:i + 32].reshape(-1, 2) for i in range(0, 70, 32)]  # 32, 32, 6 images
    np.testing.assert_allclose(layer.moving_mean, np.mean([b.mean(0) for b in batches], 0),
                               rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance,
                               np.mean([b.var(0, ddof=1) for b in batches], 0), rtol=1e-4)
    assert layer.momentum == 0.99


def test_a_run_still_training_or_cut_short_does_not_count(tmp_path):
    ours_dir = str(tmp_path / 'ours')
    write_run(ours_dir, 1, 'FixMatch_a', 24.0, [(8.0, 0.30, 0.28)])
    with open(os.path.join(ours_dir, 'cifar10n.1@-1-10', 'FixMatch_a', 'metrics.jsonl'), 'a') as f:
        f.write('{"kimg": 24.0, "spl')  # killed while appending the last report
    os.makedirs(os.path.join(ours_dir, 'cifar10n.1@-1-10', 'FixMatch_b'))  # just created
    write_run(ours_dir, 1, 'FixMatch_c', 24.0, [])                         # no report yet
    os.remove(os.path.join(ours_dir, 'cifar10n.1@-1-10', 'FixMatch_c', 'metrics.jsonl'))
    assert usb_quality.ours_result(1, 'fixmatch', 24.0, 0.99, ours_dir) is None


def test_the_table_lists_every_stored_run_not_only_those_of_the_last_run(tmp_path):
    """A --run of one method and new seeds rewrites the table; the other stored runs of ours stay
    in it, and a method or seed that only USB has records of (for this --ours_dir) is left out
    unless asked for."""
    out, ours_dir = str(tmp_path / 'results'), str(tmp_path / 'ours_variant')
    os.makedirs(out)

    def record(path, accuracy, run='run'):
        with open(path, 'w') as f:
            json.dump({'run': run, 'raw_bn': {'accuracy': accuracy, 'macro_f1': accuracy}}, f)

    for seed in (1, 2, 3):
        record(usb_quality.usb_result_path(seed, 'fixmatch', 24.0, 0.99, out), 0.40)
        record(usb_quality.ours_record_path(seed, 'fixmatch', 24.0, 0.99, out, ours_dir), 0.41)
        record(usb_quality.usb_result_path(seed, 'mean_teacher', 24.0, 0.99, out), 0.30)
    for seed in (1, 2, 3, 4, 5):
        record(usb_quality.usb_result_path(seed, 'pseudo_label', 24.0, 0.99, out), 0.50)
    for seed in (4, 5):
        record(usb_quality.ours_record_path(seed, 'pseudo_label', 24.0, 0.99, out, ours_dir),
               0.49)
    # another budget and the default --ours_dir: neither belongs to this table
    record(usb_quality.ours_record_path(6, 'pseudo_label', 256.0, 0.99, out, ours_dir), 0.9)
    record(usb_quality.ours_record_path(7, 'mean_teacher', 24.0, 0.99, out), 0.9)
    args = argparse.Namespace(methods=['pseudo_label'], seeds=[4, 5], kimg=24.0, results=out,
                              ours_dir=ours_dir, bn_momentum=0.99)
    assert usb_quality.stored_selection(args) == {'fixmatch': [1, 2, 3],
                                                   'pseudo_label': [4, 5]}
    rows = {(row['method'], row['model']): row for row in usb_quality.table(args)}
    assert {method for method, _ in rows} == {'fixmatch', 'pseudo_label'}
    fixmatch, pseudo_label = rows['fixmatch', 'raw_bn'], rows['pseudo_label', 'raw_bn']
    assert fixmatch['difference_accuracy']['seeds'] == 3
    assert np.isclose(fixmatch['difference_accuracy']['mean'], 0.01)
    assert pseudo_label['usb_accuracy']['seeds'] == 2 and pseudo_label['ours_accuracy']['seeds'] == 2
    assert pseudo_label['difference_accuracy']['seeds'] == 2
    assert np.isclose(pseudo_label['difference_accuracy']['mean'], -0.01)
    asked = argparse.Namespace(**{**vars(args), 'methods': ['mean_teacher'], 'seeds': [1, 2]})
    assert usb_quality.stored_selection(asked) == {'fixmatch': [1, 2, 3], 'mean_teacher': [1, 2],
                                                    'pseudo_label': [4, 5]}

"""scripts/report.py and scripts/run_ablation.py on fake run folders (no training)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
from libml.errors import DC3Error
from scripts import report, run_ablation

BASE_ARGS = {'method': 'MeanTeacher', 'dataset_name': 'cifar10n', 'combined_output': 0,
             'wou': 0.0, 'wol': 0.0, 'wf': 0.1, 'ws': 0.1, 'prior_fuzzy_distribution': 0.6,
             'lr': 0.03, 'filters': 32, 'train_kimg': 4, 'batch': 64, 'losses_version': 2}


def split_entry(f1, d, share, degenerate=False):
    return {'f1_certain': f1, 'inner_distance': d,
            'd_minus_f1': None if f1 is None or d is None else d - f1,
            'ambiguous_share': share, 'degenerate': degenerate, 'accuracy': 0.5,
            'macro_f1': 0.5, 'kl': 0.3, 'num_images': 100}


def make_run(root, seed, overrides, final, earlier=None, train_kimg=4):
    """A run folder whose metrics.jsonl ends with ``final`` = (f1, d, share, degenerate).

    ``earlier`` (if given) is written AFTER the final line but with fewer images, so a reader
    that takes the last line instead of the most images gets it wrong.
    """
    args = dict(BASE_ARGS, **overrides, dataset=f'cifar10n.{seed}@-1-10', dataset_seed=seed,
                seed=seed, train_kimg=train_kimg)
    name = '_'.join(f'{k}{v}' for k, v in sorted(overrides.items())) or 'plain'
    run_dir = root / f'cifar10n.{seed}@-1-10' / f'{args["method"]}_{name}'
    run_dir.mkdir(parents=True)
    (run_dir / 'args.json').write_text(json.dumps(args))
    lines = [(train_kimg * 1024, final)] + ([(1024, earlier)] if earlier else [])
    with open(run_dir / 'metrics.jsonl', 'w') as f:
        for images, values in lines:
            val = split_entry(*values)
            f.write(json.dumps({'images': images, 'kimg': images / 1024, 'step': images // 64,
                                'splits': {'val': {'ema': val, 'raw': split_entry(.1, .9, .5)}}})
                    + '\n')
    return run_dir


DC3 = {'combined_output': 4, 'wou': 10.0, 'wol': 10.0}
CC = {'combined_output': 4}
# (f1, d, ambiguous share, degenerate) per seed 1, 2, 3.
DC3_RUNS = [(.80, .50, .4, False), (.85, .45, .3, False), (.95, .30, .05, True)]
BASELINE_RUNS = [(.70, .60, 0., False), (.75, .50, 0., False), (.72, .55, 0., False)]
CC_RUNS = [(.90, .40, .95, True), (.91, .40, .02, True)]


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / 'train'
    for seed, values in enumerate(DC3_RUNS, 1):
        # An earlier, better-looking report must not be picked.
        make_run(root, seed, DC3, values, earlier=(.99, .01, .5, False))
    for seed, values in enumerate(BASELINE_RUNS, 1):
        make_run(root, seed, {}, values)
    for seed, values in enumerate(CC_RUNS, 1):
        make_run(root, seed, CC, values)
    return root


def test_variant_labels():
    assert report.variant_of({'combined_output': 0, 'wou': 0, 'wol': 0}) == 'Baseline'
    assert report.variant_of({'combined_output': 0, 'wou': 10, 'wol': 0}) == '+CE⁻¹'
    assert report.variant_of({'combined_output': 4, 'wou': 0, 'wol': 0}) == '+CC'
    assert report.variant_of({'combined_output': 4, 'wou': 0, 'wol': 10, 'losses_version': 2,
                              'prior_fuzzy_distribution': 0.32}) == '+DC3 (p_A=0.32)'
    # args.json of the code before the losses followed the original has no losses_version.
    assert report.variant_of({'combined_output': 4, 'wou': 0, 'wol': 10}) == \
        '+DC3 (p_A=0.6; losses before 2026-12-03)'
    assert report.variant_of({'combined_output': 4, 'wou': 10, 'wol': 10, 'losses_version': 2,
                              'scale_labeled_ceinv': 0}) == \
        '+DC3 (p_A=0.6, labeled CE⁻¹ unscaled)'


def test_table4_best_mean_std_and_counts(runs_root, tmp_path):
    runs, t2, t4 = report.write_report([str(runs_root)], str(tmp_path / 'out'))
    assert len(runs) == 8
    rows = {r['variant']: r for r in t4.to_dict('records')}
    assert set(rows) == {'Baseline', '+CC', '+DC3 (p_A=0.6)'}

    dc3 = rows['+DC3 (p_A=0.6)']
    assert (dc3['valid_runs'], dc3['total_runs']) == (2, 3)
    # Best non-degenerate by d - F1 is seed 2 (-40), not the degenerate seed 3 (-65).
    assert dc3['F1 best'] == pytest.approx(85.0)
    assert dc3['d best'] == pytest.approx(45.0)
    assert dc3['d-F1 best'] == pytest.approx(-40.0)
    assert 'cifar10n.2@' in dc3['best_run']
    assert dc3['F1 mean'] == pytest.approx(82.5)
    assert dc3['F1 std'] == pytest.approx(np.std([80, 85], ddof=1))
    assert dc3['d-F1 mean'] == pytest.approx(-35.0)
    assert dc3['ambiguous % mean'] == pytest.approx(35.0)

    base = rows['Baseline']
    assert (base['valid_runs'], base['total_runs']) == (3, 3)
    assert base['d-F1 best'] == pytest.approx(-25.0)
    assert base['F1 mean'] == pytest.approx(np.mean([70, 75, 72]))
    assert base['d std'] == pytest.approx(np.std([60, 50, 55], ddof=1))

    cc = rows['+CC']
    assert (cc['valid_runs'], cc['total_runs']) == (0, 2)
    assert np.isnan(cc['F1 best']) and np.isnan(cc['F1 mean'])

    md = (tmp_path / 'out' / 'table4.md').read_text()
    cc_line = next(line for line in md.splitlines() if '+CC' in line)
    assert '0/2' in cc_line and '—' in cc_line
    dc3_line = next(line for line in md.splitlines() if '+DC3' in line)
    assert '2/3' in dc3_line and '85.00' in dc3_line and '82.50 ± 3.54' in dc3_line
    assert pd.read_csv(tmp_path / 'out' / 'table4.csv').shape[0] == 3


def test_table2_vanilla_vs_dc3(runs_root, tmp_path):
    _, t2, _ = report.write_report([str(runs_root)], str(tmp_path / 'out'))
    assert len(t2) == 1
    row = t2.iloc[0]
    assert (row['dataset'], row['method']) == ('cifar10n', 'MeanTeacher')
    assert [row['vanilla F1'], row['vanilla d'], row['vanilla d-F1']] == pytest.approx(
        [75.0, 50.0, -25.0])
    assert [row['+DC3 F1'], row['+DC3 d'], row['+DC3 d-F1']] == pytest.approx(
        [85.0, 45.0, -40.0])
    md = (tmp_path / 'out' / 'table2.md').read_text()
    assert re.search(r'\| 75\.00 \| 50\.00 \| -25\.00 \| 85\.00 \| 45\.00 \| -40\.00 \|', md)


def test_table2_dc3_column_is_the_papers_dc3_and_our_variants_get_their_own_rows(tmp_path):
    root = tmp_path / 'train'
    for seed in (1, 2):
        make_run(root, seed, {}, (.70, .60, 0., False))
        make_run(root, seed, DC3, (.72, .58, .4, False))
        # Better by d - F1 than the paper's DC3, so a "best +DC3" column would pick them.
        make_run(root, seed, dict(DC3, ambiguity_rank='uncertainty'), (.90, .40, .5, False))
        make_run(root, seed, dict(DC3, losses_version=None), (.91, .30, .5, False))
    _, t2, _ = report.write_report([str(root)], str(tmp_path / 'out'))
    assert t2['+DC3 variant'].tolist() == [
        '+DC3 (p_A=0.6)', '+DC3 (p_A=0.6, L_A ranks uncertainty; ours)',
        '+DC3 (p_A=0.6; losses before 2026-12-03)']
    assert t2['+DC3 F1'].tolist() == pytest.approx([72.0, 90.0, 91.0])
    assert t2['vanilla F1'].tolist() == pytest.approx([70.0] * 3)
    md = (tmp_path / 'out' / 'table2.md').read_text().splitlines()
    assert '72.00' in md[next(i for i, line in enumerate(md) if '| MeanTeacher' in line)]


def test_groups_split_on_hyperparameters_but_not_on_seeds(tmp_path):
    root = tmp_path / 'train'
    for seed in (1, 2):
        # How often a run reported does not make it another configuration.
        make_run(root, seed, dict(DC3, report_kimg=seed), (.8, .5, .4, False))
        make_run(root, seed, dict(DC3, lr=0.01), (.7, .5, .4, False))
    _, _, t4 = report.write_report([str(root)], str(tmp_path / 'out'))
    assert sorted(t4['config']) == ['lr=0.01', 'lr=0.03']
    assert list(t4['total_runs']) == [2, 2]


def test_undefined_metrics_are_not_rankable(tmp_path):
    root = tmp_path / 'train'
    make_run(root, 1, DC3, (None, .2, .5, False))  # no certain image: F1 undefined
    make_run(root, 2, DC3, (.6, .5, .5, False))
    _, _, t4 = report.write_report([str(root)], str(tmp_path / 'out'))
    row = t4.iloc[0]
    assert (row['valid_runs'], row['total_runs']) == (1, 2)
    assert row['d-F1 best'] == pytest.approx(-10.0)


def test_errors(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DC3Error, match='no run folders'):
        report.collect_runs([str(tmp_path / 'empty')])
    run_dir = make_run(tmp_path / 'train', 1, {}, (.7, .6, 0., False))
    # A last line cut short (a crash while appending) is skipped: the run keeps its report.
    with open(run_dir / 'metrics.jsonl', 'a') as f:
        f.write('{"images": 5000, "splits": \n')
    assert len(report.collect_runs([str(tmp_path / 'train')])) == 1
    # A damaged line followed by others is not a torn write: an error naming the line.
    with open(run_dir / 'metrics.jsonl', 'a') as f:
        f.write('{"images": 6000, "splits": {}}\n')
    with pytest.raises(DC3Error, match='line 2'):
        report.collect_runs([str(tmp_path / 'train')])


def run_script(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_cli(runs_root, tmp_path):
    out = tmp_path / 'cli_out'
    done = run_script('scripts/report.py', str(runs_root), '--split', 'val', '--out', str(out))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= {'table2.md', 'table2.csv', 'table4.md',
                                                'table4.csv'}
    assert '-40.00' in done.stdout
    failed = run_script('scripts/report.py', str(tmp_path / 'cli_out'), '--out', str(out))
    assert failed.returncode == 2
    assert failed.stderr.strip().startswith('error: no run folders')
    assert len(failed.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# run_ablation.py
# ---------------------------------------------------------------------------------------------

VARIANT_FLAGS = {
    'baseline': ['--combined_output=0', '--wou=0', '--wol=0'],
    'ceinv': ['--combined_output=0', '--wou=10', '--wol=10'],
    'cc': ['--combined_output=4', '--wou=0', '--wol=0'],
    'dc3': ['--combined_output=4', '--wou=10', '--wol=10', '--prior_fuzzy_distribution=0.6'],
    'dc3_prior': ['--combined_output=4', '--wou=10', '--wol=10',
                  '--prior_fuzzy_distribution=0.32'],
}


def test_ablation_dry_run_prints_every_command(tmp_path):
    train_dir = tmp_path / 'exp'
    done = run_script('scripts/run_ablation.py', '--dataset_name', 'cifar10n', '--seeds', '1,2,3',
                      '--methods', 'mean_teacher,fixmatch', '--dataset_prior', '0.32',
                      '--train_dir', str(train_dir), '--extra', '--filters 32 --train_kimg 64',
                      '--dry_run')
    assert done.returncode == 0, done.stderr
    commands = [line.split('] ', 1)[1].split() for line in done.stdout.splitlines()
                if line.startswith('[')]
    assert len(commands) == 3 * 2 * 5
    seen = set()
    for command in commands:
        script = command[1]
        dataset = command[command.index('--dataset') + 1]
        assert script in ('mean_teacher.py', 'fixmatch.py')
        assert re.fullmatch(r'cifar10n\.[123]@-1-10', dataset)
        assert command[command.index('--train_dir') + 1] == str(train_dir)
        assert command[-4:] == ['--filters', '32', '--train_kimg', '64']
        flags = [c for c in command if c.split('=')[0] in (
            '--combined_output', '--wou', '--wol', '--prior_fuzzy_distribution')]
        variant = [v for v, f in VARIANT_FLAGS.items() if f == flags]
        assert len(variant) == 1, flags
        seen.add((script, dataset, variant[0]))
    assert len(seen) == 30
    assert not train_dir.exists()  # a dry run trains nothing


@pytest.fixture(scope='module')
def mean_teacher_defaults():
    return run_ablation.method_flag_defaults('mean_teacher')


def test_method_flag_defaults_include_the_scripts_own_flags(mean_teacher_defaults):
    fixmatch = run_ablation.method_flag_defaults('fixmatch')
    # Shared flags, flags defined by one script only, and defaults a script overrides.
    assert mean_teacher_defaults['ambiguity_rank'] == 'p_a'
    assert 'consistency_weight' in mean_teacher_defaults
    assert 'confidence' not in mean_teacher_defaults
    assert fixmatch['confidence'] == pytest.approx(0.95)
    assert (mean_teacher_defaults['uratio'], fixmatch['uratio']) == (1, 7)


def finished_run(train_dir, seed, overrides, train_kimg=4, reported_kimg=None):
    """A fake finished Mean Teacher run with the script's defaults plus ``overrides``."""
    run_dir = make_run(train_dir, seed, overrides, (.7, .6, 0., False), train_kimg=train_kimg)
    defaults = run_ablation.method_flag_defaults('mean_teacher')
    args = json.loads((run_dir / 'args.json').read_text())
    # As the scripts record it: every flag, the training seed 0 of run_ablation's commands.
    args = {**defaults, **args, 'seed': 0, 'train_kimg': reported_kimg or train_kimg,
            **overrides}
    (run_dir / 'args.json').write_text(json.dumps(args))
    return run_dir


def planned(capsys):
    lines = capsys.readouterr().out.splitlines()
    return ([line for line in lines if line.startswith('# [')],
            [line for line in lines if line.startswith('[')])


def test_ablation_skips_finished_runs(tmp_path, capsys):
    train_dir = tmp_path / 'exp'
    baseline = {'combined_output': 0, 'wou': 0, 'wol': 0}
    finished_run(train_dir, 1, baseline)
    # Seed 2's run stopped early: its last report (4 kimg) is before its train_kimg (8).
    finished_run(train_dir, 2, baseline, train_kimg=4, reported_kimg=8)
    run_ablation.run_ablation('cifar10n', [1, 2], ['mean_teacher'], ['baseline', 'ceinv'],
                              str(train_dir), '--filters 32 --train_kimg 8', dry_run=True)
    skipped, to_run = planned(capsys)
    assert to_run and not skipped  # train_kimg 8 is not what seed 1's run trained
    run_ablation.run_ablation('cifar10n', [1, 2], ['mean_teacher'], ['baseline', 'ceinv'],
                              str(train_dir), '--filters 32 --train_kimg 4', dry_run=True)
    skipped, to_run = planned(capsys)
    assert len(skipped) == 1 and 'cifar10n.1@-1-10' in skipped[0] and '--wou=0' in skipped[0]
    assert len(to_run) == 3


def test_ablation_does_not_take_a_run_with_another_default_for_its_own(tmp_path, capsys):
    """A run differing only in a flag the variant leaves at its default is another run.

    Regression: the ``dc3`` variant (default --ambiguity_rank p_a) once skipped as finished a
    ``dc3_uncertainty`` run, because only the flags on the command line were compared.
    """
    train_dir = tmp_path / 'exp'
    dc3 = {'combined_output': 4, 'wou': 10, 'wol': 10, 'prior_fuzzy_distribution': 0.6}
    finished_run(train_dir, 1, {**dc3, 'ambiguity_rank': 'uncertainty'})
    finished_run(train_dir, 2, {**dc3, 'wd': 0.001})
    run_ablation.run_ablation('cifar10n', [1, 2], ['mean_teacher'], ['dc3', 'dc3_uncertainty'],
                              str(train_dir), '--train_kimg 4', dry_run=True)
    skipped, to_run = planned(capsys)
    assert len(skipped) == 1 and 'cifar10n.1@-1-10' in skipped[0]
    assert '--ambiguity_rank=uncertainty' in skipped[0]
    assert len(to_run) == 3 and not any('cifar10n.1' in line and 'uncertainty' in line
                                        for line in to_run)


def test_ablation_rejects_overriding_variant_flags():
    with pytest.raises(DC3Error, match='wou'):
        run_ablation.plan('cifar10n', [1], ['mean_teacher'], ['dc3'], 'exp', '--wou 3')


def test_ablation_uncertainty_variant_passes_the_ranking_flag(tmp_path):
    done = run_script('scripts/run_ablation.py', '--dataset_name', 'cifar10n', '--seeds', '1',
                      '--methods', 'mean_teacher', '--variants', 'dc3,dc3_uncertainty',
                      '--train_dir', str(tmp_path), '--dry_run')
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith('[')]
    assert len(commands) == 2
    assert '--ambiguity_rank=uncertainty' not in commands[0]
    assert '--ambiguity_rank=uncertainty' in commands[1]


def test_an_unfinished_run_is_named(tmp_path, capsys):
    make_run(tmp_path, 1, {}, (.7, .6, 0., False), train_kimg=4)
    unfinished = make_run(tmp_path, 2, {}, (.7, .6, 0., False), train_kimg=4)
    args = json.loads((unfinished / 'args.json').read_text())
    (unfinished / 'args.json').write_text(json.dumps(dict(args, train_kimg=8)))
    runs = report.collect_runs([str(tmp_path)])
    assert sorted(runs['finished']) == [False, True]
    err = capsys.readouterr().err
    assert 'warning: 1 of 2 runs have not reached their train_kimg' in err
    assert str(unfinished) in err

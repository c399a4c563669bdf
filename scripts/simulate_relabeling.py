#!/usr/bin/env python
"""Simulated relabeling: how much do a run's proposals help people relabel its images?

    python scripts/simulate_relabeling.py --source vanilla=RUN[,RUN...] --source dc3=RUN[,...] \\
        --out DIR [--splits unlabeled,val] [--repetitions 1,2,3,5] [--table_repetitions 1] \\
        [--acceptance_offset 0,0.26] [--simulations 2] [--report latest]

Simulated annotators relabel the images of ``--splits`` of each run's report, as DCIC's simulated
proposal acceptance (``libml/relabel.py``): from scratch (source ``none``, always included: one
annotation drawn from the ground-truth soft label costs 1) or by checking the run's proposal
(accepted with probability δ + (0.99 − δ)·g[proposal], else another class by the ground truth;
costs 0.4). A vanilla run proposes its class; a DC3 run its class for images it calls certain and,
for ambiguous ones, the majority label of the labeled images in the same cluster. Several runs of
one source (e.g. seeds) give mean ± std; ``none`` is simulated once per distinct set of images.

Writes into ``--out``: ``relabeling.csv`` (every source, run, δ and number of annotations per
image), ``table3.{md,csv}`` (shaped like paper Table 3, at ``--table_repetitions``),
``estimates/<source>-<i>.csv`` (the estimated soft label per image of one simulation) and
``kl_budget.png`` (KL against budget; only if matplotlib is installed).
"""
import itertools
import os
import re
import sys

import numpy as np
import pandas as pd
from absl import app, flags


from libml import io_utils, prediction_csv, relabel
from libml.errors import DC3Error
from libml.run_files import find_report

FLAGS = flags.FLAGS
NONE = 'none'  # the source that annotates from scratch
LABELED_SPLIT = 'train'  # the report CSV of the images whose labels training used


def define_flags():
    flags.DEFINE_multi_string('source', None, 'NAME=RUN_DIR[,RUN_DIR...]: a proposal source and '
                              'its runs (e.g. seeds); repeat for more sources.')
    flags.DEFINE_string('out', None, 'Output folder.')
    flags.DEFINE_list('splits', ['unlabeled', 'val'], 'Report splits whose images are relabeled.')
    flags.DEFINE_string('report', 'latest', '"latest" or a report folder name like '
                        'img0000065536 (the same for every run).')
    flags.DEFINE_list('repetitions', ['1', '2', '3', '5'], 'Simulated annotations per image (the '
                      'budget axis of the plot).')
    flags.DEFINE_integer('table_repetitions', 1, 'Annotations per image in the table (one of '
                         '--repetitions).')
    flags.DEFINE_list('acceptance_offset', [], 'δ values; empty = DCIC\'s value for the dataset.')
    flags.DEFINE_integer('simulations', 2, 'Independent simulations per setting (κ compares '
                         'them pairwise; at least 2).')
    flags.DEFINE_integer('cluster_proposals', 1, '1: a DC3 run proposes its cluster\'s majority '
                         'label for images it calls ambiguous; 0: its class head\'s argmax for '
                         'every image (to tell the head\'s classes from the clusters\' effect).')
    flags.DEFINE_integer('seed', relabel.DCIC_SEED, 'Seed of the first simulation (DCIC\'s by '
                         'default); simulation s uses seed + s.')
    flags.mark_flags_as_required(['source', 'out'])


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def parse_sources(specs):
    """``['dc3=a,b', ...]`` -> ``{'dc3': ['a', 'b'], ...}`` in the order given."""
    sources = {}
    for spec in specs:
        name, sep, dirs = spec.partition('=')
        if not sep or not re.fullmatch(r'[A-Za-z0-9_.+]+', name) or not dirs.strip(','):
            raise DC3Error(f'--source {spec!r}: expected NAME=RUN_DIR[,RUN_DIR...] with a name of '
                           'letters, digits, "_", "." or "+"')
        if name == NONE or name in sources:
            raise DC3Error(f'--source name {name!r} is reserved or given twice; choose another')
        sources[name] = [d for d in dirs.split(',') if d]
    return sources


def read_run(run_dir, splits, report='latest'):
    """The run's predictions on ``splits`` plus what its proposals need."""
    args = io_utils.read_json(os.path.join(run_dir, 'args.json'), 'run arguments')
    report_dir = find_report(run_dir, report)
    frames = []
    for split in splits:
        path = os.path.join(report_dir, f'{split}.csv')
        if not os.path.exists(path):
            raise DC3Error(f'{path} not found: the report has no {split!r} predictions; choose '
                           '--splits among the CSVs it has')
        frames.append(prediction_csv.read_predictions(path))
    if not sum(len(f['labels']) for f in frames):
        raise DC3Error(f'{report_dir} has no images in splits {",".join(splits)}')
    run = {
        'dir': run_dir,
        'dataset_name': args.get('dataset_name', ''),
        'paths': np.concatenate([f['frame']['path'].astype(str).to_numpy() for f in frames]),
        'split': np.concatenate([f['frame']['split'].astype(str).to_numpy() for f in frames]),
        'soft_gt': np.concatenate([f['soft_labels'] for f in frames]),
        'class_probs': np.concatenate([f['class_probs'] for f in frames]),
        'cluster_ids': np.concatenate([f['cluster_ids'] for f in frames]),
    }
    has_ambiguity = [f['ambiguity'] is not None for f in frames]
    run['ambiguity'] = (np.concatenate([f['ambiguity'] for f in frames]) if all(has_ambiguity)
                        else None)
    run['majorities'] = None
    if run['ambiguity'] is not None:
        labeled_path = os.path.join(report_dir, f'{LABELED_SPLIT}.csv')
        if not os.path.exists(labeled_path):
            raise DC3Error(f'{labeled_path} not found: a DC3 run\'s cluster proposals need the '
                           'labeled images\' clusters; rerun its report')
        labeled = prediction_csv.read_predictions(labeled_path)
        run['majorities'] = relabel.cluster_majorities(
            labeled['cluster_ids'], labeled['labels'], run['soft_gt'].shape[1])
    return run


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------

def simulate_setting(soft_gt, proposed, repetitions, offset, seeds):
    """Measures of ``len(seeds)`` simulations of one setting, and the first one's estimate."""
    estimates, budget = [], None
    for seed in seeds:
        estimate, budget = relabel.simulate(soft_gt, proposed, repetitions, offset, seed)
        estimates.append(estimate)
    row = {
        'repetitions': repetitions,
        'budget': budget,
        'kl': float(np.mean([relabel.kl_divergence(soft_gt, e) for e in estimates])),
        'macro_f1': float(np.mean([relabel.macro_f1(soft_gt, e) for e in estimates])),
        'kappa': float(np.mean([relabel.cohen_kappa(a, b)
                                for a, b in itertools.combinations(estimates, 2)])),
    }
    if proposed is not None:
        n = len(proposed)
        row['accepted'] = float(np.mean([e[np.arange(n), proposed].mean() for e in estimates]))
    return row, estimates[0]


def run_simulations(sources, splits, repetitions, offsets, simulations, seed, report='latest',
                    progress=print, cluster_proposals=True):
    """Every setting of every run. Returns ``(rows DataFrame, {(source, i): estimate frame})``."""
    seeds = [seed + s for s in range(simulations)]
    groups = []  # distinct image sets: (paths, soft_gt) -> simulated once from scratch
    rows, estimates = [], {}

    def group_of(run):
        for g, (paths, soft_gt) in enumerate(groups):
            if len(paths) == len(run['paths']) and (paths == run['paths']).all():
                if not np.allclose(soft_gt, run['soft_gt'], atol=1e-6):
                    raise DC3Error(f'{run["dir"]} has other ground-truth soft labels than an '
                                   'earlier run on the same images; compare runs of one dataset')
                return g
        groups.append((run['paths'], run['soft_gt']))
        return len(groups) - 1

    def frame_of(run, estimate, proposed=None, from_cluster=None):
        k = estimate.shape[1]
        frame = pd.DataFrame({'path': run['paths'], 'split': run['split'],
                              'target': run['soft_gt'].argmax(axis=1)})
        if proposed is not None:
            frame['proposal'] = proposed
            frame['proposal_from_cluster'] = from_cluster.astype(int)
        frame = pd.concat([frame, pd.DataFrame(estimate, columns=[f'est_{j}' for j in range(k)])],
                          axis=1)
        return frame

    for name, run_dirs in sources.items():
        for index, run_dir in enumerate(run_dirs):
            run = read_run(run_dir, splits, report)
            if run['soft_gt'].shape[1] != run['class_probs'].shape[1]:
                raise DC3Error(f'{run_dir}: soft labels and class probabilities differ in size')
            group = group_of(run)
            run_offsets = offsets or [relabel.acceptance_offset(run['dataset_name'])]
            proposed, from_cluster = relabel.proposals(
                run['class_probs'], run['ambiguity'] if cluster_proposals else None,
                run['cluster_ids'], run['majorities'])
            base = {'source': name, 'run': index, 'run_dir': run_dir, 'group': group,
                    'num_images': len(proposed),
                    'proposal_right': float(np.mean(proposed == run['soft_gt'].argmax(axis=1))),
                    'from_cluster': float(from_cluster.mean())}
            if not any(r['source'] == NONE and r['group'] == group for r in rows):
                for r in repetitions:
                    row, estimate = simulate_setting(run['soft_gt'], None, r, None, seeds)
                    rows.append({'source': NONE, 'run': group, 'run_dir': '', 'group': group,
                                 'num_images': len(proposed), **row})
                    if r == repetitions[0]:
                        estimates[(NONE, group)] = frame_of(run, estimate)
                progress(f'{NONE} (images of {run_dir}): done')
            for offset in run_offsets:
                for r in repetitions:
                    row, estimate = simulate_setting(run['soft_gt'], proposed, r, offset, seeds)
                    rows.append({**base, 'offset': offset, **row})
                    if r == repetitions[0] and offset == run_offsets[0]:
                        estimates[(name, index)] = frame_of(run, estimate, proposed, from_cluster)
            progress(f'{name} {run_dir}: proposals right {base["proposal_right"]:.1%}, '
                     f'from clusters {base["from_cluster"]:.1%}')
    return pd.DataFrame(rows), estimates


# ---------------------------------------------------------------------------------------------
# Tables and plot
# ---------------------------------------------------------------------------------------------

TABLE_COLUMNS = (  # (column, row key, scale to %)
    ('proposal right %', 'proposal_right', 100), ('from cluster %', 'from_cluster', 100),
    ('accepted %', 'accepted', 100), ('budget / image', 'budget', 1), ('KL', 'kl', 1),
    ('macro F1 %', 'macro_f1', 100), ('κ %', 'kappa', 100))


def none_curve(rows):
    """Mean from-scratch (budget, KL) points, budget ascending."""
    curve = rows[rows['source'] == NONE].groupby('budget')['kl'].mean().sort_index()
    return curve.index.to_numpy(), curve.to_numpy()


def table3(rows, repetitions):
    """One line per source and δ at ``repetitions``: mean ± std over its runs."""
    at = rows[rows['repetitions'] == repetitions]
    budgets, kls = none_curve(rows)
    lines = []
    keys = ['source', 'offset']
    at = at.assign(offset=at['offset'] if 'offset' in at else np.nan)
    for (source, offset), group in at.groupby(keys, sort=False, dropna=False):
        line = {'source': source, 'δ': '' if pd.isna(offset) else f'{offset:g}',
                'runs': len(group), 'annotations / image': repetitions}
        for column, key, scale in TABLE_COLUMNS:
            values = group[key].dropna() * scale if key in group else pd.Series(dtype=float)
            line[column] = values.mean() if len(values) else np.nan
            line[column + ' std'] = values.std(ddof=0) if len(values) > 1 else np.nan
        if source == NONE:
            line['speed-up at equal KL'] = '1.00×'  # the reference
        else:
            speedup, qualifier = relabel.equal_kl_speedup(budgets, kls, group['budget'].mean(),
                                                          group['kl'].mean())
            line['speed-up at equal KL'] = f'{qualifier}{speedup:.2f}×'
        lines.append(line)
    return pd.DataFrame(lines)


def table3_markdown(table):
    header = ['source', 'δ', 'runs'] + [c for c, _, _ in TABLE_COLUMNS] + ['speed-up at equal KL']
    out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for _, line in table.iterrows():
        cells = [str(line['source']), line['δ'] or '—', str(line['runs'])]
        for column, key, scale in TABLE_COLUMNS:
            mean, std = line[column], line[column + ' std']
            digits = 3 if key == 'kl' else (2 if key == 'budget' else 1)
            cells.append('—' if pd.isna(mean) else (
                f'{mean:.{digits}f}' + ('' if pd.isna(std) else f' ± {std:.{digits}f}')))
        cells.append(line['speed-up at equal KL'])
        out.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(out) + '\n'


def plot_kl_budget(path, rows):
    """KL against budget per source and δ; skipped (returns False) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = rows.assign(offset=rows['offset'] if 'offset' in rows else np.nan)
    fig, ax = plt.subplots(figsize=(6, 4))
    for (source, offset), group in rows.groupby(['source', 'offset'], sort=False, dropna=False):
        curve = group.groupby('budget')['kl'].mean().sort_index()
        label = source if pd.isna(offset) else f'{source} (δ={offset:g})'
        ax.plot(curve.index, curve.to_numpy(), marker='o', label=label)
    ax.set_xlabel('budget (annotations from scratch per image)')
    ax.set_ylabel('KL(ground truth ‖ estimate)')
    ax.legend()
    fig.tight_layout()
    with io_utils.atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=120)
    plt.close(fig)
    return True


def write_outputs(out, rows, estimates, table_repetitions):
    table = table3(rows, table_repetitions)
    io_utils.write_text(os.path.join(out, 'relabeling.csv'), rows.round(6).to_csv(index=False))
    io_utils.write_text(os.path.join(out, 'table3.csv'), table.round(4).to_csv(index=False))
    markdown = (f'## Simulated relabeling ({table_repetitions} annotation(s) per image; mean ± std '
                'over runs)\n\n' + table3_markdown(table))
    io_utils.write_text(os.path.join(out, 'table3.md'), markdown)
    for (source, index), frame in estimates.items():
        io_utils.write_text(os.path.join(out, 'estimates', f'{source}-{index}.csv'),
                            frame.round(6).to_csv(index=False))
    if not plot_kl_budget(os.path.join(out, 'kl_budget.png'), rows):
        print('note: matplotlib is not installed; kl_budget.png not written', file=sys.stderr)
    print(markdown)
    return table


def parse_int_list(values, flag):
    try:
        parsed = sorted({int(v) for v in values})
    except ValueError:
        raise DC3Error(f'--{flag} {",".join(values)}: expected whole numbers') from None
    if not parsed or parsed[0] < 1:
        raise DC3Error(f'--{flag} needs values of at least 1')
    return parsed


def main(argv):
    if len(argv) > 1:
        raise DC3Error(f'unexpected arguments: {" ".join(argv[1:])}')
    sources = parse_sources(FLAGS.source)
    repetitions = parse_int_list(FLAGS.repetitions, 'repetitions')
    if FLAGS.table_repetitions not in repetitions:
        raise DC3Error(f'--table_repetitions {FLAGS.table_repetitions} is not one of '
                       f'--repetitions {",".join(map(str, repetitions))}')
    if FLAGS.simulations < 2:
        raise DC3Error(f'--simulations {FLAGS.simulations}: κ needs at least 2')
    try:
        offsets = [relabel.check_offset(float(v)) for v in FLAGS.acceptance_offset]
    except ValueError:
        raise DC3Error(f'--acceptance_offset {",".join(FLAGS.acceptance_offset)}: expected '
                       'numbers') from None
    if FLAGS.cluster_proposals not in (0, 1):
        raise DC3Error(f'--cluster_proposals {FLAGS.cluster_proposals} must be 0 or 1')
    rows, estimates = run_simulations(sources, FLAGS.splits, repetitions, offsets,
                                      FLAGS.simulations, FLAGS.seed, FLAGS.report,
                                      cluster_proposals=bool(FLAGS.cluster_proposals))
    write_outputs(FLAGS.out, rows, estimates, FLAGS.table_repetitions)


if __name__ == '__main__':
    define_flags()
    app.run(lambda argv: io_utils.run_cli(main, argv))

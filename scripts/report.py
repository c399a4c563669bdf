#!/usr/bin/env python
"""Paper tables 2 and 4 from finished (or running) training runs.

    python scripts/report.py RUN_DIR_OR_PARENT [...] --split val --out reports_out [--model ema]

Every folder holding an ``args.json`` below the given paths is a run. Each run contributes the
metrics of its last report (highest image count) in ``metrics.jsonl``. Runs whose ``args.json``
differ only in the dataset seed, training seed or train_dir form a group; each group is labelled
with its ablation variant (Baseline, +CE⁻¹, +CC, +DC3). Degenerate runs (see
``libml.metrics.split_metrics``) and runs with an undefined d - F1 are left out of the statistics.

Writes ``table2.{md,csv}`` (per dataset and method the best vanilla run against the best run of
the paper's DC3 -- ``+DC3 (p_A=0.6)``, the ``dc3`` variant of run_ablation.py -- and one more row
for each other DC3 variant present, labelled as such; our own options say "ours"),
``table4.{md,csv}`` (best and mean ± std per dataset, method and group) and ``runs.csv`` (one line
per run) into ``--out``; all values in %.
"""
import json
import math
import os
import sys

import numpy as np
import pandas as pd
from absl import app, flags


from libml import io_utils, run_files
from libml.errors import DC3Error
from libml.run_args import OPERATIONAL_KEYS

FLAGS = flags.FLAGS
# Keys of args.json that vary between the members of one run group.
PER_RUN_KEYS = ('dataset', 'dataset_seed', 'seed') + OPERATIONAL_KEYS
# (column prefix, metric key) of the values the tables show.
TABLE_METRICS = (('F1', 'f1_certain'), ('d', 'inner_distance'), ('d-F1', 'd_minus_f1'),
                 ('ambiguous %', 'ambiguous_share'))
MISSING = '—'
# Hyperparameters that define the variant (so its label already shows them).
VARIANT_KEYS = ('combined_output', 'wou', 'wol', 'prior_fuzzy_distribution', 'ambiguity_rank',
                'scale_labeled_ceinv', 'supervised_certainty', 'losses_version')
VARIANT_ORDER = ('Baseline', '+CE⁻¹', '+CC', '+DC3')  # the rows of paper Table 4
PAPER_PRIOR = 0.6  # the p_A of the paper's experiments (the spec's default)
PAPER_DC3 = f'+DC3 (p_A={PAPER_PRIOR:g})'  # the paper's DC3 as our defaults run it
LOSSES_VERSION = 2  # libml.dc3.LOSSES_VERSION: the losses that follow the original code


def define_flags():
    flags.DEFINE_enum('split', 'val', ['train', 'unlabeled', 'val', 'test'], 'Split to report.')
    flags.DEFINE_string('out', 'reports_out', 'Folder for the tables.')
    flags.DEFINE_enum('model', 'ema', ['ema', 'raw'], 'Which weights\' metrics to report.')


# ---------------------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------------------

def find_run_dirs(paths):
    """All folders containing an ``args.json`` at or below ``paths``, sorted."""
    found = set()
    for path in paths:
        if not os.path.isdir(path):
            raise DC3Error(f'{path} is not a folder; pass run folders or folders containing them')
        for root, dirs, files in os.walk(path):
            if 'args.json' in files:
                found.add(os.path.normpath(root))
                dirs[:] = []  # a run folder holds no nested runs
            else:
                dirs[:] = [d for d in dirs if not d.startswith('.')]
    return sorted(found)


def last_report(jsonl_path):
    """The report with the most images seen in ``metrics.jsonl``; None if it has none yet.

    A line cut short by a crash is skipped with a warning (``run_files.read_metrics``); a complete
    line that is not a report is an error.
    """
    best = None
    for number, entry in enumerate(run_files.read_metrics(os.path.dirname(jsonl_path) or '.'), 1):
        try:
            images = int(entry['images'])
            if not isinstance(entry['splits'], dict):
                raise TypeError('"splits" is not an object')
        except (ValueError, KeyError, TypeError) as e:
            raise DC3Error(f'{jsonl_path} report {number} is not a valid report '
                           f'({type(e).__name__}: {e}); fix or remove that line') from None
        if best is None or images >= best['images']:
            best = dict(entry, images=images)
    return best


def variant_of(args):
    """The paper Table 4 ablation a run belongs to, from its hyperparameters."""
    combined = int(args.get('combined_output', 0))
    uses_ceinv = float(args.get('wou', 0)) > 0 or float(args.get('wol', 0)) > 0
    if combined == 0:
        return '+CE⁻¹' if uses_ceinv else 'Baseline'
    if combined == 4:
        if not uses_ceinv:
            return '+CC'
        return f'+DC3 (p_A={float(args.get("prior_fuzzy_distribution", 0.6)):g}' \
               f'{"".join(_dc3_options(args))})'
    return f'combined_output={combined}'


def _dc3_options(args):
    """The parts of a DC3 run's label that say how it departs from the paper's DC3."""
    options = []
    rank = args.get('ambiguity_rank', 'p_a')
    if rank != 'p_a':
        options.append(f', L_A ranks {rank}; ours')
    if int(args.get('scale_labeled_ceinv', 1)) == 0:
        options.append(', labeled CE⁻¹ unscaled')
    if args.get('supervised_certainty', 'labeled') != 'labeled':
        options.append(f', CE scaled by {args["supervised_certainty"]} p_a')
    if int(args.get('losses_version') or 1) < LOSSES_VERSION:
        options.append('; losses before 2026-12-03')
    return options


def variant_rank(variant):
    ranks = [i for i, prefix in enumerate(VARIANT_ORDER) if variant.startswith(prefix)]
    return ranks[0] if ranks else len(VARIANT_ORDER)


def group_key(args):
    return json.dumps({k: v for k, v in run_files.normalised_args(args).items()
                       if k not in PER_RUN_KEYS}, sort_keys=True)


def collect_runs(paths, split='val', model='ema'):
    """One row per run with at least one report: identity, group, variant and metrics."""
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise DC3Error(f'no run folders (folders with an args.json) found below {", ".join(paths)}')
    rows = []
    for run_dir in run_dirs:
        args = io_utils.read_json(os.path.join(run_dir, 'args.json'), 'run arguments')
        jsonl = os.path.join(run_dir, 'metrics.jsonl')
        report = last_report(jsonl) if os.path.exists(jsonl) else None
        if report is None:
            print(f'warning: {run_dir} has no report yet; skipped', file=sys.stderr)
            continue
        try:
            metrics = report['splits'][split][model]
        except (KeyError, TypeError):
            raise DC3Error(f'{jsonl}: the last report (images={report["images"]}) has no '
                           f'{split!r}/{model!r} metrics; pick another --split or --model'
                           ) from None
        row = {
            'dataset': args.get('dataset_name', args.get('dataset', '?')),
            'method': args.get('method', '?'),
            'variant': variant_of(args),
            'group': group_key(args),
            'run_dir': run_dir,
            'dataset_seed': args.get('dataset_seed'),
            'seed': args.get('seed'),
            'images': report['images'],
            'finished': bool(float(report.get('kimg', report['images'] / 1024))
                             >= float(args.get('train_kimg', 0)) - 1e-9),
            'degenerate': bool(metrics.get('degenerate', False)),
        }
        for _, key in TABLE_METRICS:
            value = metrics.get(key)
            row[key] = np.nan if value is None else 100 * float(value)
        row['valid'] = not row['degenerate'] and not math.isnan(row['d_minus_f1'])
        rows.append(row)
    if not rows:
        raise DC3Error(f'none of the {len(run_dirs)} run folders has a report in metrics.jsonl yet')
    unfinished = [row['run_dir'] for row in rows if not row['finished']]
    if unfinished:
        print(f'warning: {len(unfinished)} of {len(rows)} runs have not reached their train_kimg; '
              'they count with their latest report (column "finished" of runs.csv): '
              + ', '.join(unfinished), file=sys.stderr)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def best_run(runs):
    """The valid run with the lowest d - F1 (first in order on ties), or None."""
    valid = runs[runs['valid']]
    if valid.empty:
        return None
    return valid.loc[valid['d_minus_f1'].idxmin()]


def group_labels(runs):
    """Per group, the hyperparameters (besides the variant's own) in which the groups of one
    dataset and method differ; empty when the variant alone tells them apart."""
    labels = {}
    for _, cell in runs.groupby(['dataset', 'method'], sort=False):
        configs = {g: json.loads(g) for g in cell['group'].unique()}
        keys = sorted({k for c in configs.values() for k in c} - set(VARIANT_KEYS))
        differing = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
        for g, config in configs.items():
            labels[g] = ' '.join(f'{k}={config.get(k)}' for k in differing)
    return labels


def table4(runs):
    """Per dataset, method and group: the best valid run, mean ± std of the valid runs, counts."""
    labels = group_labels(runs)
    rows = []
    for (dataset, method, variant, group), members in runs.groupby(
            ['dataset', 'method', 'variant', 'group'], sort=True):
        valid = members[members['valid']]
        best = best_run(members)
        row = {'dataset': dataset, 'method': method, 'variant': variant,
               'config': labels[group], 'valid_runs': len(valid), 'total_runs': len(members),
               'best_run': None if best is None else best['run_dir']}
        for name, key in TABLE_METRICS:
            row[f'{name} best'] = np.nan if best is None else best[key]
            row[f'{name} mean'] = valid[key].mean() if len(valid) else np.nan
            row[f'{name} std'] = valid[key].std(ddof=1) if len(valid) > 1 else np.nan
        rows.append(row)
    order = [(r['dataset'], r['method'], variant_rank(r['variant']), r['variant'], r['config'])
             for r in rows]
    return pd.DataFrame([row for _, row in sorted(zip(order, rows), key=lambda x: x[0])])


def table2(runs):
    """Per dataset and method: the best vanilla (Baseline) run against the best run of the
    paper's DC3 (``PAPER_DC3``); then, against the same vanilla run, one row for every other
    +DC3 variant of that cell (another p_A, our options, runs of the earlier losses)."""
    rows = []
    for (dataset, method), cell in runs.groupby(['dataset', 'method'], sort=True):
        vanilla = best_run(cell[cell['variant'] == 'Baseline'])
        others = sorted(v for v in cell['variant'].unique()
                        if v.startswith('+DC3') and v != PAPER_DC3)
        for variant in [PAPER_DC3] + others:
            best = best_run(cell[cell['variant'] == variant])
            row = {'dataset': dataset, 'method': method, '+DC3 variant': variant}
            for prefix, chosen in (('vanilla', vanilla), ('+DC3', best)):
                for name, key in TABLE_METRICS[:3]:
                    row[f'{prefix} {name}'] = np.nan if chosen is None else chosen[key]
                row[f'{prefix} run'] = None if chosen is None else chosen['run_dir']
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value):
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f'{value:.2f}'


def _fmt_mean_std(mean, std):
    if math.isnan(mean):
        return MISSING
    return f'{mean:.2f}' if math.isnan(std) else f'{mean:.2f} ± {std:.2f}'


def markdown(frame):
    """A GitHub markdown table of string cells (pandas' to_markdown needs tabulate)."""
    header = '| ' + ' | '.join(frame.columns) + ' |'
    rule = '|' + '|'.join('---' for _ in frame.columns) + '|'
    body = ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in frame.itertuples(index=False)]
    return '\n'.join([header, rule] + body) + '\n'


def table2_markdown(t2):
    shown = pd.DataFrame({'dataset': t2['dataset'], 'method': t2['method']})
    for prefix in ('vanilla', '+DC3'):
        for name, _ in TABLE_METRICS[:3]:
            shown[f'{prefix} {name}'] = t2[f'{prefix} {name}'].map(_fmt)
    shown['+DC3 variant'] = t2['+DC3 variant'].fillna(MISSING)
    return markdown(shown)


def table4_markdown(t4):
    shown = t4[['dataset', 'method', 'variant', 'config']].copy()
    shown['config'] = shown['config'].replace('', MISSING)
    shown['runs'] = [f'{v}/{t}' for v, t in zip(t4['valid_runs'], t4['total_runs'])]
    for name, _ in TABLE_METRICS:
        shown[f'{name} best'] = t4[f'{name} best'].map(_fmt)
        shown[f'{name} mean ± std'] = [_fmt_mean_std(m, s) for m, s in
                                       zip(t4[f'{name} mean'], t4[f'{name} std'])]
    return markdown(shown)


def write_report(paths, out, split='val', model='ema'):
    """Collects the runs, writes all tables into ``out`` and returns (runs, table2, table4)."""
    runs = collect_runs(paths, split, model)
    t2, t4 = table2(runs), table4(runs)
    title = f'{split} split, {model} weights, values in %'
    t2_md = f'## Table 2 — vanilla vs +DC3 (best run by d-F1; {title})\n\n' + table2_markdown(t2)
    t4_md = (f'## Table 4 — ablation (best run, mean ± std over non-degenerate runs; {title})\n\n'
             + table4_markdown(t4))
    io_utils.write_text(os.path.join(out, 'table2.md'), t2_md)
    io_utils.write_text(os.path.join(out, 'table4.md'), t4_md)
    for name, frame in (('table2', t2), ('table4', t4), ('runs', runs)):
        io_utils.write_text(os.path.join(out, f'{name}.csv'), frame.round(4).to_csv(index=False))
    print(t2_md)
    print(t4_md)
    return runs, t2, t4


def main(argv):
    paths = argv[1:]
    if not paths:
        raise DC3Error('pass at least one run folder or a folder containing runs')
    write_report(paths, FLAGS.out, FLAGS.split, FLAGS.model)


if __name__ == '__main__':
    define_flags()
    app.run(lambda argv: io_utils.run_cli(main, argv))

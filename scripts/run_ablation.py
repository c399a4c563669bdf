#!/usr/bin/env python
"""Runs the paper's Table 4 ablation (variants × methods × dataset seeds) for one dataset.

    python scripts/run_ablation.py --dataset_name cifar10n --seeds 1,2,3 \\
        --methods mean_teacher,fixmatch --variants baseline,ceinv,cc,dc3,dc3_prior \\
        --train_dir experiments --extra "--filters 32 --train_kimg 64" [--dry_run]

Each run is one call of a method script at the repository root, one after the other; then the
tables are written by ``scripts/report.py``'s code over the runs of this ablation. A run whose
folder already holds its final report is skipped, so an interrupted ablation resumes where it
stopped; a folder counts as the run's only if its args.json records the same method, dataset and
value of every flag, the flags the command leaves at their defaults included.
``dc3_uncertainty`` is DC3 with ``--ambiguity_rank uncertainty`` (ours, not the paper's).
``dc3_prior`` uses the dataset's own ambiguous share (``--dataset_prior``, by default the training
pool's ``ambiguous_fraction`` in the first seed's meta.json, rounded to 2 decimals so all seeds
share one value and therefore one run group).
"""
import functools
import math
import os
import shlex
import subprocess
import sys

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from libml import io_utils, methods, run_files
from libml.errors import DC3Error
from scripts import report as report_lib

FLAGS = flags.FLAGS
# Method script -> the method name its runs record in args.json (FOC has no DC3 ablation).
METHODS = {name: cls for name, cls in methods.METHODS.items() if name != 'foc'}
DEFAULT_PRIOR = 0.6
VARIANTS = {
    'baseline': {'combined_output': 0, 'wou': 0, 'wol': 0},
    'ceinv': {'combined_output': 0, 'wou': 10, 'wol': 10},
    'cc': {'combined_output': 4, 'wou': 0, 'wol': 0},
    'dc3': {'combined_output': 4, 'wou': 10, 'wol': 10, 'prior_fuzzy_distribution': DEFAULT_PRIOR},
    'dc3_prior': None,  # dc3 with the dataset's own prior, filled in by variant_flags()
    # Not in the paper: L_A ranks by the classifier's uncertainty (README, --ambiguity_rank).
    'dc3_uncertainty': {'combined_output': 4, 'wou': 10, 'wol': 10,
                        'prior_fuzzy_distribution': DEFAULT_PRIOR, 'ambiguity_rank': 'uncertainty'},
}
PAPER_VARIANTS = ('baseline', 'ceinv', 'cc', 'dc3', 'dc3_prior')  # Table 4; the default
# Flags this script sets itself; --extra may not override them.
CONTROLLED = {'dataset', 'train_dir', 'combined_output', 'wou', 'wol', 'prior_fuzzy_distribution',
              'ambiguity_rank'}
DATASET_SUFFIX = '@-1-10'  # all labeled images of the split, FixMatch-style name


def define_flags():
    flags.DEFINE_string('dataset_name', None, 'Dataset name, e.g. cifar10n.')
    flags.DEFINE_string('seeds', '1,2,3', 'Comma-separated dataset seeds.')
    flags.DEFINE_string('methods', ','.join(m for m in METHODS if m != 'dnll'),
                        f'Comma-separated method scripts from {", ".join(METHODS)} (default: '
                        'the paper\'s five).')
    flags.DEFINE_string('variants', ','.join(PAPER_VARIANTS),
                        f'Comma-separated ablation variants from {", ".join(VARIANTS)}.')
    flags.DEFINE_float('dataset_prior', None, 'p_A of dc3_prior (default: from meta.json).')
    flags.DEFINE_string('data_dir', None, 'Generated datasets (default: $ML_DATA or ./data).')
    flags.DEFINE_string('train_dir', 'experiments', 'Where the method scripts write their runs.')
    flags.DEFINE_string('report_out', None, 'Tables folder (default: <train_dir>/ablation_<name>).')
    flags.DEFINE_string('extra', '', 'Flags passed on to every method script, in quotes.')
    flags.DEFINE_bool('dry_run', False, 'Print the commands instead of running them.')
    flags.mark_flag_as_required('dataset_name')


def split_list(text, allowed=None, what='value'):
    items = [item.strip() for item in text.split(',') if item.strip()]
    if not items:
        raise DC3Error(f'no {what} given')
    unknown = [item for item in items if allowed is not None and item not in allowed]
    if unknown:
        raise DC3Error(f'unknown {what} {", ".join(unknown)}; choose from {", ".join(allowed)}')
    return items


def parse_extra(extra):
    """``--key value`` / ``--key=value`` tokens of ``extra`` as a dict; a bare ``--key`` is true."""
    tokens = shlex.split(extra)
    values, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith('--'):
            raise DC3Error(f'--extra: expected a flag starting with --, got {token!r}')
        key, eq, value = token[2:].partition('=')
        if not eq:
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith('--')
            value = tokens[i + 1] if has_value else 'true'
            i += has_value
        values[key] = value
        i += 1
    overridden = sorted(CONTROLLED & set(values))
    if overridden:
        raise DC3Error(f'--extra may not set {", ".join(overridden)}: this script sets them per '
                       'variant and dataset')
    return values


def dataset_prior_from_meta(data_dir, name, seed):
    from libml import records  # imports TensorFlow, so only when needed
    info = records.load_dataset_info(data_dir or records.default_data_dir(), name, seed)
    if info.prior_ambiguity <= 0:
        raise DC3Error(f'meta.json of {name}.{seed} has no ambiguous_fraction.pool; '
                       'pass --dataset_prior')
    return round(info.prior_ambiguity, 2)


def variant_flags(variant, prior):
    if variant == 'dc3_prior':
        return dict(VARIANTS['dc3'], prior_fuzzy_distribution=prior)
    return VARIANTS[variant]


def plan(dataset_name, seeds, methods, variants, train_dir, extra, prior=None):
    """The runs of the ablation: dicts with method, dataset spec, the flags and the command."""
    extra_flags = parse_extra(extra)
    runs, seen = [], set()
    for seed in seeds:
        for method in methods:
            for variant in variants:
                dataset = f'{dataset_name}.{seed}{DATASET_SUFFIX}'
                hparams = {k: str(v) for k, v in variant_flags(variant, prior).items()}
                command = [sys.executable, f'{method}.py', '--dataset', dataset,
                           '--train_dir', train_dir]
                command += [f'--{k}={v}' for k, v in hparams.items()] + shlex.split(extra)
                hparams.update(extra_flags)
                if tuple(command) in seen:  # e.g. dc3_prior with a prior of 0.6 is dc3
                    print(f'warning: {variant} repeats an earlier run: {shlex.join(command)}',
                          file=sys.stderr)
                    continue
                seen.add(tuple(command))
                runs.append({'script': method, 'method': METHODS[method], 'dataset': dataset,
                             'variant': variant, 'hparams': hparams, 'command': command})
    return runs


def _same(recorded, wanted):
    try:
        return math.isclose(float(recorded), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(recorded).lower() == str(wanted).lower()


@functools.lru_cache(maxsize=None)
def method_flag_defaults(method):
    """Every flag of a method script (``fixmatch``, ...) with its default, as the script sets them
    (``libml.methods.flag_defaults``; it imports TensorFlow, so only when needed). Do not modify
    the returned dict: it is cached."""
    return methods.flag_defaults(method)


def matching_run(existing, run, defaults):
    """The existing run folder whose args.json records exactly this run's configuration.

    ``defaults``: the method script's flag defaults (``method_flag_defaults``). The run's full
    configuration is those defaults with the run's own flags on top, so a flag the run leaves at
    its default must match too: a folder trained with ``--ambiguity_rank uncertainty`` is not the
    ``dc3`` variant's run. Operational flags (report_kimg, ...) and flags that args.json does
    not record are ignored.
    """
    wanted = run_files.normalised_args({**defaults, **run['hparams'], 'dataset': run['dataset']})
    identity = {k: v for k, v in wanted.items() if k not in report_lib.OPERATIONAL_KEYS}
    for run_dir, args in existing:
        if args.get('method') != run['method'] or args.get('dataset') != run['dataset']:
            continue
        if run_files.is_vanilla(args) != run_files.is_vanilla(wanted):
            continue  # a vanilla run's args.json may lack DC3's fields altogether
        recorded = run_files.with_added_defaults(args)  # a key args.json predates
        if all(_same(recorded[k], v) for k, v in identity.items() if k in recorded):
            return run_dir, args
    return None


def is_finished(run_dir, args):
    jsonl = os.path.join(run_dir, 'metrics.jsonl')
    last = report_lib.last_report(jsonl) if os.path.exists(jsonl) else None
    return (last is not None and 'train_kimg' in args
            and float(last.get('kimg', 0)) >= float(args['train_kimg']) - 1e-9)


def existing_runs(train_dir):
    if not os.path.isdir(train_dir):
        return []
    return [(d, io_utils.read_json(os.path.join(d, 'args.json'), 'run arguments'))
            for d in report_lib.find_run_dirs([train_dir])]


def run_ablation(dataset_name, seeds, methods, variants, train_dir, extra='', prior=None,
                 data_dir=None, report_out=None, dry_run=False):
    if 'dc3_prior' in variants and prior is None:
        prior = dataset_prior_from_meta(data_dir, dataset_name, seeds[0])
    runs = plan(dataset_name, seeds, methods, variants, train_dir, extra, prior)
    existing = existing_runs(train_dir)

    def find(run):
        # The defaults cost a TensorFlow import: read them only where there is a run to match.
        if not any(args.get('method') == run['method'] for _, args in existing):
            return None
        return matching_run(existing, run, method_flag_defaults(run['script']))

    for i, run in enumerate(runs, 1):
        line = shlex.join(run['command'])
        found = find(run)
        if found and is_finished(*found):
            print(f'# [{i}/{len(runs)}] skip, finished in {found[0]}: {line}')
            continue
        print(f'[{i}/{len(runs)}] {line}', flush=True)
        if not dry_run:
            status = subprocess.run(run['command'], cwd=REPO_ROOT).returncode
            if status:
                raise DC3Error(f'{run["method"]} {run["variant"]} on {run["dataset"]} failed with '
                               f'exit status {status}; fix it and rerun to resume')
    report_out = report_out or os.path.join(train_dir, f'ablation_{dataset_name}')
    if dry_run:
        print(f'# then: scripts/report.py over these runs --split val --out {report_out}')
        return runs
    existing = existing_runs(train_dir)
    found = [find(run) for run in runs]
    run_dirs = sorted({f[0] for f in found if f})
    if not run_dirs:
        raise DC3Error(f'no run folder under {train_dir} records the flags of this ablation; '
                       'check that the method scripts write args.json there')
    report_lib.write_report(run_dirs, report_out, split='val', model='ema')
    return runs


def main(argv):
    if len(argv) > 1:
        raise DC3Error(f'unexpected arguments: {" ".join(argv[1:])}; '
                       'pass method flags with --extra')
    try:
        seeds = [int(s) for s in split_list(FLAGS.seeds, what='seed')]
    except ValueError:
        raise DC3Error(f'--seeds must be comma-separated integers, got {FLAGS.seeds!r}') from None
    run_ablation(FLAGS.dataset_name, seeds,
                 split_list(FLAGS.methods, METHODS, 'method'),
                 split_list(FLAGS.variants, VARIANTS, 'variant'),
                 FLAGS.train_dir, FLAGS.extra, FLAGS.dataset_prior, FLAGS.data_dir,
                 FLAGS.report_out, FLAGS.dry_run)


if __name__ == '__main__':
    define_flags()
    app.run(lambda argv: io_utils.run_cli(main, argv))

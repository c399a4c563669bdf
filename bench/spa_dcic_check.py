"""Our simulated relabeling against DCIC's own SPA code on the same images and proposals.

DCIC (github.com/Emprime/dcic) is not a dependency; pass a checkout of it with ``--dcic_src``
(its ``src`` package imports with numpy, pandas, absl, tqdm, matplotlib and opencv). For one run
the script takes the images of ``--splits`` in CSV order and each image's proposal as
``scripts/simulate_relabeling.py`` makes it, then

* DCIC: builds its ``AnnotationOracle`` from the dataset's raw ``annotations.json`` (the import's
  ``meta.json`` names the folder), ``init``\\ s it (seed 49312) and calls
  ``SimulatedProposalAcceptance.simulate_proposal_acceptance`` per image, in order; from scratch,
  ``AnnotationOracle.get_soft_gt(path, r)``;
* ours: ``libml.relabel.simulate`` with DCIC's seed and the ground truth of the prediction CSVs;

and prints, per δ and number of annotations r, the share of images whose estimates are equal, the
KL and macro F1 of both and the weighted budget per image of both (DCIC: its dataset's
``weighted_budget``). Writes ``--out`` (CSV).

    python -m bench.spa_dcic_check --dcic_src /path/to/dcic --run_dir RUN [--data_dir data]
"""
import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

from libml import io_utils, records, relabel
from libml.errors import DC3Error
from scripts import simulate_relabeling


def dcic_modules(dcic_src):
    sys.path.insert(0, os.path.abspath(dcic_src))
    try:
        from src.algorithms.spa import SimulatedProposalAcceptance
        from src.util.json import DatasetDCICJson
        from src.util.oracle import AnnotationOracle
    except ImportError as e:
        raise DC3Error(f'DCIC\'s code does not import from {dcic_src} ({e}); pass a DCIC checkout '
                       'and install its imports (e.g. opencv-python-headless)') from None
    return SimulatedProposalAcceptance, DatasetDCICJson, AnnotationOracle


def dcic_oracle(modules, meta, classes):
    _, dataset_json, oracle_cls = modules
    annotations = os.path.join(meta['source'], 'annotations.json')
    if not os.path.exists(annotations):
        raise DC3Error(f'{annotations} not found: the raw dataset the run was imported from')
    oracle = oracle_cls(annotations)
    if list(oracle.get_classes()) != list(classes):
        raise DC3Error(f'DCIC orders the classes {oracle.get_classes()}, the run {classes}')
    oracle.init(dataset_json.from_definition(meta.get('dcic_dataset_name', meta['name']),
                                             int(meta.get('slice', 1)), list(classes)))
    return oracle


def compare(modules, meta, classes, run, proposed, repetitions, offset):
    """One row: DCIC's and our simulation of every image, side by side."""
    spa = modules[0]
    gt = run['soft_gt']
    n = len(gt)
    oracle = dcic_oracle(modules, meta, classes)
    start = time.perf_counter()
    if proposed is None:
        theirs = np.array([oracle.get_soft_gt(p, repetitions) for p in run['paths']])
    else:
        theirs = np.array([spa.simulate_proposal_acceptance(None, int(c), oracle, repetitions,
                                                            p, offset)
                           for p, c in zip(run['paths'], proposed)])
    dcic_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours, cost = relabel.simulate(gt, proposed, repetitions, offset, relabel.DCIC_SEED)
    our_seconds = time.perf_counter() - start
    oracle_gt = np.array([oracle.get_soft_gt(p, -1) for p in run['paths']])
    return {
        'source': 'none' if proposed is None else 'proposals', 'offset': offset,
        'repetitions': repetitions, 'images': n,
        'max |gt difference|': float(np.abs(oracle_gt - gt).max()),
        'equal estimates %': 100 * float(np.mean(np.all(np.isclose(ours, theirs), axis=1))),
        'KL dcic': relabel.kl_divergence(oracle_gt, theirs), 'KL ours': relabel.kl_divergence(
            gt, ours),
        'macro F1 dcic %': 100 * relabel.macro_f1(oracle_gt, theirs),
        'macro F1 ours %': 100 * relabel.macro_f1(gt, ours),
        'budget dcic': oracle.datasetDCIC.weighted_budget / n, 'budget ours': cost,
        'seconds dcic': dcic_seconds, 'seconds ours': our_seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dcic_src', required=True, help='DCIC checkout (holding src/).')
    parser.add_argument('--run_dir', required=True)
    parser.add_argument('--data_dir', default=records.default_data_dir())
    parser.add_argument('--splits', default='unlabeled,val')
    parser.add_argument('--repetitions', default='1,3')
    parser.add_argument('--offsets', default='0,0.2608,0.6481')
    parser.add_argument('--out', default='bench/out/spa_dcic_check.csv')
    a = parser.parse_args(argv)

    args = io_utils.read_json(os.path.join(a.run_dir, 'args.json'), 'run arguments')
    info = records.load_dataset_info(a.data_dir, args['dataset_name'], int(args['dataset_seed']))
    meta = io_utils.read_json(os.path.join(info.directory, records.META_FILE), 'dataset metadata')
    run = simulate_relabeling.read_run(a.run_dir, a.splits.split(','))
    proposed, _ = relabel.proposals(run['class_probs'], run['ambiguity'], run['cluster_ids'],
                                    run['majorities'])
    modules = dcic_modules(a.dcic_src)
    rows = []
    for r in [int(v) for v in a.repetitions.split(',')]:
        rows.append(compare(modules, meta, info.classes, run, None, r, None))
        for offset in [float(v) for v in a.offsets.split(',')]:
            rows.append(compare(modules, meta, info.classes, run, proposed, r, offset))
    frame = pd.DataFrame(rows)
    io_utils.write_text(a.out, frame.round(6).to_csv(index=False))
    with pd.option_context('display.width', 250, 'display.max_columns', 30):
        print(frame.round(4).to_string(index=False))


if __name__ == '__main__':
    io_utils.run_cli(main)

"""Keeps what the tables need of finished runs in a committed folder, and puts it back.

BENCHMARK-ONLY. Long series (BENCHMARKS.md section 9: Table 2's 33 runs, the 256-kimg runs) take
more CPU than one session has, and ``experiments/`` is git-ignored: a fresh checkout starts with
no run folders. So after each run, ``keep`` copies what the tables read into a folder that is
committed, and a new session ``restore``s it before it resumes the series:

    python -m bench.keep_results keep experiments/cifar10n_faithful bench/results/faithful_table2
    python -m bench.keep_results restore bench/results/faithful_table2 experiments/cifar10n_faithful

What a kept run holds (the same relative path as its run folder):
  * ``args.json`` and ``metrics.jsonl``: all that ``scripts/report.py`` reads (Tables 2 and 4), and
    what ``scripts/run_ablation.py`` reads to skip a finished run;
  * ``curves.val.json``: ``bench.ambiguity_curves``' rows of every report (F1, d, p_a's AUROC
    against the annotators' disagreement, ...), computed from the report CSVs, which are not kept
    (2-7 MB per report of a CIFAR-10N run, with the last report's embeddings).
    ``bench.ambiguity_curves`` reads this file when a run has no CSVs.

Only finished runs (final report in metrics.jsonl) are kept: an unfinished one cannot resume
without its checkpoint, which is not kept either. Every file is written to a temporary name and
renamed, ``metrics.jsonl`` last (a kept copy being replaced loses its old one first): a run
folder without it is not a kept run (``restore`` and ``report.py`` skip it), whatever point a
kill interrupted.
"""
import argparse
import filecmp
import json
import os
import shutil
import sys

from bench import ambiguity_curves
from libml import io_utils, run_files
from scripts import report, run_ablation

SPLIT = 'val'


def finished_runs(root):
    """``[(relative path, run folder)]`` of the finished runs below ``root``."""
    runs = []
    for run_dir in report.find_run_dirs([root]):
        args = io_utils.read_json(os.path.join(run_dir, run_files.ARGS_FILE), 'run arguments')
        if run_ablation.is_finished(run_dir, args):
            runs.append((os.path.relpath(run_dir, root), run_dir))
    return runs


def _copy(src, dst):
    with io_utils.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def keep(src_root, dst_root):
    """Copies every finished run below ``src_root`` that ``dst_root`` lacks or holds older."""
    kept = 0
    for relative, run_dir in finished_runs(src_root):
        target = os.path.join(dst_root, relative)
        metrics = os.path.join(run_dir, run_files.METRICS_FILE)
        kept_metrics = os.path.join(target, run_files.METRICS_FILE)
        if os.path.exists(kept_metrics):
            if filecmp.cmp(metrics, kept_metrics, shallow=False):
                continue
            os.remove(kept_metrics)  # a retrained run: not a kept run until its copy is whole
        os.makedirs(target, exist_ok=True)
        _copy(os.path.join(run_dir, run_files.ARGS_FILE),
              os.path.join(target, run_files.ARGS_FILE))
        io_utils.write_text(ambiguity_curves.kept_rows_path(target, SPLIT),
                            json.dumps(ambiguity_curves.report_rows(run_dir, SPLIT), indent=1))
        _copy(metrics, kept_metrics)
        print(f'kept {relative}')
        kept += 1
    return kept


def restore(kept_root, dst_root):
    """Puts every kept run back below ``dst_root`` where no folder of that name exists."""
    restored = 0
    for relative, kept_dir in finished_runs(kept_root):
        target = os.path.join(dst_root, relative)
        if os.path.exists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with io_utils.atomic_path(target) as tmp:
            shutil.copytree(kept_dir, tmp)
        print(f'restored {relative}')
        restored += 1
    return restored


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('mode', choices=('keep', 'restore'))
    parser.add_argument('src', help='keep: the runs\' folder; restore: the kept folder')
    parser.add_argument('dst', help='keep: the kept folder; restore: the runs\' folder')
    args = parser.parse_args(argv)
    count = (keep if args.mode == 'keep' else restore)(args.src, args.dst)
    print(f'{args.mode}: {count} run(s)')
    return 0


if __name__ == '__main__':  # a missing folder, a broken args.json, a full disk: one line, exit 2
    sys.exit(io_utils.run_cli(lambda _: main(sys.argv[1:])))

"""F1, d and the ambiguity head's AUROC at every report of every run below some folders.

For each run folder (one with ``args.json``) and each of its reports (``reports/img*``), reads the
prediction CSV of the split and the report's metrics from ``metrics.jsonl`` (a run kept by
``bench/keep_results.py`` has no CSVs: its stored rows), and writes one row: run, method,
variant, seed, kimg, F1 on the certain images, d, d - F1, the share called ambiguous, accuracy,
the AUROC of ``p_a`` against the truth and the same AUROC for the classifier's ``1 - max p_n``.
The truth is "the annotators disagree" (soft label without a class at 1), or with ``--truth`` the
synthetic data's ``truth.csv``: "is a blend of two classes" (``alpha > 0``). Writes
``curves.csv``, ``curves.md`` (the last report of each run), ``curves_by_kimg.md`` (F1, d - F1,
accuracy and both AUROCs at every kimg, one column per method and variant, the mean of its seeds)
and, when matplotlib is installed, ``curves.png`` (F1, d - F1 and p_a's AUROC against kimg, one
line per method and variant: the mean of its seeds).

    python -m bench.ambiguity_curves experiments/cifar10n_long --out bench/out/long
    python -m bench.ambiguity_curves experiments/synthetic_faithful --out bench/out/synthetic \
        --truth data/raw/Synthetic/truth.csv
"""
import argparse
import os
import sys

import pandas as pd

from libml import io_utils, metrics, prediction_csv, run_files
from libml.errors import DC3Error
from scripts import report


def kept_rows_path(run_dir, split):
    """Where a kept run (bench/keep_results.py), which has no report CSVs, stores its rows."""
    return os.path.join(run_dir, f'curves.{split}.json')


def read_truth(path):
    """The synthetic data's truth.csv as a Series: image path -> is a blend of two classes."""
    try:
        truth = pd.read_csv(path, index_col='image_path')
        return truth['alpha'] > 0
    except (OSError, ValueError, KeyError) as e:
        raise DC3Error(f'cannot read the truth file {path} ({e}): pass the truth.csv that '
                       'scripts/make_synthetic.py wrote next to the raw synthetic images') from None


def is_ambiguous(pred, truth=None):
    """Which images of a prediction CSV (``prediction_csv.read_predictions``) are ambiguous:
    blends (``truth``) or disagreement (the soft label has no class at 1)."""
    if truth is None:
        return pred['soft_labels'].max(axis=1) < 1
    paths = pred['frame']['path']
    missing = ~paths.isin(truth.index)
    if missing.any():
        raise DC3Error(f'{missing.sum()} predicted images are not in the truth file, e.g. '
                       f'{paths[missing].iloc[0]}: was the run trained on this synthetic '
                       f'dataset?')
    return truth.loc[paths].to_numpy()


def per_predicted_class(pred, ambiguous):
    """Per predicted class (argmax p_n): images, mean p_a, the truly ambiguous share, precision.

    ``pred`` is ``prediction_csv.read_predictions``' result for a run with an ambiguity head.
    Puts the head's per-class mean p_a next to how ambiguous and how hard each class really is,
    so one can see whether p_a marks the ambiguous classes or others (e.g. the easy ones);
    precision is the share of the images predicted as the class whose label is that class.
    """
    predicted = pred['class_probs'].argmax(axis=1)
    frame = pd.DataFrame({'class': predicted, 'p_a': pred['ambiguity'],
                          'ambiguous': ambiguous.astype(float),
                          'correct': (predicted == pred['labels']).astype(float)})
    return frame.groupby('class').agg(images=('p_a', 'size'), mean_p_a=('p_a', 'mean'),
                                      ambiguous=('ambiguous', 'mean'),
                                      precision=('correct', 'mean'))


def report_rows(run_dir, split, truth=None):
    """One row per report of ``run_dir``: from its CSVs, or a kept run's stored rows.

    ``truth`` (from ``read_truth``) replaces "the annotators disagree" as what the AUROCs rank.
    """
    kept = kept_rows_path(run_dir, split)
    if not run_files.report_folders(run_dir) and os.path.exists(kept):
        if truth is not None:
            raise DC3Error(f'{run_dir} is a kept run without prediction CSVs: its stored AUROCs '
                           f'rank against annotator disagreement, not --truth; leave --truth out')
        return io_utils.read_json(kept, 'kept report rows')
    args = io_utils.read_json(os.path.join(run_dir, 'args.json'), 'run arguments')
    by_images = {int(entry['images']): entry['splits'][split]['ema']
                 for entry in run_files.read_metrics(run_dir)}
    rows = []
    for images, folder in run_files.report_folders(run_dir):
        csv = os.path.join(folder, f'{split}.csv')
        if images not in by_images or not os.path.exists(csv):
            continue
        pred = prediction_csv.read_predictions(csv)
        disagree = is_ambiguous(pred, truth)
        scores = by_images[images]
        rows.append({
            'run': os.path.basename(run_dir), 'method': args.get('method'),
            'variant': report.variant_of(args), 'seed': args.get('dataset_seed'),
            'kimg': images / 1024,
            'F1': _pct(scores.get('f1_certain')), 'd': _pct(scores.get('inner_distance')),
            'd-F1': _pct(scores.get('d_minus_f1')),
            'ambiguous %': _pct(scores.get('ambiguous_share')),
            'accuracy': _pct(scores.get('accuracy')),
            'AUROC p_a': (None if pred['ambiguity'] is None
                          else metrics.auroc(pred['ambiguity'], disagree)),
            'AUROC 1-max p_n': metrics.auroc(1 - pred['class_probs'].max(axis=1), disagree)})
    return rows


def _pct(value):
    return None if value is None else 100 * float(value)


BY_KIMG = ('F1', 'd-F1', 'accuracy', 'AUROC p_a', 'AUROC 1-max p_n')  # curves_by_kimg.md's cells
PLOTTED = ('F1', 'd-F1', 'AUROC p_a')  # curves.png's panels


def seed_means(frame):
    """``{(method, variant): (number of seeds, frame of BY_KIMG's means by kimg)}``."""
    return {key: (runs['seed'].nunique(), runs.groupby('kimg')[list(BY_KIMG)].mean())
            for key, runs in frame.groupby(['method', 'variant'])}


def by_kimg(frame):
    """One row per kimg, one column per method and variant, cells "F1 / d-F1 / accuracy /
    AUROC p_a / AUROC 1-max p_n" (the means of the variant's seeds; '–' where it has no p_a)."""
    columns = {}
    for (method, variant), (_, mean) in seed_means(frame).items():
        columns[f'{method} {variant}'] = mean.apply(
            lambda r: ' / '.join('–' if pd.isna(v) else f'{v:.3f}' if c.startswith('AUROC')
                                 else f'{v:.1f}' for c, v in r.items()), axis=1)
    table = pd.DataFrame(columns).fillna('')
    table.insert(0, 'kimg', [f'{k:g}' for k in table.index])
    return table


def plot(frame, path):
    """F1, d - F1 and p_a's AUROC against kimg: one line per method and variant (mean of seeds)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed: no plot (pip install matplotlib)', file=sys.stderr)
        return
    panels = tuple(zip(PLOTTED, ('F1 on certain images (%)', 'd - F1 (%)', 'AUROC of p_a')))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    palette = plt.rcParams['axes.prop_cycle'].by_key()['color']
    colors = dict(zip(sorted(frame['method'].unique()), palette))
    styles = dict(zip(sorted(frame['variant'].unique()), ('-', '--', ':', '-.')))
    for (method, variant), (seeds, mean) in seed_means(frame).items():
        label = f'{method} {variant}' + (f' (mean of {seeds} seeds)' if seeds > 1 else '')
        for ax, (column, _) in zip(axes, panels):
            if mean[column].notna().any():
                ax.plot(mean.index, mean[column], marker='o', markersize=3, label=label,
                        color=colors[method], linestyle=styles.get(variant, '-'))
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel('kimg')
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1].axhline(0.5, color='grey', linewidth=0.8)  # chance
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path + '.tmp'  # atomic like the tables: a kill leaves the old plot or the new one
    fig.savefig(tmp, dpi=100, format='png')
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('paths', nargs='+', help='run folders or folders that contain them')
    p.add_argument('--split', default='val')
    p.add_argument('--out', required=True, help='folder for curves.csv / .md / _by_kimg.md / .png')
    p.add_argument('--truth', help='truth.csv of the synthetic data: rank against "is a blend" '
                   'instead of "the annotators disagree"')
    args = p.parse_args(argv)
    truth = read_truth(args.truth) if args.truth else None
    rows = [row for run_dir in report.find_run_dirs(args.paths)
            for row in report_rows(run_dir, args.split, truth)]
    if not rows:
        raise DC3Error(f'no reports with {args.split}.csv below {", ".join(args.paths)}')
    frame = pd.DataFrame(rows).sort_values(['method', 'variant', 'seed', 'kimg'])
    os.makedirs(args.out, exist_ok=True)
    io_utils.write_text(os.path.join(args.out, 'curves.csv'), frame.to_csv(index=False))
    last = frame.groupby('run').tail(1)
    io_utils.write_text(os.path.join(args.out, 'curves.md'),
                        report.markdown(last.round(3).astype(str)))
    io_utils.write_text(os.path.join(args.out, 'curves_by_kimg.md'),
                        report.markdown(by_kimg(frame)))
    plot(frame, os.path.join(args.out, 'curves.png'))
    print(report.markdown(last.round(3).astype(str)))
    return 0


if __name__ == '__main__':
    io_utils.run_cli(lambda _: main(sys.argv[1:]))

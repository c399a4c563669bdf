#!/usr/bin/env python
"""Exports one run's predictions: DCIC label proposals, per-cluster galleries and a t-SNE plot.

    python scripts/export_proposals.py --run_dir RUN [--report latest|img0000065536] --split val \\
        --out DIR [--name ID] --data_dir data [--allow_test_fold_in_training 1]

Writes into ``--out``:
* ``predictions-<ID>-<method>-<s2c2|no>#dataset-<DCIC name>-no_alg-01-<fraction>-<slice>``
  ``.1@-1-10.json`` — what DCIC's ``src/algorithms/predictions_import.py`` reads, for a dataset
  imported from the DCIC layout: one file for the dataset's slice holding every split of the
  report as a set named after the split (class confidences ``p_n``) and, for runs with an
  overclustering head, a set ``fuzzy_<split>`` with the full overcluster confidences ``p_o`` (k'
  values). A dataset whose DCIC test fold was in the training pool (imported with
  ``--keep_test 0``) is refused unless ``--allow_test_fold_in_training 1``.
* ``galleries/cluster_<id>.png`` — per cluster of images predicted ambiguous, a grid of its most
  confident members with a caption giving its size and mean soft label.
* ``tsne.png`` — t-SNE of the report's embeddings coloured by output and by ground-truth
  ambiguity; only if matplotlib is installed and the report saved ``<split>_embeddings.npy``.
"""
import datetime
import json
import math
import os
import re
import sys

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw, ImageFont


import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
from libml import io_utils, prediction_csv, records, run_files
from libml.run_files import find_report
from libml.errors import DC3Error

FLAGS = flags.FLAGS
CREATED_AT_FORMAT = '%d-%m-%Y-%H-%M-%S'
CAPTION_LINE = 14  # pixels per caption line with PIL's default bitmap font
GAP = 2  # white pixels between gallery tiles
TILE_MIN, TILE_MAX = 64, 128  # gallery thumbnails are scaled into this size range


def define_flags():
    flags.DEFINE_string('run_dir', None, 'Run folder (the one holding args.json).')
    flags.DEFINE_string('report', 'latest', '"latest" or a report folder name like img0000065536.')
    flags.DEFINE_enum('split', 'val', ['train', 'unlabeled', 'val', 'test'], 'Split to export.')
    flags.DEFINE_string('out', None, 'Output folder.')
    flags.DEFINE_string('name', None, 'Experiment id in the DCIC file name (default: the run '
                        'folder name).')
    flags.DEFINE_string('dcic_dataset', None, 'DCIC dataset name (default: dataset_name of the '
                        'imported annotations.json, else the raw folder name).')
    flags.DEFINE_integer('allow_test_fold_in_training', 0, '1 = export even though the DCIC test '
                         'fold was in the training pool (--keep_test 0): its scores are biased.')
    flags.DEFINE_string('data_dir', records.default_data_dir(), 'Folder of the generated datasets.')
    flags.DEFINE_integer('gallery_size', 36, 'Images per cluster gallery at most.')
    flags.DEFINE_integer('tsne_seed', 0, 'Random seed of t-SNE.')
    flags.mark_flags_as_required(['run_dir', 'out'])


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def dataset_folder_name(meta):
    """Basename of the dataset source folder; DCIC image paths start with it."""
    source = meta.get('source')
    if not source:
        raise DC3Error('the dataset meta.json has no "source"; regenerate the dataset')
    return os.path.basename(os.path.normpath(source))


# ---------------------------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------------------------

# DCIC's importer finds a run's file by these substrings ("mean-no", "mean-s2c2", ...).
DCIC_METHOD_KEYS = {'MeanTeacher': 'mean', 'PiModel': 'pi', 'PseudoLabel': 'pseudo',
                    'FixMatch': 'fixmatch'}
# The DCIC file name parse needs exactly this ending after the slice number.
DCIC_SUFFIX = '.1@-1-10.json'
EXPORT_SPLITS = ('train', 'unlabeled', 'val', 'test')


def cluster_prob_columns(frame):
    """The ``cluster_prob_<j>`` columns (full p_o) of a prediction CSV, in head order."""
    count = sum(c.startswith('cluster_prob_') for c in frame.columns)
    return [f'cluster_prob_{j}' for j in range(count)]


def dcic_dataset_name(meta, override=None):
    """The name DCIC knows the dataset by; it ends up between '-' separators of the file name."""
    name = override or meta.get('dcic_dataset_name') or dataset_folder_name(meta)
    if '-' in name or '/' in name:
        raise DC3Error(f'DCIC dataset name {name!r} contains "-" or "/", which DCIC\'s file name '
                       'parse cannot read; pass --dcic_dataset with the name DCIC uses')
    return name


def check_test_fold(meta, allow=False):
    """Refuses data whose DCIC test fold was trained on, unless explicitly allowed."""
    if meta.get('layout') != 'dcic' or meta.get('keep_test') or allow:
        return
    fold = f' ({meta["dcic_test_fold"]})' if meta.get('dcic_test_fold') else ''
    raise DC3Error(f'dataset {meta.get("name", "?")} was imported with --keep_test 0, so DCIC\'s '
                   f'test fold{fold} was in the training pool and a DCIC evaluation would score '
                   'trained-on images; re-import with --keep_test 1 and retrain, or pass '
                   '--allow_test_fold_in_training 1')


def dcic_file_name(identifier, method, is_dc3, dataset, labeled_fraction, slice_index):
    """``predictions-<id>-<method>-<s2c2|no>#dataset-<name>-no_alg-01-<f>-<v>.1@-1-10.json``.

    The run is trained on one sampled annotation per labeled image, i.e. DCIC's initial
    annotations without a label-improvement algorithm: ``no_alg`` with 1 annotation.
    """
    safe_id = re.sub(r'[^A-Za-z0-9_.]', '_', identifier)
    key = DCIC_METHOD_KEYS.get(method, re.sub(r'[^a-z0-9_]', '_', str(method).lower()))
    head = 's2c2' if is_dc3 else 'no'
    return (f'predictions-{safe_id}-{key}-{head}#dataset-{dataset}-no_alg-01-'
            f'{float(labeled_fraction):0.2f}-{int(slice_index)}{DCIC_SUFFIX}')


def build_dcic_sets(frames, classes, config_text, identifier, dataset, now=None):
    """DCIC prediction sets for ``frames`` ({split: prediction CSV frame}).

    Per split a set named after it with p_n as confidences (DCIC checks that the class label is
    their argmax) and, when the CSV holds p_o, a set ``fuzzy_<split>`` with p_o as confidences:
    DCIC maps the argmax of those to classes by purity, so the cluster label is that argmax.
    """
    created_at = (now or datetime.datetime.now()).strftime(CREATED_AT_FORMAT)
    sets = []
    for kind in ('', 'fuzzy_'):
        for split, frame in frames.items():
            probs = frame[[f'prob_{c}' for c in range(len(classes))]].to_numpy(np.float64)
            if kind:
                columns = cluster_prob_columns(frame)
                if not columns:
                    continue
                confidences = frame[columns].to_numpy(np.float64)
                cluster = np.argmax(confidences, axis=1)
            else:
                confidences = probs
                is_cluster = (frame['output_kind'] == 'cluster').to_numpy()
                cluster = np.where(is_cluster, frame['output'].to_numpy(), -1)
            predictions = [{
                'image_path': f'{dataset}/{path}',
                'class_label': classes[int(np.argmax(p))],
                'cluster_label': int(c) if c >= 0 else None,
                'confidences': [float(v) for v in conf],
            } for path, p, c, conf in zip(frame['path'], probs, cluster, confidences)]
            sets.append({'name': f'{kind}{split}', 'config': config_text,
                         'identifier': identifier, 'created_at': created_at,
                         'predictions': predictions})
    return sets


def write_dcic_export(out, run_dir, args, meta, classes, report_dir, name=None,
                      dcic_dataset=None):
    """Writes the DCIC prediction file; returns its path, or None for a non-DCIC dataset."""
    if meta.get('layout') != 'dcic':
        print('warning: the dataset was not imported from the DCIC layout (it has no DCIC slice); '
              'no DCIC prediction file written', file=sys.stderr)
        return None
    identifier = name or os.path.basename(run_dir)
    dataset = dcic_dataset_name(meta, dcic_dataset)
    frames = {}
    for split in EXPORT_SPLITS:
        path = os.path.join(report_dir, f'{split}.csv')
        if os.path.exists(path):
            frames[split] = prediction_csv.read_predictions(path)['frame']
    has_clusters = any(cluster_prob_columns(f) for f in frames.values())
    # DCIC tells a DC3 (S2C2) run from a vanilla one by this key of the file name.
    is_dc3 = int(args.get('combined_output', 0)) == 4 or float(args.get('wou', 0)) > 0 or \
        float(args.get('wol', 0)) > 0
    if is_dc3 and not has_clusters:
        print('warning: the report\'s CSVs hold no p_o (cluster_prob_* columns; written before '
              'they were kept): no fuzzy sets; re-evaluate the checkpoint with --eval_ckpt for '
              'them', file=sys.stderr)
    if has_clusters and len(cluster_prob_columns(next(iter(frames.values())))) == len(classes):
        # DCIC tells cluster from class confidences by their length only.
        print("warning: k' equals the number of classes, so DCIC would read p_o as class "
              'confidences; fuzzy sets left out', file=sys.stderr)
        frames = {s: f.drop(columns=cluster_prob_columns(f)) for s, f in frames.items()}
    # DCIC's reader calls vars() on a config that is not a string.
    sets = build_dcic_sets(frames, classes, json.dumps(args, sort_keys=True), identifier, dataset)
    file_name = dcic_file_name(identifier, args.get('method'), is_dc3, dataset,
                               meta.get('labeled_fraction'), meta.get('slice'))
    path = os.path.join(out, file_name)
    io_utils.write_text(path, json.dumps(sets) + '\n')
    print(f'wrote {len(sets)} DCIC prediction sets ({", ".join(s["name"] for s in sets)}) to '
          f'{path}')
    return path


# ---------------------------------------------------------------------------------------------
# Galleries
# ---------------------------------------------------------------------------------------------

def caption_lines(cluster_id, size, shown, mean_soft, classes, top=3):
    order = np.argsort(-mean_soft, kind='stable')[:top]
    soft = ', '.join(f'{classes[i]} {100 * mean_soft[i]:.1f}%' for i in order)
    return [f'cluster {cluster_id}: {size} images (showing {shown})', f'mean soft label: {soft}']


def gallery_image(images, lines):
    """A grid of ``images`` (uint8 [n, H, W, 3]) under a white caption strip."""
    side = min(max(images.shape[1], TILE_MIN), TILE_MAX)
    columns = math.ceil(math.sqrt(len(images)))
    grid_rows = math.ceil(len(images) / columns)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    text_width = max(int(measure.textlength(line, font=font)) for line in lines) + 8
    caption_height = CAPTION_LINE * len(lines) + 6
    step = side + GAP
    canvas = Image.new('RGB', (max(columns * step, text_width), grid_rows * step + caption_height),
                       'white')
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 3 + CAPTION_LINE * i), line, fill='black', font=font)
    for i, image in enumerate(images):
        tile = Image.fromarray(image).resize((side, side), Image.NEAREST)
        canvas.paste(tile, ((i % columns) * step, caption_height + (i // columns) * step))
    return canvas


def write_galleries(out_dir, frame, soft_labels, images_by_path, classes, gallery_size):
    """One gallery per cluster of images predicted ambiguous; returns the cluster ids written."""
    ambiguous = frame[frame['output_kind'] == 'cluster']
    written = []
    with io_utils.atomic_path(out_dir) as tmp:
        os.makedirs(tmp)
        for cluster_id, members in ambiguous.groupby('output', sort=True):
            # The images the cluster head is most sure of are the most telling examples.
            shown = members.sort_values('cluster_prob', ascending=False, kind='stable')
            shown = shown.head(gallery_size)
            # Matched by path, not by record index: an index names another image after a
            # re-import (another slice or seed), a path does not.
            missing = [p for p in shown['path'] if p not in images_by_path]
            if missing:
                raise DC3Error(f'images {missing[:3]} of the prediction CSV are not in the split\'s '
                               'TFRecord; was the dataset regenerated after training?')
            images = np.stack([images_by_path[p] for p in shown['path']])
            mean_soft = soft_labels[frame.index.get_indexer(members.index)].mean(axis=0)
            lines = caption_lines(int(cluster_id), len(members), len(shown), mean_soft, classes)
            gallery_image(images, lines).save(os.path.join(tmp, f'cluster_{int(cluster_id)}.png'))
            written.append(int(cluster_id))
    return written


# ---------------------------------------------------------------------------------------------
# t-SNE
# ---------------------------------------------------------------------------------------------

def tsne_coordinates(embeddings, seed=0):
    """2-D t-SNE of ``embeddings`` [n, d]; perplexity shrinks for small n (it must be < n)."""
    from sklearn.manifold import TSNE
    perplexity = min(30.0, max(1.0, (len(embeddings) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed
                ).fit_transform(np.asarray(embeddings, dtype=np.float32))


def write_tsne(path, embeddings_path, frame, soft_labels, classes, seed=0):
    """Writes the t-SNE figure; returns False (after a one-line warning) when it cannot."""
    if not os.path.exists(embeddings_path):
        print(f'warning: {embeddings_path} not found; skipping tsne.png', file=sys.stderr)
        return False
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('warning: matplotlib is not installed; skipping tsne.png', file=sys.stderr)
        return False
    embeddings = np.load(embeddings_path)
    if len(embeddings) != len(frame):
        raise DC3Error(f'{embeddings_path} has {len(embeddings)} rows but the prediction CSV has '
                       f'{len(frame)}; they must be aligned')
    if len(frame) < 3:
        print('warning: fewer than 3 images; skipping tsne.png', file=sys.stderr)
        return False
    xy = tsne_coordinates(embeddings, seed)
    outputs = [classes[int(o)] if k == 'class' else f'cluster-{int(o)}'
               for k, o in zip(frame['output_kind'], frame['output'])]
    names = sorted(set(outputs))
    codes = np.array([names.index(o) for o in outputs])
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
    left.scatter(xy[:, 0], xy[:, 1], c=codes, cmap='tab20', s=6)
    left.set_title(f'output ({len(names)} classes / clusters)')
    points = right.scatter(xy[:, 0], xy[:, 1], c=1 - soft_labels.max(axis=1), cmap='viridis', s=6)
    right.set_title('ground-truth ambiguity 1 - max(soft label)')
    figure.colorbar(points, ax=right)
    with io_utils.atomic_path(path) as tmp:
        figure.savefig(tmp, format='png', dpi=120)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------------------------

def export(run_dir, out, split='val', report='latest', name=None, data_dir='data',
           gallery_size=36, tsne_seed=0, dcic_dataset=None, allow_test_fold_in_training=False):
    """Writes the DCIC file, galleries and t-SNE; returns the DCIC file path (or None)."""
    run_dir = os.path.normpath(run_dir)
    args = io_utils.read_json(os.path.join(run_dir, 'args.json'), 'run arguments')
    report_dir = find_report(run_dir, report)
    csv_path = os.path.join(report_dir, f'{split}.csv')
    if not os.path.exists(csv_path):
        raise DC3Error(f'{csv_path} not found; this report has no {split!r} predictions')
    report_meta = io_utils.read_json(os.path.join(report_dir, 'metrics.json'), 'report metrics')
    info = records.load_dataset_info(data_dir, args['dataset_name'], int(args['dataset_seed']))
    meta = io_utils.read_json(os.path.join(info.directory, records.META_FILE), 'dataset metadata')
    classes = list(report_meta.get('classes') or info.classes)
    check_test_fold(meta, allow_test_fold_in_training)
    run_files.check_same_data(run_dir, args.get('dataset_fingerprint'),
                              records.dataset_fingerprint(info.directory, meta))

    predictions = prediction_csv.read_predictions(csv_path)
    frame = predictions['frame']
    dcic_path = write_dcic_export(out, run_dir, args, meta, classes, report_dir, name,
                                  dcic_dataset)

    if (frame['output_kind'] == 'cluster').any():
        split_data = records.read_split_numpy(info.directory, split, len(classes))
        paths = [p.decode('utf-8') if isinstance(p, bytes) else str(p) for p in split_data['path']]
        clusters = write_galleries(os.path.join(out, 'galleries'), frame,
                                   predictions['soft_labels'], dict(zip(paths, split_data['image'])),
                                   classes, gallery_size)
        print(f'wrote {len(clusters)} cluster galleries to {os.path.join(out, "galleries")}')
    else:
        print('warning: no image is predicted ambiguous; no galleries written', file=sys.stderr)

    write_tsne(os.path.join(out, 'tsne.png'), os.path.join(report_dir, f'{split}_embeddings.npy'),
               frame, predictions['soft_labels'], classes, tsne_seed)
    return dcic_path


def main(argv):
    if len(argv) > 1:
        raise DC3Error(f'unexpected arguments: {" ".join(argv[1:])}')
    if FLAGS.allow_test_fold_in_training not in (0, 1):
        raise DC3Error(f'--allow_test_fold_in_training {FLAGS.allow_test_fold_in_training} must '
                       'be 0 or 1')
    export(FLAGS.run_dir, FLAGS.out, FLAGS.split, FLAGS.report, FLAGS.name, FLAGS.data_dir,
           FLAGS.gallery_size, FLAGS.tsne_seed, FLAGS.dcic_dataset,
           bool(FLAGS.allow_test_fold_in_training))


if __name__ == '__main__':
    define_flags()
    app.run(lambda argv: io_utils.run_cli(main, argv))

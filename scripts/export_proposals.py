#!/usr/bin/env python
"""Exports one run's predictions: DCIC label proposals, per-cluster galleries and a t-SNE plot.

    python scripts/export_proposals.py --run_dir RUN [--report latest|img0000065536] --split val \\
        --out DIR --name NAME --data_dir data

Writes into ``--out``:
* ``proposals.json`` — the prediction import format of the DCIC benchmark: one proposal set with
  a class label (certain images) or a cluster label (ambiguous images) per image.
* ``galleries/cluster_<id>.png`` — per cluster of images predicted ambiguous, a grid of its most
  confident members with a caption giving its size and mean soft label.
* ``tsne.png`` — t-SNE of the report's embeddings coloured by output and by ground-truth
  ambiguity; only if matplotlib is installed and the report saved ``<split>_embeddings.npy``.
"""
import datetime
import math
import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw, ImageFont

if __name__ == '__main__':
    # Run as a file: make the repository root importable without PYTHONPATH.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libml import io_utils, metrics, records
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
    flags.DEFINE_string('name', None, 'Name of the proposal set (default: the run folder name).')
    flags.DEFINE_string('data_dir', records.default_data_dir(), 'Folder of the generated datasets.')
    flags.DEFINE_integer('gallery_size', 36, 'Images per cluster gallery at most.')
    flags.DEFINE_integer('tsne_seed', 0, 'Random seed of t-SNE.')
    flags.mark_flags_as_required(['run_dir', 'out'])


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def find_report(run_dir, report='latest'):
    """Path of ``<run_dir>/reports/<report>``; ``latest`` is the one with the most images."""
    reports_dir = os.path.join(run_dir, 'reports')
    available = sorted(d for d in os.listdir(reports_dir) if d.startswith('img')
                       and d[3:].isdigit()) if os.path.isdir(reports_dir) else []
    if not available:
        raise DC3Error(f'{run_dir} has no reports/img* folder yet; train until the first report')
    if report == 'latest':
        return os.path.join(reports_dir, max(available, key=lambda d: int(d[3:])))
    if report not in available:
        raise DC3Error(f'report {report!r} not found in {reports_dir}; available: '
                       f'{", ".join(available)}')
    return os.path.join(reports_dir, report)


def dataset_folder_name(meta):
    """Basename of the dataset source folder; DCIC image paths start with it."""
    source = meta.get('source')
    if not source:
        raise DC3Error('the dataset meta.json has no "source"; regenerate the dataset')
    return os.path.basename(os.path.normpath(source))


# ---------------------------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------------------------

def build_proposals(frame, class_probs, classes, args, name, identifier, folder_name, now=None):
    """The DCIC prediction-import object (a list with one proposal set)."""
    predictions = []
    for row, probs in zip(frame.itertuples(index=False), class_probs):
        is_cluster = row.output_kind == 'cluster'
        class_id = int(np.argmax(probs)) if is_cluster else int(row.output)
        predictions.append({
            'image_path': f'{folder_name}/{row.path}',
            'class_label': classes[class_id],
            'cluster_label': f'cluster-{int(row.output)}' if is_cluster else None,
            'confidences': [float(p) for p in probs],
        })
    now = now or datetime.datetime.now()
    return [{'name': name, 'config': args, 'identifier': identifier,
             'created_at': now.strftime(CREATED_AT_FORMAT), 'predictions': predictions}]


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


def write_galleries(out_dir, frame, soft_labels, images_by_index, classes, gallery_size):
    """One gallery per cluster of images predicted ambiguous; returns the cluster ids written."""
    ambiguous = frame[frame['output_kind'] == 'cluster']
    written = []
    with io_utils.atomic_path(out_dir) as tmp:
        os.makedirs(tmp)
        for cluster_id, members in ambiguous.groupby('output', sort=True):
            # The images the cluster head is most sure of are the most telling examples.
            shown = members.sort_values('cluster_prob', ascending=False, kind='stable')
            shown = shown.head(gallery_size)
            missing = [i for i in shown['index'] if i not in images_by_index]
            if missing:
                raise DC3Error(f'images with index {missing[:5]} of the prediction CSV are not in '
                               'the split\'s TFRecord; was the dataset regenerated after training?')
            images = np.stack([images_by_index[i] for i in shown['index']])
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
           gallery_size=36, tsne_seed=0):
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

    predictions = metrics.read_predictions(csv_path)
    frame = predictions['frame']
    identifier = os.path.basename(run_dir)
    proposals = build_proposals(frame, predictions['class_probs'], classes, args,
                                name or identifier, identifier, dataset_folder_name(meta))
    io_utils.write_json(os.path.join(out, 'proposals.json'), proposals)
    print(f'wrote {len(frame)} proposals to {os.path.join(out, "proposals.json")}')

    if (frame['output_kind'] == 'cluster').any():
        split_data = records.read_split_numpy(info.directory, split, len(classes))
        images_by_index = dict(zip(split_data['index'].tolist(), split_data['image']))
        clusters = write_galleries(os.path.join(out, 'galleries'), frame,
                                   predictions['soft_labels'], images_by_index, classes,
                                   gallery_size)
        print(f'wrote {len(clusters)} cluster galleries to {os.path.join(out, "galleries")}')
    else:
        print('warning: no image is predicted ambiguous; no galleries written', file=sys.stderr)

    write_tsne(os.path.join(out, 'tsne.png'), os.path.join(report_dir, f'{split}_embeddings.npy'),
               frame, predictions['soft_labels'], classes, tsne_seed)
    return proposals


def main(argv):
    if len(argv) > 1:
        raise DC3Error(f'unexpected arguments: {" ".join(argv[1:])}')
    export(FLAGS.run_dir, FLAGS.out, FLAGS.split, FLAGS.report, FLAGS.name, FLAGS.data_dir,
           FLAGS.gallery_size, FLAGS.tsne_seed)


if __name__ == '__main__':
    define_flags()
    app.run(lambda argv: io_utils.run_cli(main, argv))

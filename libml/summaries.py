"""TensorBoard beyond the scalars: the run's hyperparameters for the HParams dashboard, a confusion
matrix and cluster galleries as images at every report, and the final embeddings for the
projector. Written by the chief into ``<run>/tb`` next to the scalars (``libml.evaluation``).

    tensorboard --logdir experiments     # one row per run in HPARAMS, images in IMAGES, PROJECTOR
"""
import os

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from libml import data, prediction_csv
from libml.run_args import OPERATIONAL_KEYS

# Metrics the console prints in percent; TensorBoard shows them in the same unit.
PERCENT_METRICS = frozenset(('accuracy', 'macro_f1', 'f1_certain', 'inner_distance',
                             'd_minus_f1', 'ambiguous_share'))
GALLERY_CLUSTERS = 8   # largest clusters shown, one row each
GALLERY_IMAGES = 8     # images per row: the cluster's most confident members
GALLERY_CELL = 48      # pixels per image in the gallery
PROJECTOR_DIR = 'projector'


def in_console_units(name, value):
    return 100.0 * value if name in PERCENT_METRICS else value


def write_hparams(writer, args, trial_id):
    """The run's defining hyperparameters (args.json without operational keys) as an HParams
    session: TensorBoard's HPARAMS tab lists every run of a --logdir with its final metrics."""
    from tensorboard.plugins.hparams import api as hp
    values = {k: v for k, v in args.items()
              if k not in OPERATIONAL_KEYS and isinstance(v, (bool, int, float, str))}
    with writer.as_default():
        hp.hparams(values, trial_id=trial_id)
    writer.flush()


def confusion_image(labels, predicted, num_classes):
    """Row-normalised confusion matrix (true class down, predicted across) as an RGB image; each
    cell white (0) to dark blue (1), with its count when the cells are large enough. Rows and
    columns follow the dataset's class order (meta.json)."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cell = max(4, min(40, 480 // num_classes))
    white, blue = np.array([255, 255, 255]), np.array([8, 48, 107])
    colours = (white + share[..., None] * (blue - white)).astype(np.uint8)
    image = Image.fromarray(np.kron(colours, np.ones((cell, cell, 1), np.uint8)))
    if cell >= 20:
        draw = ImageDraw.Draw(image)
        for (i, j), n in np.ndenumerate(counts):
            draw.text((j * cell + 2, i * cell + cell // 3), str(n),
                      fill=(255, 255, 255) if share[i, j] > 0.5 else (0, 0, 0))
    return np.asarray(image)


def gallery_rows(pred):
    """``[(cluster, [record indices])]``: the largest clusters and their most confident
    members (the clusters the report CSV names, ``prediction_csv.cluster_ids``)."""
    clusters = prediction_csv.cluster_ids(pred)
    confidence = np.max(pred.get('cluster_probs', pred['probs']), axis=1)
    ids, sizes = np.unique(clusters, return_counts=True)
    rows = []
    for cluster in ids[np.argsort(-sizes, kind='stable')][:GALLERY_CLUSTERS]:
        members = np.flatnonzero(clusters == cluster)
        best = members[np.argsort(-confidence[members], kind='stable')][:GALLERY_IMAGES]
        rows.append((int(cluster), [int(pred['index'][i]) for i in best]))
    return rows


def gallery_image(rows, images_by_index):
    """One row per cluster of ``GALLERY_CELL``-pixel images, on grey."""
    width = GALLERY_IMAGES * GALLERY_CELL
    canvas = np.full((len(rows) * GALLERY_CELL, width, 3), 128, np.uint8)
    for r, (_, indices) in enumerate(rows):
        for c, index in enumerate(indices):
            tile = Image.fromarray(images_by_index[index]).resize(
                (GALLERY_CELL, GALLERY_CELL), Image.Resampling.NEAREST)
            canvas[r * GALLERY_CELL:(r + 1) * GALLERY_CELL,
                   c * GALLERY_CELL:(c + 1) * GALLERY_CELL] = np.asarray(tile)
    return canvas


def split_images(dataset_info, split, indices):
    """The uint8 images of ``split`` at the given record indices (one pass over the split)."""
    wanted, found = set(indices), {}
    for x in data.split_dataset(dataset_info, split).as_numpy_iterator():
        if int(x['index']) in wanted:
            found[int(x['index'])] = x['image']
    return found


def write_report_images(writer, images, dataset_info, predictions, split='val'):
    """The confusion matrix and the cluster gallery of ``split`` (EMA weights) at ``images``."""
    pred = predictions.get(split)
    if pred is None or not len(pred['probs']):
        return
    k = pred['probs'].shape[1]
    confusion = confusion_image(pred['label'], np.argmax(pred['probs'], axis=1), k)
    rows = gallery_rows(pred)
    gallery = gallery_image(rows, split_images(dataset_info, split,
                                               [i for _, members in rows for i in members]))
    with writer.as_default(step=images):
        tf.summary.image(f'{split}/confusion_matrix', confusion[None], description=(
            'Rows: true class, columns: predicted class (argmax p_n), in the order of the '
            "dataset's classes; shade: share of the row."))
        tf.summary.image(f'{split}/cluster_gallery', gallery[None], description=(
            'One row per cluster, the largest first: ' + ', '.join(f'cluster {c}' for c, _
                                                                   in rows)
            + '; the cluster\'s most confident members left to right.'))
    writer.flush()


def write_projector(log_dir, split, pred, class_names):
    """The embeddings of ``split`` for TensorBoard's projector: TSV tensors and metadata (path,
    true class, predicted class, cluster, p_a, soft label) and ``projector_config.pbtxt``."""
    from tensorboard.plugins import projector
    folder = os.path.join(log_dir, PROJECTOR_DIR)
    os.makedirs(folder, exist_ok=True)
    tensor_file = os.path.join(folder, f'{split}_embeddings.tsv')
    metadata_file = os.path.join(folder, f'{split}_metadata.tsv')
    np.savetxt(tensor_file + '.tmp', pred['embedding'], delimiter='\t', fmt='%.5g')
    os.replace(tensor_file + '.tmp', tensor_file)
    clusters = prediction_csv.cluster_ids(pred)
    ambiguity = pred.get('ambiguity')
    lines = ['path\tclass\tpredicted\tcluster\tp_a\tsoft_label']
    for i in range(len(clusters)):
        path = pred['path'][i]
        path = path.decode('utf-8') if isinstance(path, bytes) else str(path)
        soft = ' '.join(f'{v:.2f}' for v in pred['soft_label'][i])
        p_a = '' if ambiguity is None else f'{float(ambiguity[i]):.3f}'
        lines.append('\t'.join((path.replace('\t', ' '), class_names[int(pred['label'][i])],
                                class_names[int(np.argmax(pred['probs'][i]))],
                                str(int(clusters[i])), p_a, soft)))
    with open(metadata_file + '.tmp', 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(metadata_file + '.tmp', metadata_file)
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = f'{split} embeddings (EMA)'
    embedding.tensor_path = os.path.join(PROJECTOR_DIR, os.path.basename(tensor_file))
    embedding.metadata_path = os.path.join(PROJECTOR_DIR, os.path.basename(metadata_file))
    projector.visualize_embeddings(log_dir, config)

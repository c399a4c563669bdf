#!/usr/bin/env python3
"""Runs an exported model (scripts/export_model.py) over a folder of images; writes a CSV.

    python scripts/predict.py --model DIR --images FOLDER --out preds.csv [--batch 64]

Every image below FOLDER (png, jpg, bmp, gif, tif, webp, ppm; sub-folders included) is read as
the importer reads images (EXIF orientation, RGB, bilinear resize to the model's size) and run in
batches. The CSV has the columns of the reports' prediction CSVs (``libml.prediction_csv``), with
``split`` = ``predict``, ``label`` = -1 and empty soft labels (new images have none); ``output_kind``
says whether ``output`` is a class or a cluster. An image that cannot be read is listed on stderr
and left out; the run ends with the count of both. The CSV is written whole or not at all.
"""
import os
import sys

import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import numpy as np
import tensorflow as tf
import tqdm
from absl import app, flags, logging

from libml import images as image_files
from libml import io_utils, prediction_csv
from libml.errors import DC3Error

FLAGS = flags.FLAGS
flags.DEFINE_string('model', None, 'Folder of the exported model (scripts/export_model.py).')
flags.DEFINE_string('images', None, 'Folder of images to predict (searched recursively).')
flags.DEFINE_string('out', None, 'CSV file to write.')
flags.DEFINE_integer('batch', 64, 'Images per batch.')
METADATA_FILE = 'dc3_model.json'


def list_images(folder):
    """Image files below ``folder``, sorted, by extension (case-insensitive)."""
    if not os.path.isdir(folder):
        raise DC3Error(f'--images {folder} is not a folder')
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(image_files.IMAGE_EXTENSIONS) and not f.startswith('.')]
    if not found:
        raise DC3Error(f'no images ({", ".join(image_files.IMAGE_EXTENSIONS)}) below {folder}')
    return found


def load_model(model_dir):
    metadata_path = os.path.join(model_dir, METADATA_FILE)
    if not os.path.exists(metadata_path):
        raise DC3Error(f'{model_dir} is not an exported model (no {METADATA_FILE}); export one '
                       'with scripts/export_model.py')
    metadata = io_utils.read_json(metadata_path, 'exported model description')
    return tf.saved_model.load(model_dir), metadata


def predict(model, metadata, paths, batch):
    """``(predictions of the readable images as prediction_csv.write_predictions takes them,
    [(path, reason) of the unreadable ones])``."""
    size = metadata['image_size']
    columns, unreadable, pending = {}, [], []

    def flush():
        out = model.serve(tf.constant(np.stack([image for _, image in pending])))
        for name, value in (('path', [p for p, _ in pending]), ('probs', out['class_probs']),
                            ('cluster_probs', out['cluster_probs']),
                            ('ambiguity', out['ambiguity'])):
            columns.setdefault(name, []).append(np.asarray(value))
        pending.clear()

    for path in tqdm.tqdm(paths, unit='img', file=sys.stderr, desc='predicting',
                          mininterval=1 if sys.stderr.isatty() else 30):
        try:
            pending.append((path, np.asarray(image_files.load_image(path, size), np.uint8)))
        except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for damaged files
            unreadable.append((path, f'{type(e).__name__}: {e}'))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    if not columns:
        return None, unreadable
    pred = {name: np.concatenate(parts) for name, parts in columns.items()}
    n, k = pred['probs'].shape
    pred.update(index=np.arange(n), label=np.full(n, -1), soft_label=np.full((n, k), np.nan))
    if not metadata['has_ambiguity_head']:
        del pred['ambiguity']  # an empty column, as in the reports of runs without p_a
    if not metadata['has_cluster_head']:
        del pred['cluster_probs']  # the reports list p_o's columns only with an overclustering head
    return pred, unreadable


def main(_):
    logging.set_verbosity(logging.WARNING)
    if not (FLAGS.model and FLAGS.images and FLAGS.out):
        raise DC3Error('give --model DIR, --images FOLDER and --out FILE.csv')
    if FLAGS.batch < 1:
        raise DC3Error(f'--batch must be >= 1, got {FLAGS.batch}')
    model, metadata = load_model(FLAGS.model)
    paths = list_images(FLAGS.images)
    pred, unreadable = predict(model, metadata, paths, FLAGS.batch)
    for path, reason in unreadable:
        print(f'warning: unreadable image {path} ({reason}); left out', file=sys.stderr)
    if pred is None:
        raise DC3Error(f'none of the {len(paths)} images below {FLAGS.images} could be read')
    pred['path'] = np.array([os.path.relpath(p, FLAGS.images) for p in pred['path']])
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    prediction_csv.write_predictions(FLAGS.out, 'predict', pred)
    print(f'predicted {len(pred["probs"])} images, {len(unreadable)} unreadable; wrote '
          f'{FLAGS.out}', file=sys.stderr)


if __name__ == '__main__':
    app.run(lambda argv: io_utils.run_cli(main, argv))

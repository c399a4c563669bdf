"""TensorBoard beyond scalars (libml/summaries.py), read back with TensorBoard's own readers."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.projector import projector_config_pb2

from libml import dc3, methods, summaries
from tests.conftest import TINY_CLASSES, make_method


def test_confusion_image_counts_and_shades_like_numpy():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 0])
    image = summaries.confusion_image(labels, predicted, 3)
    cell = image.shape[0] // 3
    assert image.shape == (3 * cell, 3 * cell, 3)
    expected = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 0]]) / np.array([[3], [2], [1]])
    white, blue = np.array([255, 255, 255]), np.array([8, 48, 107])
    for (i, j), share in np.ndenumerate(expected):
        corner = image[i * cell + 1, j * cell + 1]  # away from the count's text
        np.testing.assert_allclose(corner, white + share * (blue - white), atol=1)


def test_gallery_rows_are_the_largest_clusters_most_confident_first():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    rows = summaries.gallery_rows({'probs': probs, 'index': np.array([10, 11, 12, 13])})
    assert rows == [(0, [10, 13, 11]), (1, [12])]


@pytest.fixture(scope='module')
def run_dir(tiny_data_dir, tmp_path_factory):
    cls = methods.method_class('mean_teacher')
    return make_method(cls, tiny_data_dir, tmp_path_factory.mktemp('tb'), dc3.DC3Config(),
                       methods.params_defaults('mean_teacher')).train()


def accumulator(run_dir):
    acc = event_accumulator.EventAccumulator(
        os.path.join(run_dir, 'tb'), size_guidance={event_accumulator.IMAGES: 0,
                                                    event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def test_report_images_and_percent_scalars(run_dir):
    acc = accumulator(run_dir)
    tags = acc.Tags()
    assert {'val/confusion_matrix', 'val/cluster_gallery'} <= set(tags['tensors'])
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        reports = [json.loads(line) for line in f]
    images = acc.Tensors('val/confusion_matrix')
    assert [e.step for e in images] == [r['images'] for r in reports]
    # The console's unit: percent.
    [accuracy] = [e for e in acc.Tensors('val/ema/accuracy') if e.step == reports[-1]['images']]
    value = float(tf.make_ndarray(accuracy.tensor_proto))
    assert value == pytest.approx(100 * reports[-1]['splits']['val']['ema']['accuracy'],
                                  rel=1e-5)


def test_hparams_session_names_the_runs_hyperparameters(run_dir):
    acc = accumulator(run_dir)
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG])
    with open(os.path.join(run_dir, 'args.json')) as f:
        args = json.load(f)
    assert start.group_name == os.path.basename(run_dir)
    assert start.hparams['lr'].number_value == pytest.approx(args['lr'])
    assert start.hparams['method'].string_value == 'MeanTeacher'
    assert start.hparams['wou'].number_value == args['wou']
    assert 'train_dir' not in start.hparams  # operational, not a hyperparameter


def test_projector_config_points_at_the_final_embeddings(run_dir):
    log_dir = os.path.join(run_dir, 'tb')
    config = projector_config_pb2.ProjectorConfig()
    with open(os.path.join(log_dir, 'projector_config.pbtxt')) as f:
        text_format.Parse(f.read(), config)
    [embedding] = config.embeddings
    tensors = np.loadtxt(os.path.join(log_dir, embedding.tensor_path), delimiter='\t')
    [report] = sorted(glob.glob(os.path.join(run_dir, 'reports', '*')))[-1:]
    np.testing.assert_allclose(tensors, np.load(os.path.join(report, 'val_embeddings.npy')),
                               rtol=1e-4, atol=1e-5)
    with open(os.path.join(log_dir, embedding.metadata_path)) as f:
        rows = [line.rstrip('\n').split('\t') for line in f]
    assert rows[0] == ['path', 'class', 'predicted', 'cluster', 'p_a', 'soft_label']
    assert len(rows) == 1 + len(tensors)
    assert {r[1] for r in rows[1:]} <= set(TINY_CLASSES)
    assert all(0 <= float(r[4]) <= 1 for r in rows[1:])

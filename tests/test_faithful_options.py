"""The options around DC3's faithful defaults: the dataset's p_A, the supervised baseline's views."""
import numpy as np
import pytest
import tensorflow as tf

import fully_supervised
from libml import dc3, records
from tests.conftest import make_method, write_tiny_dataset


def test_negative_prior_takes_the_datasets_estimate(tiny_data_dir, tmp_path, capsys):
    method = make_method(fully_supervised.FullySupervised, tiny_data_dir, tmp_path,
                         dc3.DC3Config(prior_fuzzy_distribution=-1))
    estimate = records.load_dataset_info(tiny_data_dir, 'tiny', 1).prior_ambiguity
    assert 0 < estimate < 1
    assert method.dc3.prior_fuzzy_distribution == pytest.approx(estimate)
    assert method.hyperparameters()['prior_fuzzy_distribution'] == pytest.approx(estimate)
    assert 'dataset\'s estimate' in capsys.readouterr().err


def test_supervised_baseline_reads_unlabeled_views_only_with_dc3(tiny_data_dir, tmp_path):
    vanilla = make_method(fully_supervised.FullySupervised, tiny_data_dir, tmp_path / 'a')
    assert vanilla.unlabeled_views == 0
    with_dc3 = make_method(fully_supervised.FullySupervised, tiny_data_dir, tmp_path / 'b',
                           dc3.DC3Config())
    assert with_dc3.unlabeled_views == 2


def test_supervised_baseline_without_unlabeled_images_ranks_the_labeled_batch(tmp_path):
    data_dir = str(tmp_path / 'data')
    write_tiny_dataset(data_dir, counts={'train': 32, 'val': 16})
    method = make_method(fully_supervised.FullySupervised, data_dir, tmp_path / 'run',
                         dc3.DC3Config(), wd=0.0)
    assert method.unlabeled_views == 0
    batch = {'image': tf.random.uniform([8, 16, 16, 3], -1, 1), 'unlabeled': [],
             'label': tf.constant([0, 1, 2, 3, 0, 1, 2, 3])}
    with tf.GradientTape() as tape:
        total, monitors = method.loss(batch)
    grads = tape.gradient(total, method.model.get_layer(dc3.AMBIGUITY_HEAD).kernel)
    assert np.isfinite(total.numpy()) and np.any(grads.numpy())  # L_A trains on labeled images
    assert monitors['dc3/rank_cutoff'].numpy() == 4  # floor(8 x 0.6)

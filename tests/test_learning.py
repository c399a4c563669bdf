"""End to end on the synthetic ambiguous dataset: generate, import, train, evaluate."""
import glob
import json
import os

import numpy as np
import pytest

import mean_teacher
from libml import dc3, metrics, records, train
from scripts import create_datasets, make_synthetic


@pytest.fixture(scope='module')
def synthetic_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    make_synthetic.write_dataset(make_synthetic.SyntheticConfig(
        out=str(root / 'raw'), num_images=800, image_size=16, seed=3))
    data_dir = str(root / 'data')
    create_datasets.import_dataset(create_datasets.ImportConfig(
        input_dir=str(root / 'raw' / 'Synthetic'), data_dir=data_dir, name='synthetic',
        image_size=16, seeds=(1,), progress=False))
    return data_dir


def train_mean_teacher(data_dir, train_dir, dc3_config, kimg):
    info = records.load_dataset_info(data_dir, 'synthetic', 1)
    cls = dc3.with_dc3(mean_teacher.MeanTeacher) if dc3_config.enabled else mean_teacher.MeanTeacher
    method = cls(info, -1, train.TrainConfig(
        train_dir=str(train_dir), dataset='synthetic.1@-1-10', batch=32, train_kimg=kimg,
        report_kimg=kimg, save_kimg=kimg, eval_batch=256),
        train.ModelConfig(filters=8, scales=2, repeat=1, bn_momentum=0.99), dc3_config,
        consistency_weight=50.0, warmup_pos=0.4)
    return method.train()


def test_mean_teacher_learns_the_synthetic_classes(synthetic_data_dir, tmp_path):
    run_dir = train_mean_teacher(synthetic_data_dir, tmp_path,
                                 dc3.DC3Config(combined_output=0, wou=0, wol=0), kimg=3)
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        final = [json.loads(line) for line in f][-1]
    # Four balanced classes: chance is 25 %.
    assert final['splits']['val']['ema']['accuracy'] > 0.6


def test_metrics_json_is_recomputed_from_the_prediction_csvs(synthetic_data_dir, tmp_path):
    run_dir = train_mean_teacher(synthetic_data_dir, tmp_path, dc3.DC3Config(), kimg=0.5)
    report = sorted(glob.glob(os.path.join(run_dir, 'reports', 'img*')))[-1]
    with open(os.path.join(report, 'metrics.json')) as f:
        saved = json.load(f)
    assert saved['has_ambiguity_head'] and saved['num_clusters'] == 20
    for split in ('train', 'unlabeled', 'val'):
        again = metrics.metrics_from_csv(os.path.join(report, f'{split}.csv'))
        for key, value in saved['splits'][split]['ema'].items():
            if value is None or isinstance(value, bool):
                assert again[key] == value, (split, key)
            else:
                assert again[key] == pytest.approx(value, abs=1e-5), (split, key)
    embeddings = np.load(os.path.join(report, 'val_embeddings.npy'))
    # The embedding is the last stage's width: filters << (scales - 1) = 8 << 1.
    assert embeddings.shape == (saved['splits']['val']['ema']['num_images'], 16)

"""Shared fixtures: a tiny dataset written straight through the record schema, and tiny methods.

The dataset here deliberately bypasses scripts/create_datasets.py so training tests do not depend
on the importer (which has its own tests).
"""
import os

import numpy as np
import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_tensorflow_without_onednn():
    """In-process tests run TensorFlow's own (Eigen) kernels: several compare two runs with
    ``deterministic=1``, which oneDNN's multi-threaded convolution gradients do not repeat
    exactly (libml/__init__.py). TensorFlow reads the variable once, at its import; the scripts
    the tests start get the product's default again (oneDNN on, tests/test_startup.py)."""
    user = os.environ.get('TF_ENABLE_ONEDNN_OPTS')
    os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'
    import tensorflow  # noqa: F401
    if user is None:
        del os.environ['TF_ENABLE_ONEDNN_OPTS']
    else:
        os.environ['TF_ENABLE_ONEDNN_OPTS'] = user


_import_tensorflow_without_onednn()

from libml import dc3, methods, models, records, trainer  # noqa: E402

TINY_SIZE = 16
TINY_CLASSES = ('a', 'b', 'c', 'd')


def write_tiny_dataset(data_dir, name='tiny', seed=1, counts=None, size=TINY_SIZE):
    """Four noisy colour-prototype classes; every third image is ambiguous (soft 0.6 / 0.4) and
    drawn between its two classes' prototypes."""
    counts = counts or {'train': 64, 'unlabeled': 128, 'val': 64}
    rng = np.random.default_rng(seed)
    k = len(TINY_CLASSES)
    protos = rng.uniform(0, 255, (k, size, size, 3))
    splits = {}
    for split, n in counts.items():
        labels = rng.integers(k, size=n)
        soft = np.eye(k)[labels]
        soft[::3] = 0.6 * soft[::3] + 0.4 * np.eye(k)[(labels[::3] + 1) % k]
        images = protos[labels] + (protos[(labels + 1) % k] - protos[labels]) * (
            1 - soft[np.arange(n), labels])[:, None, None, None]
        images = np.clip(images + rng.normal(0, 30, images.shape), 0, 255).astype(np.uint8)
        splits[split] = (images, labels, soft)
    return records.write_arrays(data_dir, name, seed, TINY_CLASSES, splits, source='raw/Tiny')


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp('data'))
    write_tiny_dataset(data_dir)
    return data_dir


def make_method(method_cls, data_dir, train_dir, dc3_config=None, hparams=None, model=None,
                **train_kwargs):
    """A tiny method instance (4 filters, 2 stages, 1 block, unless ``model`` says otherwise) on
    the tiny dataset."""
    info = records.load_dataset_info(data_dir, 'tiny', 1)
    dc3_config = dc3_config or dc3.DC3Config(combined_output=0, wou=0, wol=0)
    settings = dict(train_dir=str(train_dir), dataset='tiny.1@-1-10', batch=8, uratio=2,
                    train_kimg=32 / 1024, report_kimg=32 / 1024, save_kimg=32 / 1024,
                    eval_batch=64)
    settings.update(train_kwargs)
    return methods.build(
        method_cls, info, -1, trainer.TrainConfig(**settings),
        models.ModelConfig(**{'filters': 4, 'scales': 2, 'repeat': 1, **(model or {})}),
        dc3_config, **(hparams or {}))

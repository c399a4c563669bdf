"""``--bn_batches per_subset``: the original DC3 code's separate network calls per subset.

What it must do: each subset (labeled images, each unlabeled view) normalised with its own batch
moments, and the moving statistics updated by the labeled call alone; and old run folders, which
recorded no ``bn_batches``, still resume as the ``joint`` runs they were.
"""
import numpy as np
import pytest
import tensorflow as tf

import mean_teacher
import pseudo_label
from libml import run_files
from libml.errors import DC3Error
from scripts import run_ablation
from tests.conftest import make_method


def _batch(method, seed=0):
    rng = np.random.default_rng(seed)
    size = method.dataset.image_size

    def images(n):
        return tf.constant(rng.uniform(-1, 1, [n, size, size, 3]), tf.float32)
    return {'image': images(8), 'label': tf.constant(rng.integers(0, 4, 8), tf.int32),
            'unlabeled': [images(16) for _ in range(method.unlabeled_views)]}


def _moving(method):
    return [v.numpy().copy() for v in method.moving_statistics]


def _set_moving(method, values):
    for var, value in zip(method.moving_statistics, values):
        var.assign(value)


def _separate_call(method, images, start):
    """The network alone on ``images`` from the moving statistics ``start``: (outputs, stats)."""
    _set_moving(method, start)
    out = method.model(images, training=True)
    return {k: v.numpy() for k, v in out.items()}, _moving(method)


def _student_outputs(outputs):
    return [outputs.labeled, *outputs.unlabeled]


@pytest.mark.parametrize('bn_batches', ['per_subset', 'joint'])
def test_per_subset_calls_normalise_each_subset_alone(tiny_data_dir, tmp_path, bn_batches):
    method = make_method(pseudo_label.PseudoLabel, tiny_data_dir, tmp_path,
                         model={'bn_batches': bn_batches})
    batch = _batch(method)
    start = [v + 0.1 for v in _moving(method)]  # not the initial 0 / 1: an update shows
    _set_moving(method, start)
    # In a tf.function, as the training step runs it (the ops' order is the graph's).
    logits = tf.function(lambda b: [o['logits'] for o in _student_outputs(method.forward(b))])
    labeled_out, unlabeled_out = [t.numpy() for t in logits(batch)]
    after = _moving(method)

    labeled, after_labeled = _separate_call(method, batch['image'], start)
    unlabeled, _ = _separate_call(method, batch['unlabeled'][0], start)
    same_labeled = np.allclose(labeled_out, labeled['logits'], atol=1e-5)
    same_unlabeled = np.allclose(unlabeled_out, unlabeled['logits'],
                                 atol=1e-5)
    labeled_update_only = all(np.allclose(a, b, atol=1e-7) for a, b in zip(after, after_labeled))
    if bn_batches == 'per_subset':
        assert same_labeled and same_unlabeled and labeled_update_only
    else:  # one batch for batch norm: neither subset's outputs nor the statistics match
        assert not same_labeled and not same_unlabeled and not labeled_update_only
    assert not all(np.allclose(a, b) for a, b in zip(after, start))  # statistics did move


def test_per_subset_mean_teacher_step_keeps_the_labeled_update(tiny_data_dir, tmp_path):
    """A real training step (tape, optimiser, EMA) of Mean Teacher, whose student calls the
    network on the labeled images and on the second view: its moving statistics end as the
    labeled call alone leaves them."""
    method = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path,
                         model={'bn_batches': 'per_subset'},
                         hparams={'consistency_weight': 50.0, 'warmup_pos': 0.4})
    batch = _batch(method, seed=1)
    start = _moving(method)
    _, expected = _separate_call(method, batch['image'], start)
    _set_moving(method, start)
    monitors = method._train_step(batch)
    assert np.isfinite(monitors['losses/total'].numpy())
    assert all(np.allclose(a, b, atol=1e-7) for a, b in zip(_moving(method), expected))
    assert not all(np.allclose(a, b) for a, b in zip(expected, start))


def test_runs_recorded_before_the_flag_keep_their_folder(tmp_path):
    args = {'method': 'PseudoLabel', 'lr': 0.03, 'report_kimg': 8}
    joint = {**args, 'bn_batches': 'joint'}
    split = {**args, 'bn_batches': 'per_subset'}
    assert run_files.args_digest(joint) == run_files.args_digest(args)
    assert run_files.args_digest(split) != run_files.args_digest(args)
    path = str(tmp_path / 'run')
    run_files.prepare_run_dir(path, args)          # what the older code recorded
    run_files.prepare_run_dir(path, joint)         # the same run
    with pytest.raises(DC3Error, match=r'other hyperparameters \(bn_batches\)'):
        run_files.prepare_run_dir(path, split)


def test_ablation_tells_old_joint_runs_from_per_subset_ones(tmp_path):
    defaults = run_ablation.method_flag_defaults('pseudo_label')
    assert defaults['bn_batches'] == 'joint'
    old = {k: v for k, v in defaults.items() if k != 'bn_batches'}  # recorded before the flag
    old.update(method='PseudoLabel', dataset='cifar10n.1@-1-10')
    existing = [(str(tmp_path / 'old'), old)]
    run = {'method': 'PseudoLabel', 'dataset': 'cifar10n.1@-1-10', 'hparams': {}}
    assert run_ablation.matching_run(existing, run, defaults) is not None
    run_split = dict(run, hparams={'bn_batches': 'per_subset'})
    assert run_ablation.matching_run(existing, run_split, defaults) is None


def test_unknown_value_is_one_error(tiny_data_dir, tmp_path):
    with pytest.raises(DC3Error, match='bn_batches'):
        make_method(pseudo_label.PseudoLabel, tiny_data_dir, tmp_path,
                    model={'bn_batches': 'separate'})

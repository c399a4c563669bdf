"""Divergence handling and one-line errors for bad flags."""
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import pseudo_label
from libml import dc3, trainer
from libml.method import LossTerms
from libml.errors import DC3Error
from tests.conftest import ROOT, make_method

HPARAMS = {'consistency_weight': 1.0, 'threshold': 0.95, 'warmup_pos': 0.4}


class PoisonedPseudoLabel(pseudo_label.PseudoLabel):
    """Pseudo-Label whose loss is NaN on the third call of the step only (a counter that is not
    checkpointed, so a rewound run does not meet the NaN again)."""

    def method_losses(self, batch, outputs, progress):
        if not hasattr(self, 'calls'):
            self.calls = tf.Variable(0)
        terms = super().method_losses(batch, outputs, progress)
        self.calls.assign_add(1)
        poison = tf.where(tf.equal(self.calls, 3), float('nan'), 0.0)
        return LossTerms(labeled_xe=terms.labeled_xe + poison, ssl=terms.ssl,
                               ssl_weight=terms.ssl_weight)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_data_dir, tmp_path):
    method = make_method(PoisonedPseudoLabel, tiny_data_dir, tmp_path,
                         dc3.DC3Config(combined_output=0, wou=0, wol=0), HPARAMS,
                         save_kimg=16 / 1024)
    with pytest.raises(DC3Error, match=r'non-finite loss at step 3 .*losses/xe=nan.*ckpt-2'):
        method.train()
    ckpt_dir = os.path.join(method.run_dir(), 'ckpt')
    assert tf.train.latest_checkpoint(ckpt_dir).endswith('ckpt-2')
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if hasattr(value, 'dtype') and value.dtype.kind == 'f':
            assert tf.reduce_all(tf.math.is_finite(value)), name


def test_nan_policy_skip_rewinds_and_finishes(tiny_data_dir, tmp_path, capsys):
    method = make_method(PoisonedPseudoLabel, tiny_data_dir, tmp_path,
                         dc3.DC3Config(combined_output=0, wou=0, wol=0), HPARAMS,
                         save_kimg=16 / 1024, nan_policy='skip')
    run_dir = method.train()
    assert int(method.optimizer.iterations.numpy()) == 4
    assert 'skipped, resuming from step 2' in capsys.readouterr().err
    weights = [v.numpy() for v in method.model.variables]
    assert all(tf.reduce_all(tf.math.is_finite(w)) for w in weights)
    assert tf.train.latest_checkpoint(os.path.join(run_dir, 'ckpt')).endswith('ckpt-4')


@pytest.mark.parametrize('field,value', [('train_kimg', -1), ('report_kimg', 0), ('batch', 0),
                                         ('ema', 1.0), ('uratio', 0), ('nan_policy', 'retry')])
def test_train_config_rejects_invalid_values(field, value):
    with pytest.raises(DC3Error, match=f'--{field}'):
        trainer.TrainConfig(train_dir='x', dataset='tiny.1@-1-10', **{field: value})


def test_dc3_with_a_batch_of_one_is_refused(tiny_data_dir, tmp_path):
    with pytest.raises(DC3Error, match='DC3 needs --batch >= 2'):
        make_method(pseudo_label.PseudoLabel, tiny_data_dir, tmp_path, dc3.DC3Config(), HPARAMS,
                    batch=1)


# Each subprocess costs a TensorFlow import, so only a few go through the real command line.
@pytest.mark.parametrize('flags,message', [
    (['--combined_output', '2'], '--combined_output must be 0'),
    (['--dataset', 'nothere.1@-1-10'], 'was never generated'),
])
def test_bad_flags_give_one_error_line(flags, message, tiny_data_dir, tmp_path):
    command = [sys.executable, 'fixmatch.py', '--dataset', 'tiny.1@-1-10', '--data_dir',
               tiny_data_dir, '--train_dir', str(tmp_path), '--filters', '4', *flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and message in errors[0], result.stderr[-1500:]
    assert 'Traceback' not in result.stderr
    assert not any(os.scandir(tmp_path))  # nothing written for a refused command


def run_tiny(tiny_data_dir, train_dir, seed):
    command = [sys.executable, 'fixmatch.py', '--dataset', 'tiny.1@-1-10', '--data_dir',
               tiny_data_dir, '--train_dir', str(train_dir), '--filters', '4', '--scales', '2',
               '--repeat', '1', '--batch', '8', '--uratio', '2', '--train_kimg', '0.0625',
               '--report_kimg', '0.0625', '--deterministic', '1', '--seed', str(seed)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = result.stdout.strip().splitlines()[-1]
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return f.read()


def test_deterministic_runs_are_identical(tiny_data_dir, tmp_path):
    """Two processes with the same seed (FixMatch: RandAugment in the pipeline, DC3 on)."""
    first = run_tiny(tiny_data_dir, tmp_path / 'a', seed=5)
    assert first == run_tiny(tiny_data_dir, tmp_path / 'b', seed=5)
    assert first != run_tiny(tiny_data_dir, tmp_path / 'c', seed=6)  # the seed matters


@pytest.mark.parametrize('flags,message', [
    (['--consistency_weight', 'nan'], '--consistency_weight must be a finite number'),
    (['--lr', 'inf'], 'must be finite numbers'),
    (['--wou', 'nan'], '--wou must be a finite number'),
    (['--filters', '0'], '--filters must be in'),
    (['--scales', '40'], '--scales must be in'),
    (['--eval_batch', '0'], '--eval_batch must be >= 1'),
    (['--dataset', 'tiny.1@-1-10/../../escaped'], 'not a path'),
])
def test_bad_numbers_and_names_are_one_error_line(tiny_data_dir, tmp_path, flags, message):
    result = subprocess.run(
        [sys.executable, 'mean_teacher.py', '--dataset', 'tiny.1@-1-10', '--data_dir',
         tiny_data_dir, '--train_dir', str(tmp_path / 'runs'), *flags],
        cwd=ROOT, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}, capture_output=True,
        text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'escaped').exists()


def test_a_read_only_train_dir_is_one_error_line(tiny_data_dir, tmp_path):
    if os.geteuid() == 0:
        # root ignores permissions: make the train_dir a file instead, also an OS error.
        train_dir = tmp_path / 'not_a_folder'
        train_dir.write_text('')
    else:
        train_dir = tmp_path / 'read_only'
        train_dir.mkdir(mode=0o500)
    result = subprocess.run(
        [sys.executable, 'mean_teacher.py', '--dataset', 'tiny.1@-1-10', '--data_dir',
         tiny_data_dir, '--train_dir', str(train_dir), '--filters', '4', '--train_kimg', '0.01'],
        cwd=ROOT, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}, capture_output=True,
        text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert str(train_dir) in errors[0] and 'Traceback' not in result.stderr

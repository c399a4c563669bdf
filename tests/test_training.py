"""The shared training loop: every method trains, writes complete reports, resumes and refuses
to mix runs."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from libml import dc3, methods
from libml.errors import DC3Error
from tests.conftest import ROOT, TINY_CLASSES, make_method

# The paper's five methods with their scripts' default hyperparameters.
METHODS = {name: (methods.method_class(name), methods.params_defaults(name))
           for name in methods.PAPER_METHODS}
VANILLA = dc3.DC3Config(combined_output=0, wou=0, wol=0)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize('with_dc3', [False, True], ids=['vanilla', 'dc3'])
@pytest.mark.parametrize('name', sorted(METHODS))
def test_method_trains_and_reports(name, with_dc3, tiny_data_dir, tmp_path):
    cls, hparams = METHODS[name]
    augment = 'd.d.rac' if name == 'fixmatch' else 'd.d.d'
    method = make_method(cls, tiny_data_dir, tmp_path, dc3.DC3Config() if with_dc3 else VANILLA,
                         hparams, augment=augment, train_kimg=48 / 1024, report_kimg=24 / 1024)
    before = [v.numpy().copy() for v in method.model.trainable_variables]
    run_dir = method.train()

    assert int(method.optimizer.iterations.numpy()) == 6  # 48 images / batch 8
    changed = [not np.allclose(b, v.numpy()) for b, v in zip(before, method.model.trainable_variables)]
    assert all(changed)
    args = json.load(open(os.path.join(run_dir, 'args.json')))
    assert args['method'] == cls.__name__ and args.get('combined_output', 0) == (4 if with_dc3 else 0)
    history = read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
    assert [h['images'] for h in history] == [24, 48]
    assert set(history[-1]['splits']) == {'train', 'unlabeled', 'val'}
    assert np.isfinite(history[-1]['splits']['val']['ema']['accuracy'])
    report = os.path.join(run_dir, 'reports', 'img0000000048')
    frame = pd.read_csv(os.path.join(report, 'val.csv'))
    assert len(frame) == 64 and sorted(frame['index']) == list(range(64))
    probs = frame[[f'prob_{c}' for c in range(len(TINY_CLASSES))]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    if with_dc3:
        assert frame['ambiguity'].between(0, 1).all()
        assert frame['cluster'].max() < 5 * len(TINY_CLASSES)
        expected_kind = np.where(frame['ambiguity'] >= 0.5, 'cluster', 'class')
        assert (frame['output_kind'] == expected_kind).all()
    else:
        assert frame['ambiguity'].isna().all() and (frame['output_kind'] == 'class').all()
    assert os.path.exists(os.path.join(report, 'val_embeddings.npy'))
    assert tf.train.latest_checkpoint(os.path.join(run_dir, 'ckpt')).endswith('ckpt-6')


def test_changed_hyperparameters_are_refused_in_the_same_folder(tiny_data_dir, tmp_path):
    cls, hparams = METHODS['fully_supervised']
    run_dir = make_method(cls, tiny_data_dir, tmp_path, VANILLA, hparams).train()
    args_path = os.path.join(run_dir, 'args.json')
    args = json.load(open(args_path))
    args['lr'] = 0.5  # as if the folder had been made by another command
    json.dump(args, open(args_path, 'w'))
    with pytest.raises(DC3Error, match='other hyperparameters.*lr'):
        make_method(cls, tiny_data_dir, tmp_path, VANILLA, hparams).train()


def test_eval_ckpt_reproduces_the_final_report(tiny_data_dir, tmp_path):
    cls, hparams = METHODS['pseudo_label']
    run_dir = make_method(cls, tiny_data_dir, tmp_path, dc3.DC3Config(), hparams).train()
    final = read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))[-1]
    fresh = make_method(cls, tiny_data_dir, tmp_path, dc3.DC3Config(), hparams)
    out = fresh.evaluate_checkpoint(os.path.join(run_dir, 'ckpt', 'ckpt-4'))
    again = read_jsonl(os.path.join(out, 'metrics.jsonl'))[-1]
    assert again['step'] == final['step'] == 4
    for key in ('accuracy', 'f1_certain', 'kl', 'ambiguous_share'):
        assert again['splits']['val']['ema'][key] == pytest.approx(final['splits']['val']['ema'][key])
    with pytest.raises(DC3Error, match='not found'):
        fresh.evaluate_checkpoint(os.path.join(run_dir, 'ckpt', 'ckpt-999'))


def test_eval_ckpt_needs_only_the_checkpoint(tiny_data_dir, tmp_path):
    """``--eval_ckpt`` rebuilds the run from its args.json: no architecture or DC3 flag is given
    (the run used 4 filters, 2 stages, 1 block and DC3, none of them defaults), and the report
    equals the run's own final one. A checkpoint that does not fit args.json is one error line."""
    cls, hparams = METHODS['pseudo_label']
    run_dir = make_method(cls, tiny_data_dir, tmp_path, dc3.DC3Config(), hparams).train()
    final = read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))[-1]
    ckpt = os.path.join(run_dir, 'ckpt', 'ckpt-4')
    result = subprocess.run([sys.executable, 'pseudo_label.py', '--eval_ckpt', ckpt,
                             '--data_dir', tiny_data_dir], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.strip().splitlines()[-1]
    again = read_jsonl(os.path.join(out, 'metrics.jsonl'))[-1]
    assert again['step'] == final['step'] == 4
    for key in ('accuracy', 'f1_certain', 'kl', 'ambiguous_share'):
        assert again['splits']['val']['ema'][key] == pytest.approx(final['splits']['val']['ema'][key])

    args_path = os.path.join(run_dir, 'args.json')
    args = json.load(open(args_path))
    json.dump({**args, 'filters': 8}, open(args_path, 'w'))  # as if copied from another run
    method, _ = methods.build_from_run(run_dir, tiny_data_dir)
    with pytest.raises(DC3Error, match='does not fit the network of its args.json'):
        method.evaluate_checkpoint(ckpt)


def wait_for_checkpoint(process, root, after_step=0, timeout=120):
    """Path of the ``checkpoint`` state file below ``root`` once it names a step > ``after_step``
    (None if the process ended or time ran out first)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        for folder, _, files in os.walk(root):
            if 'checkpoint' in files:
                latest = tf.train.latest_checkpoint(folder)
                if latest and int(latest.rsplit('-', 1)[1]) > after_step:
                    return os.path.join(folder, 'checkpoint')
        time.sleep(0.05)
    return None


def test_killed_run_resumes_from_its_last_checkpoint(tiny_data_dir, tmp_path):
    """SIGKILL a real training process three times at random moments while it saves a checkpoint
    every two steps (so kills land inside saves); each rerun continues and the last one finishes."""
    command = [sys.executable, 'mean_teacher.py', '--dataset', 'tiny.1@-1-10', '--data_dir',
               tiny_data_dir, '--train_dir', str(tmp_path), '--filters', '4', '--scales', '2',
               '--repeat', '1', '--batch', '8', '--train_kimg', '3', '--save_kimg', '0.015625',
               '--keep_ckpt', '3', '--report_kimg', '3']
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
    rng = np.random.default_rng(0)
    steps = []
    for attempt in range(3):
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        state = wait_for_checkpoint(process, tmp_path, after_step=steps[-1] if steps else 0)
        assert state, 'no new checkpoint was written'
        time.sleep(rng.uniform(0.2, 1.5))
        process.send_signal(signal.SIGKILL)
        stderr = process.communicate()[1]
        assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
        if attempt:
            assert 'Resumed from' in stderr
        latest = tf.train.latest_checkpoint(os.path.dirname(state))
        tf.train.load_checkpoint(latest)  # readable, whatever the kill interrupted
        steps.append(int(latest.rsplit('-', 1)[1]))
    assert 0 < steps[0] < steps[1] < steps[2] < 384

    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    resumed_step = int(final.stderr.split('Resumed from')[1].split('ckpt-')[1].split()[0])
    assert resumed_step >= steps[-1]
    run_dir = os.path.dirname(os.path.dirname(state))
    history = read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
    assert history[-1]['step'] == 384  # 3 kimg / batch 8, not restarted from 0
    assert tf.train.latest_checkpoint(os.path.join(run_dir, 'ckpt')).endswith('ckpt-384')

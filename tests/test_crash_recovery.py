"""What survives a crash of a training run: reports, the lock, damaged checkpoints (issue #20).

A crash is simulated in-process by making a report raise (the checkpoint of its step is already
saved, as when a process is killed between the two) and by leaving a lock of a dead process;
tests/test_training.py kills real processes with SIGKILL.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import mean_teacher
from libml import dc3, evaluation, run_files
from libml.errors import DC3Error
from tests.conftest import make_method

HPARAMS = {'consistency_weight': 50.0, 'warmup_pos': 0.4}
STEPS = 4  # 32 images at batch 8


class Killed(Exception):
    pass


def method(tiny_data_dir, tmp_path, **kwargs):
    return make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path, dc3.DC3Config(),
                       HPARAMS, train_kimg=32 / 1024, save_kimg=8 / 1024,
                       report_kimg=16 / 1024, keep_ckpt=10, **kwargs)


def crash_at_report(monkeypatch, step):
    real = evaluation.report

    def report(m, out_dir, at_step, *args, **kwargs):
        if at_step == step:
            raise Killed(f'killed before the report of step {at_step}')
        return real(m, out_dir, at_step, *args, **kwargs)
    monkeypatch.setattr(evaluation, 'report', report)
    return real


def leave_dead_lock(run_dir):
    """The lock a SIGKILLed process leaves behind: its pid no longer runs on this host."""
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True).stdout.strip()
    holder = {'host': run_files.socket.gethostname(), 'pid': int(dead), 'since': 'earlier'}
    with open(os.path.join(run_dir, run_files.LOCK_FILE), 'w') as f:
        json.dump(holder, f)


def reports_of(run_dir):
    return [entry['step'] for entry in run_files.read_metrics(run_dir)]


@pytest.mark.parametrize('lost', [STEPS, STEPS // 2], ids=['final', 'intermediate'])
def test_a_report_lost_to_a_crash_is_written_on_the_rerun(tiny_data_dir, tmp_path, monkeypatch,
                                                          capsys, lost):
    real = crash_at_report(monkeypatch, lost)
    first = method(tiny_data_dir, tmp_path)
    with pytest.raises(Killed):
        first.train()
    run_dir = first.run_dir()
    assert reports_of(run_dir) == ([STEPS // 2] if lost == STEPS else [])
    leave_dead_lock(run_dir)

    monkeypatch.setattr(evaluation, 'report', real)
    assert method(tiny_data_dir, tmp_path).train() == run_dir
    err = capsys.readouterr().err
    assert 'taking over the lock' in err and 'which an interrupted run left out' in err
    assert reports_of(run_dir) == [STEPS // 2, STEPS]  # each report once, in order
    final = os.path.join(run_dir, 'reports', run_files.report_name(STEPS * 8))
    assert os.path.exists(os.path.join(final, 'val_embeddings.npy'))
    assert not os.path.exists(os.path.join(run_dir, run_files.LOCK_FILE))


def test_the_rewritten_final_report_equals_the_one_an_uninterrupted_run_writes(
        tiny_data_dir, tmp_path, monkeypatch):
    real = crash_at_report(monkeypatch, STEPS)
    with pytest.raises(Killed):
        method(tiny_data_dir, tmp_path / 'crashed', deterministic=1).train()
    monkeypatch.setattr(evaluation, 'report', real)
    crashed = method(tiny_data_dir, tmp_path / 'crashed', deterministic=1).train()
    clean = method(tiny_data_dir, tmp_path / 'clean', deterministic=1).train()
    last = lambda d: run_files.read_metrics(d)[-1]['splits']['val']['ema']  # noqa: E731
    assert last(crashed) == pytest.approx(last(clean))


def test_a_second_process_on_the_run_folder_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        run_dir = tmp_path / 'run'
        run_dir.mkdir()
        (run_dir / run_files.LOCK_FILE).write_text(json.dumps(
            {'host': run_files.socket.gethostname(), 'pid': sleeper.pid, 'since': 'now'}))
        with pytest.raises(DC3Error, match=f'in use by process {sleeper.pid}'):
            with run_files.run_lock(str(run_dir)):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    # Another host's lock cannot be checked: refused, with the way out.
    (run_dir / run_files.LOCK_FILE).write_text(json.dumps(
        {'host': 'elsewhere', 'pid': 1, 'since': 'now'}))
    with pytest.raises(DC3Error, match='delete .*run.lock if that process is gone'):
        with run_files.run_lock(str(run_dir)):
            pass
    # Our own lock is released at the end of the block.
    (run_dir / run_files.LOCK_FILE).unlink()
    with run_files.run_lock(str(run_dir)):
        held = json.loads((run_dir / run_files.LOCK_FILE).read_text())
        assert held['pid'] == os.getpid()
    assert not (run_dir / run_files.LOCK_FILE).exists()


def test_two_real_processes_do_not_train_in_one_folder(tiny_data_dir, tmp_path):
    command = [sys.executable, 'mean_teacher.py', '--dataset', 'tiny.1@-1-10', '--data_dir',
               tiny_data_dir, '--train_dir', str(tmp_path), '--filters', '4', '--scales', '2',
               '--repeat', '1', '--batch', '8', '--train_kimg', '2', '--report_kimg', '2',
               '--save_kimg', '2']
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    first = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the first process holds the lock, then start the second.
        for _ in range(600):
            if list(tmp_path.glob(f'*/*/{run_files.LOCK_FILE}')) or first.poll() is not None:
                break
            subprocess.run(['sleep', '0.1'])
        assert first.poll() is None, 'the first run ended before the second could start'
        second = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                                timeout=300)
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'in use by process' in errors[0]
    run_dir = out.strip().splitlines()[-1]
    assert len(run_files.read_metrics(run_dir)) == 1  # one report, not two


def corrupt(path):
    data = bytearray(open(path, 'rb').read())
    with open(path, 'wb') as f:
        f.write(bytes(data[:len(data) // 2]))


def test_a_damaged_checkpoint_falls_back_to_the_one_before(tiny_data_dir, tmp_path, capsys):
    run_dir = method(tiny_data_dir, tmp_path).train()
    ckpt_dir = os.path.join(run_dir, 'ckpt')
    corrupt(os.path.join(ckpt_dir, f'ckpt-{STEPS}.data-00000-of-00001'))
    again = method(tiny_data_dir, tmp_path)
    again.train()
    err = capsys.readouterr().err
    assert f'ckpt-{STEPS} is unreadable' in err and f'Resumed from {ckpt_dir}/ckpt-{STEPS - 1}' in err
    assert int(again.optimizer.iterations.numpy()) == STEPS  # trained the last step again
    tf.train.load_checkpoint(os.path.join(ckpt_dir, f'ckpt-{STEPS}'))  # rewritten, readable


def test_a_damaged_checkpoint_state_file_does_not_restart_from_zero(tiny_data_dir, tmp_path,
                                                                    capsys):
    run_dir = method(tiny_data_dir, tmp_path).train()
    ckpt_dir = os.path.join(run_dir, 'ckpt')
    weights = tf.train.load_checkpoint(os.path.join(ckpt_dir, f'ckpt-{STEPS}'))
    with open(os.path.join(ckpt_dir, 'checkpoint'), 'w') as f:
        f.write('model_checkpoint_path: \x00\x01 garbage {{{')
    again = method(tiny_data_dir, tmp_path)
    again.train()
    assert f'Resumed from {ckpt_dir}/ckpt-{STEPS}' in capsys.readouterr().err
    assert int(again.optimizer.iterations.numpy()) == STEPS
    assert len(run_files.read_metrics(run_dir)) == 2  # nothing trained or reported again
    name = next(n for n in weights.get_variable_to_shape_map() if 'kernel' in n)
    np.testing.assert_array_equal(
        weights.get_tensor(name),
        tf.train.load_checkpoint(os.path.join(ckpt_dir, f'ckpt-{STEPS}')).get_tensor(name))


def test_all_checkpoints_damaged_is_one_error(tiny_data_dir, tmp_path):
    run_dir = method(tiny_data_dir, tmp_path).train()
    for index in (os.path.join(run_dir, 'ckpt', n) for n in os.listdir(
            os.path.join(run_dir, 'ckpt')) if n.endswith('.index')):
        corrupt(index)
    with pytest.raises(DC3Error, match='none of the .* checkpoints .* reads back'):
        method(tiny_data_dir, tmp_path).train()


def copy_tiny_data(tiny_data_dir, tmp_path):
    import shutil
    target = tmp_path / 'data'
    shutil.copytree(tiny_data_dir, target)
    return target, next(target.glob('tiny.1')) / 'train.tfrecord'


def test_a_damaged_split_stops_the_script_before_a_run_folder_exists(tiny_data_dir, tmp_path):
    data_dir, train_file = copy_tiny_data(tiny_data_dir, tmp_path)
    with open(train_file, 'r+b') as f:
        f.truncate(train_file.stat().st_size - 100)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, 'mean_teacher.py', '--dataset', 'tiny.1@-1-10', '--data_dir',
         str(data_dir), '--train_dir', str(tmp_path / 'runs'), '--filters', '4'],
        cwd=root, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'train.tfrecord' in errors[0], result.stderr[-2000:]
    assert not (tmp_path / 'runs').exists()


def test_a_flipped_byte_in_the_data_is_one_error(tiny_data_dir, tmp_path):
    data_dir, train_file = copy_tiny_data(tiny_data_dir, tmp_path)
    data = bytearray(train_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the records' checksums can tell
    train_file.write_bytes(bytes(data))
    with pytest.raises(DC3Error, match='damaged data while training'):
        method(str(data_dir), tmp_path / 'runs').train()

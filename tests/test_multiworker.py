"""``--strategy multiworker`` with real worker processes on 127.0.0.1.

Two workers (TF_CONFIG from scripts/launch_workers.py, or a SLURM job step's variables) train as
one process with the global batch does; only the chief writes the run folder; a killed worker stops
the other with one error line, and rerunning both resumes. Each case starts real processes (about
15 s of TensorFlow start-up each), so the cases are few and tiny.
"""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from libml import distribute
from libml.errors import DC3Error
from scripts import launch_workers
from tests.conftest import ROOT

# Without CE^-1 (its partners are drawn within each replica's slice, so two replicas cannot draw
# what one process draws) and without random augmentation; synchronised batch norm, so that the
# two workers' batch moments are those of the global batch. Seed 4: see tests/distribute_check.py.
TINY = ['--dataset', 'tiny.1@-1-10', '--filters', '4', '--scales', '2', '--repeat', '1',
        '--uratio', '2', '--augment', 'x.x.x', '--seed', '4', '--sync_bn', '1',
        '--eval_batch', '64', '--wou', '0', '--wol', '0']
STEPS, BATCH, WORKERS = 4, 4, 2
SHORT = ['--train_kimg', str(STEPS * BATCH * WORKERS / 1024),
         '--report_kimg', str(2 * BATCH * WORKERS / 1024),
         '--save_kimg', str(2 * BATCH * WORKERS / 1024)]
CASES = {
    'mean_teacher_dc3': ['mean_teacher.py'],  # DC3 on (its defaults), CE^-1 off
    'fixmatch': ['fixmatch.py', '--combined_output', '0', '--confidence', '0.5'],
}
TIMEOUT = 300


def free_port_base(count=WORKERS):
    """A port with ``count - 1`` free ports after it (SLURM's workers of a node count up)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            base = s.getsockname()[1]
        if base + count < 65536 and all(_free(base + i) for i in range(1, count)):
            return base
    raise RuntimeError('no free ports')


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(('127.0.0.1', port))
            return True
        except OSError:
            return False


def environment(tmp_path, **extra):
    scratch = tmp_path / 'scratch'  # the workers' temporary checkpoints go here (TMPDIR)
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != 'TF_CONFIG' and not k.startswith('SLURM')}
    # Two workers are compared with one process to float noise: with TensorFlow's own kernels,
    # since oneDNN's (on by default, libml/__init__.py) round differently for each batch size.
    return {**env, 'TF_CPP_MIN_LOG_LEVEL': '2', 'TMPDIR': str(scratch),
            'TF_ENABLE_ONEDNN_OPTS': '0', **extra}


def script(name, data_dir, train_dir, *flags):
    return [sys.executable, name, *TINY, '--data_dir', data_dir, '--train_dir', str(train_dir),
            *flags]


def run_dir_of(train_dir):
    [path] = glob.glob(os.path.join(str(train_dir), '*', '*'))
    return path


def final_weights(run_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run_dir, 'ckpt')))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(('model/', 'ema_model/'))}


def error_lines(stderr):
    """Our ``error:`` lines (a progress bar may precede one on the same line)."""
    return [line[line.index('error: '):] for line in stderr.replace('\r', '\n').splitlines()
            if 'error: ' in line and not line.lstrip().startswith(('E0000', 'E1'))]


def read_jsonl(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def start_slurm_workers(command, tmp_path):
    base = str(free_port_base())
    return [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=environment(
                                 tmp_path, SLURM_PROCID=str(i), SLURM_STEP_NUM_TASKS=str(WORKERS),
                                 SLURM_STEP_NODELIST='localhost',
                                 SLURM_STEP_TASKS_PER_NODE=str(WORKERS),
                                 DC3_SLURM_PORT_BASE=base))
            for i in range(WORKERS)]


@pytest.mark.parametrize('case', sorted(CASES))
def test_two_workers_train_as_one_process_with_the_global_batch(case, tiny_data_dir, tmp_path):
    name, *flags = CASES[case]
    one = subprocess.run(script(name, tiny_data_dir, tmp_path / 'one', *flags, *SHORT,
                                '--batch', str(BATCH * WORKERS)),
                         cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-2000:]
    command = script(name, tiny_data_dir, tmp_path / 'workers', *flags, *SHORT,
                     '--batch', str(BATCH), '--strategy', 'multiworker')
    if case == 'fixmatch':  # the workers of a SLURM job step (srun), without TF_CONFIG
        workers = start_slurm_workers(command, tmp_path)
        outputs = [w.communicate(timeout=TIMEOUT) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs[0][1][-2000:]
    else:  # scripts/launch_workers.py writes each worker's TF_CONFIG
        launched = subprocess.run(
            [sys.executable, 'scripts/launch_workers.py', '--workers', str(WORKERS), '--logs',
             str(tmp_path / 'logs'), '--', *command],
            cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
        assert launched.returncode == 0, launched.stderr[-2000:]

    run_dir = run_dir_of(tmp_path / 'workers')
    args = json.load(open(os.path.join(run_dir, 'args.json'), encoding='utf-8'))
    assert (args['replicas'], args['strategy']) == (WORKERS, 'multiworker')
    want, got = final_weights(run_dir_of(tmp_path / 'one')), final_weights(run_dir)
    assert sorted(got) == sorted(want) and len(got) > 20
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
    # Only the chief wrote: one line per report, one event file, no lock left, and the other
    # worker's temporary checkpoints are gone.
    assert [entry['step'] for entry in read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))] == [
        2, 4]
    assert len(glob.glob(os.path.join(run_dir, 'tb', 'events.out.tfevents.*'))) == 1
    assert not os.path.exists(os.path.join(run_dir, 'run.lock'))
    assert os.listdir(tmp_path / 'scratch') == []


def test_a_killed_worker_stops_the_other_and_both_resume(tiny_data_dir, tmp_path):
    """kill -9 of worker 1 mid-run: worker 0 ends with one error line within a bounded time (no
    hang); the same command on both workers then resumes from the chief's last checkpoint."""
    steps = 96
    train_dir = tmp_path / 'runs'
    command = script('mean_teacher.py', tiny_data_dir, train_dir, '--batch', str(BATCH),
                     '--strategy', 'multiworker',
                     '--train_kimg', str(steps * BATCH * WORKERS / 1024),
                     '--save_kimg', str(2 * BATCH * WORKERS / 1024),
                     '--report_kimg', str(steps * BATCH * WORKERS / 1024))
    configs = launch_workers.tf_configs(launch_workers.free_ports(WORKERS))
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env=environment(tmp_path, TF_CONFIG=config))
               for config in configs]
    deadline = time.time() + TIMEOUT
    while not glob.glob(os.path.join(str(train_dir), '*', '*', 'ckpt', 'ckpt-*.index')):
        assert time.time() < deadline and workers[0].poll() is None, 'no checkpoint was saved'
        time.sleep(0.2)
    workers[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    stderr = workers[0].communicate(timeout=180)[1]
    waited = time.time() - killed_at
    workers[1].wait()
    assert workers[0].returncode == 2, stderr[-2000:]
    [last] = error_lines(stderr)
    assert last.startswith('error: worker 0: another worker of the cluster stopped'), last
    assert 'rerun every worker' in last
    assert waited < 120
    run_dir = run_dir_of(train_dir)
    assert not os.path.exists(os.path.join(run_dir, 'run.lock'))
    saved = int(tf.train.latest_checkpoint(os.path.join(run_dir, 'ckpt')).rsplit('-', 1)[1])
    assert 0 < saved < steps

    resumed = subprocess.run(
        [sys.executable, 'scripts/launch_workers.py', '--workers', str(WORKERS), '--logs',
         str(tmp_path / 'logs'), '--', *command],
        cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step = int(resumed.stderr.split('Resumed from')[1].split('ckpt-')[1].split()[0])
    assert step >= saved
    with open(tmp_path / 'logs' / 'worker-1.log', encoding='utf-8') as f:
        assert f'Resumed from {os.path.join(run_dir, "ckpt", f"ckpt-{step}")}' in f.read()
    assert [e['step'] for e in read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))] == [steps]


def test_launcher_stops_every_worker_when_one_fails(tmp_path):
    """Worker 1 fails at once; the launcher stops worker 0, which ignores SIGTERM as TensorFlow's
    multi-worker processes do (its preemption notifier catches it), so only the SIGKILL after
    the grace time ends it; the launcher exits with worker 1's status. Plain Python workers."""
    pid_file = tmp_path / 'worker0.pid'
    worker = ('import json, os, signal, sys, time; '
              'task = json.loads(os.environ["TF_CONFIG"])["task"]; '
              'signal.signal(signal.SIGTERM, signal.SIG_IGN); '
              f'open({str(pid_file)!r}, "w").write(str(os.getpid())) if task["index"] == 0 '
              'else None; '
              'sys.exit(3) if task["index"] == 1 else time.sleep(120)')
    start = time.time()
    result = subprocess.run(
        [sys.executable, 'scripts/launch_workers.py', '--workers', '2', '--logs',
         str(tmp_path), '--', sys.executable, '-c', worker],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 3
    assert time.time() - start < launch_workers.GRACE_SECONDS + 20
    assert 'error: worker 1 exited with status 3' in result.stderr
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_tf_config_with_another_strategy_is_refused(tiny_data_dir, tmp_path):
    """TensorFlow ignores TF_CONFIG without a multi-worker strategy: each process would train
    alone into the same run folder. One error line instead, and no run folder."""
    config = launch_workers.tf_configs([12345, 12346])[0]
    result = subprocess.run(script('mean_teacher.py', tiny_data_dir, tmp_path, *SHORT),
                            cwd=ROOT, env=environment(tmp_path, TF_CONFIG=config),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: TF_CONFIG is set but --strategy is default')
    assert not glob.glob(os.path.join(str(tmp_path), '*', '*'))


@pytest.mark.parametrize('env, message', [
    ({'TF_CONFIG': '{"cluster": '}, 'TF_CONFIG is not a cluster description'),
    ({'TF_CONFIG': '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}'},
     'task worker 3 is not in its cluster'),
    ({}, '--strategy multiworker needs a cluster'),
    ({'SLURM_PROCID': '0', 'SLURM_STEP_NUM_TASKS': '2', 'SLURM_STEP_NODELIST': 'n1',
      'SLURM_STEP_TASKS_PER_NODE': '2', 'DC3_SLURM_PORT_BASE': 'x'}, 'must be a port number'),
])
def test_a_cluster_that_cannot_be_resolved_is_one_error(monkeypatch, env, message):
    for name in list(os.environ):
        if name == 'TF_CONFIG' or name.startswith('SLURM'):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DC3Error, match=message):
        distribute.cluster_resolver()


def test_slurm_job_step_names_every_task(monkeypatch):
    """Four tasks on two nodes (srun): consecutive ports per node, this task's place, and no
    GPUs touched on a machine without them."""
    monkeypatch.delenv('TF_CONFIG', raising=False)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    monkeypatch.setenv('PATH', '')  # no nvidia-smi
    for name, value in {'SLURM_PROCID': '3', 'SLURM_STEP_NUM_TASKS': '4',
                        'SLURM_STEP_NODELIST': 'node[1-2]', 'SLURM_STEP_TASKS_PER_NODE': '2(x2)',
                        'DC3_SLURM_PORT_BASE': '9000'}.items():
        monkeypatch.setenv(name, value)
    resolver = distribute.cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {
        'worker': ['node1:9000', 'node1:9001', 'node2:9000', 'node2:9001']}
    assert (resolver.task_type, resolver.task_id) == ('worker', 3)
    assert 'CUDA_VISIBLE_DEVICES' not in os.environ


def test_a_non_finite_loss_stops_every_worker_together(tiny_data_dir, tmp_path):
    """The loss is reduced over the workers before it is checked, so all of them stop at the
    same step with the same error line (a worker that went on would wait for the others)."""
    command = script('pseudo_label.py', tiny_data_dir, tmp_path / 'runs', *SHORT,
                     '--batch', str(BATCH), '--strategy', 'multiworker', '--lr', '1e30')
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env=environment(tmp_path, TF_CONFIG=config))
               for config in launch_workers.tf_configs(launch_workers.free_ports(WORKERS))]
    # Each worker's one error line (TensorFlow's C++ runtime may log the other's exit after it).
    lines = [[line for line in error_lines(w.communicate(timeout=TIMEOUT)[1])
              if line.startswith('error: non-finite loss at step ')] for w in workers]
    assert [w.returncode for w in workers] == [2, 2], lines
    assert [len(found) for found in lines] == [1, 1], lines
    steps = {found[0].split('non-finite loss at step ')[1].split()[0] for found in lines}
    assert len(steps) == 1, lines

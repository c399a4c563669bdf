"""Two local workers (``--strategy multiworker``) against one process at the same global batch.

    python -m bench.multiworker [--method mean_teacher] [--batch 64] [--kimg 3] [--repeats 2]

Trains the method with the real scripts, alternately: one process with ``--batch B`` and two
worker processes (``scripts/launch_workers.py``) with ``--batch B/2`` each, both with
``--sync_bn 1`` (so both compute the same step; ``--sync_bn 0`` leaves out the batch-norm
all-reduces, and the two settings then differ in their batch-norm moments). Speed is the training loop's own
``monitors/img_per_sec`` (labeled images per second, a mean over every ``log_every`` steps) read
from the chief's TensorBoard events; the first window, which includes tracing, is left out.

The all-reduce alone: two workers sum the gradients of the same network (one tensor per trainable
variable, as the optimiser does) ``--allreduce_steps`` times; the median time per step is the
cost of the gradient all-reduce over 127.0.0.1 (gRPC, ring), without the batch-norm ones.
Results -> ``--out`` (JSON) and a Markdown table on stdout.
"""
import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_training(args, workers, train_dir):
    """One training run; returns the labeled img/s of every logged window but the first."""
    per_worker = args.batch // workers
    command = [sys.executable, f'{args.method}.py', '--dataset', args.dataset, '--batch',
               str(per_worker), '--filters', str(args.filters), '--sync_bn', str(args.sync_bn),
               '--train_kimg', str(args.kimg), '--report_kimg', str(args.kimg), '--save_kimg',
               str(args.kimg), '--train_dir', train_dir, '--uratio', str(args.uratio)]
    if workers > 1:
        command = [sys.executable, 'scripts/launch_workers.py', '--workers', str(workers),
                   '--logs', os.path.join(train_dir, 'logs'), '--', *command,
                   '--strategy', 'multiworker']
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
    env.pop('TF_CONFIG', None)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f'error: {" ".join(command)} failed:\n{result.stderr[-2000:]}')
    return img_per_sec(train_dir)[1:]


def img_per_sec(train_dir):
    import tensorflow as tf  # only here: the parent process stays light
    [events] = glob.glob(os.path.join(train_dir, '*', '*', 'tb', 'events.out.tfevents.*'))
    values = []
    for event in tf.compat.v1.train.summary_iterator(events):
        for value in event.summary.value:
            if value.tag == 'monitors/img_per_sec':
                values.append(float(tf.make_ndarray(value.tensor)))
    return values


def allreduce_worker(args):
    """Runs inside each worker (TF_CONFIG set): times the all-reduce of the network's gradients."""
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from libml import models
    with strategy.scope():
        network = models.build_network('resnet', 32, {'classes': 10}, filters=args.filters)
    shapes = [v.shape for v in network.trainable_variables]

    @tf.function
    def step():
        def replica_fn():
            grads = [tf.ones(shape) for shape in shapes]
            return tf.distribute.get_replica_context().all_reduce('sum', grads)
        return strategy.run(replica_fn)
    for _ in range(3):
        step()
    times = []
    for _ in range(args.allreduce_steps):
        start = time.perf_counter()
        out = step()
        float(tf.reduce_sum(strategy.experimental_local_results(out[0])[0]))
        times.append(time.perf_counter() - start)
    if strategy.extended.should_checkpoint:
        params = sum(int(tf.size(v)) for v in network.trainable_variables)
        print(json.dumps({'params': params, 'tensors': len(shapes),
                          'median_s': statistics.median(times), 'times_s': times}))


def run_allreduce(args):
    command = [sys.executable, 'scripts/launch_workers.py', '--workers', '2', '--',
               sys.executable, '-m', 'bench.multiworker', '--allreduce_worker',
               '--filters', str(args.filters), '--allreduce_steps', str(args.allreduce_steps)]
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f'error: the all-reduce workers failed:\n{result.stderr[-2000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--method', default='mean_teacher')
    parser.add_argument('--dataset', default='synthetic.1@-1-10')
    parser.add_argument('--batch', type=int, default=64, help='Global labeled batch.')
    parser.add_argument('--uratio', type=int, default=1)
    parser.add_argument('--sync_bn', type=int, default=1, choices=(0, 1),
                        help='1: both settings compute the same step (default); 0: each worker '
                             'normalises its own half, without the batch-norm all-reduces.')
    parser.add_argument('--filters', type=int, default=32)
    parser.add_argument('--kimg', type=float, default=3.0)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--allreduce_steps', type=int, default=20)
    parser.add_argument('--allreduce_worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--out', default='bench/out/multiworker.json')
    args = parser.parse_args()
    if args.allreduce_worker:
        return allreduce_worker(args)

    speeds = {1: [], 2: []}
    for repeat in range(args.repeats):
        for workers in (1, 2) if repeat % 2 == 0 else (2, 1):
            with tempfile.TemporaryDirectory() as train_dir:
                windows = run_training(args, workers, train_dir)
            speeds[workers].append(statistics.median(windows))
            print(f'repeat {repeat}: {workers} worker(s): {speeds[workers][-1]:.1f} labeled img/s',
                  file=sys.stderr)
    allreduce = run_allreduce(args)
    result = {'machine': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
              'command': ' '.join(sys.argv), 'args': vars(args),
              'labeled_img_per_sec': {str(k): v for k, v in speeds.items()},
              'allreduce': allreduce}
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + '.tmp', args.out)
    one, two = statistics.median(speeds[1]), statistics.median(speeds[2])
    print('| setting | labeled img/s (median) | runs |\n|---|---|---|')
    print(f'| one process, batch {args.batch} | {one:.1f} | '
          f'{", ".join(f"{v:.1f}" for v in speeds[1])} |')
    print(f'| two workers, batch {args.batch // 2} each | {two:.1f} | '
          f'{", ".join(f"{v:.1f}" for v in speeds[2])} |')
    print(f'\ntwo workers / one process: {two / one:.2f}; gradient all-reduce of '
          f'{allreduce["params"]:,} parameters in {allreduce["tensors"]} tensors: '
          f'{1000 * allreduce["median_s"]:.1f} ms per step (median of {args.allreduce_steps})')


if __name__ == '__main__':
    main()

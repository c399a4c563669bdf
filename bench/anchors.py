"""The issue's reference probes next to the project's step and its PyTorch peer, in one run.

Issue #5 states its speed anchors with three small probe scripts kept outside this repository
(``../shared/perf``: ``step_torch.py`` -- the network and a Mean-Teacher-like step in PyTorch --
and ``step_tf.py`` -- the same in plain Keras 3). Their numbers were taken on another day, maybe
on another machine; this script re-measures them here, alternately with

* the project's Pi-model step (``method._train_step``, the TF worker of bench.torch_peer): the
  probe's step -- labeled + two unlabeled views, cross-entropy + softmax-MSE between the views --
  plus the project's weight decay and EMA,
* the project's Mean Teacher step, which adds the teacher's forward pass on one view, and
* the PyTorch peer of each (the torch worker of bench.torch_peer),

so that "faster than PyTorch" can be read against the issue's probe as well as against our own
peer. The probes' convolutions have biases, the project's (like FixMatch's) do not.

Each probe runs as the issue ran it: a fresh process, 3 warm-up steps, 10 timed steps, and the
img/s it prints. bf16 follows the probes' README: ``step_torch.py ... bf16`` (autocast), and for
``step_tf.py`` the ``mixed_bfloat16`` Keras policy set before the script builds its model.

BENCHMARK-ONLY: needs PyTorch (bench/requirements.txt) and the probe directory.

    python -m bench.anchors                                  # ../shared/perf, fp32 and bf16
    python -m bench.anchors --perf_dir DIR --rounds 3
"""
import argparse
import os
import re
import subprocess
import sys
import time
import types

import bench
from bench import torch_peer


PROBES = ('step_tf.py', 'step_torch.py')
# Runs step_tf.py as __main__ with the given argv after setting Keras' mixed_bfloat16 policy.
TF_BF16 = ("import runpy, sys, keras; keras.mixed_precision.set_global_policy('mixed_bfloat16'); "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--perf_dir', default=os.path.join('..', 'shared', 'perf'),
                   help='directory holding the issue probes step_tf.py and step_torch.py')
    p.add_argument('--precisions', default='fp32,bf16')
    p.add_argument('--rounds', type=int, default=2, help='alternations of the four steps')
    p.add_argument('--block', type=int, default=10,
                   help='timed steps of ours and of the peer per round (the probes time 10)')
    p.add_argument('--filters', type=int, default=32)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--out', default=os.path.join('bench', 'out', 'anchors.json'))
    return p.parse_args(argv)


def probe_command(perf_dir, script, precision, filters, size):
    """The command line that runs one probe as the issue ran it."""
    path = os.path.join(perf_dir, script)
    if script == 'step_torch.py':
        return [sys.executable, path, str(filters), str(size)] + (
            ['bf16'] if precision == 'bf16' else [])
    if precision == 'bf16':
        return [sys.executable, '-c', TF_BF16, path, str(filters), str(size)]
    return [sys.executable, path, str(filters), str(size)]


def parse_probe_output(text):
    """img/s from a probe's last line, e.g. '... step 401 ms 479 img/s'."""
    found = re.findall(r'([0-9.]+) img/s', text)
    if not found:
        raise ValueError('the probe printed no "img/s"')
    return float(found[-1])


def run_probe(command, script):
    proc = subprocess.run(command, cwd=bench.ROOT, capture_output=True, text=True)
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise SystemExit(f'anchors: {script} failed: '
                         f'{lines[-1] if lines else f"exit code {proc.returncode}"}')
    return parse_probe_output(proc.stdout)


# Each entry: (name, probe script or None, (framework worker, method) or None)
ENTRIES = (
    ('probe_tf', 'step_tf.py', None),
    ('probe_torch', 'step_torch.py', None),
    ('pi_tf', None, ('tf', 'pi_model')),
    ('pi_torch', None, ('torch', 'pi_model')),
    ('mean_teacher_tf', None, ('tf', 'mean_teacher')),
    ('mean_teacher_torch', None, ('torch', 'mean_teacher')),
)


def measure(args, precision):
    """img/s per round of every entry at one precision, run alternately."""
    worker_args = types.SimpleNamespace(filters=args.filters, size=args.size, batch=64,
                                        threads=2, warmup=2, dc3=False)
    workers = {}
    runs = {name: [] for name, _, _ in ENTRIES}
    try:
        # Built one after the other, so tracing in one does not slow another's warm-up.
        for _, _, spec in ENTRIES:
            if spec:
                workers[spec] = torch_peer.Worker(spec[0], worker_args, spec[1], 1, precision)
        for i in range(args.rounds):
            for name, script, spec in (ENTRIES if i % 2 == 0 else ENTRIES[::-1]):
                if script:
                    runs[name].append(run_probe(probe_command(
                        args.perf_dir, script, precision, args.filters, args.size), script))
                else:
                    times = workers[spec].run(args.block)['times']
                    runs[name].append(workers[spec].info['images_per_step'] / bench.median(times))
    finally:
        for worker in workers.values():
            worker.close()
    return runs


def main(argv=None):
    args = parse_args(argv)
    args.perf_dir = os.path.abspath(args.perf_dir)  # the probes run with the repository as cwd
    missing = [s for s in PROBES if not os.path.isfile(os.path.join(args.perf_dir, s))]
    if missing:
        sys.exit(f'anchors: {", ".join(missing)} not found in --perf_dir {args.perf_dir!r}; '
                 'point --perf_dir at the directory of the issue probes')
    for precision in args.precisions.split(','):
        if precision not in ('bf16', 'fp32'):
            sys.exit(f'anchors: unknown precision {precision!r}; use bf16 and/or fp32')
    bench.require_torch('anchors')
    machine = bench.machine_info()
    bench.banner_with_torch(machine)
    start = time.time()
    rows = []
    for precision in args.precisions.split(','):
        runs = measure(args, precision)
        row = {'precision': precision, 'img_per_s_by_round': runs,
               'img_per_s': {name: bench.median(values) for name, values in runs.items()}}
        rows.append(row)
        med = row['img_per_s']
        row['ratios'] = {'pi_tf / probe_torch': med['pi_tf'] / med['probe_torch'],
                         'pi_tf / pi_torch': med['pi_tf'] / med['pi_torch'],
                         'mean_teacher_tf / mean_teacher_torch':
                             med['mean_teacher_tf'] / med['mean_teacher_torch'],
                         'probe_tf / probe_torch': med['probe_tf'] / med['probe_torch']}
        print(f'{precision} img/s (median of {args.rounds} rounds): ' + ', '.join(
            f'{name} {value:.0f}' for name, value in med.items()), flush=True)
        print(f'{precision} ratios: ' + ', '.join(
            f'{name} {value:.2f}' for name, value in row['ratios'].items())
            + f'  [{time.time() - start:.0f} s]', flush=True)
    bench.write_results('anchors', 'anchors', rows, args, machine, start)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""Starts a multi-worker training on this machine: one process per worker, each with its TF_CONFIG.

    python scripts/launch_workers.py --workers 2 -- \
        python mean_teacher.py --strategy multiworker --dataset cifar10n.1@-1-10 ...

Every worker gets a free port on 127.0.0.1 and a TF_CONFIG naming all of them; worker 0 is the
chief. The chief's output is streamed here; the others write ``<logs>/worker-<i>.log``. When a
worker fails, the others are stopped (SIGTERM, then SIGKILL) and this script exits with the failed
worker's status; rerunning the same command resumes from the run's last checkpoint.

The command is run as given: it must pass ``--strategy multiworker`` itself (without it, each
worker refuses TF_CONFIG with one error line). Several machines do not need this script: give
each machine's process its TF_CONFIG, or start them with SLURM's srun (README, "Several machines").
Pure Python, no TensorFlow: it only starts and watches processes.
"""
import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

GRACE_SECONDS = 10  # between SIGTERM and SIGKILL when stopping the other workers
POLL_SECONDS = 0.5


def free_ports(count):
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(('127.0.0.1', 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]


def tf_configs(ports):
    """One TF_CONFIG per worker, in worker order."""
    cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
    return [json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': i}})
            for i in range(len(ports))]


def stop(processes):
    """SIGTERM to every running process, SIGKILL to those still running after the grace time.

    Workers of a multi-worker strategy catch SIGTERM (TensorFlow's preemption notifier) and go on,
    so the SIGKILL is what usually stops them. A second signal to this script meanwhile is
    ignored: leaving now would leave the workers running.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + GRACE_SECONDS
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.time()))
        if p.poll() is None:
            p.kill()
            p.wait()


def launch(command, workers, log_dir):
    """Runs the workers; returns the exit status (0 when every worker finished cleanly)."""
    os.makedirs(log_dir, exist_ok=True)
    processes, logs = [], []
    try:
        for index, config in enumerate(tf_configs(free_ports(workers))):
            env = {**os.environ, 'TF_CONFIG': config}
            if index == 0:
                out = None  # the chief's output is this script's
            else:
                out = open(os.path.join(log_dir, f'worker-{index}.log'), 'w', encoding='utf-8')
                logs.append(out)
            processes.append(subprocess.Popen(command, env=env, stdout=out,
                                              stderr=subprocess.STDOUT if out else None))
        while True:
            codes = [p.poll() for p in processes]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index = failed[0]
                where = ('above' if index == 0 else
                         os.path.join(log_dir, f'worker-{index}.log'))
                print(f'error: worker {index} exited with status {codes[index]} (its output: '
                      f'{where}); stopping the other workers. Rerun the same command to resume '
                      'from the last checkpoint', file=sys.stderr)
                stop(processes)
                return codes[index] if codes[index] > 0 else 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        print('interrupted: stopping every worker', file=sys.stderr)
        stop(processes)
        return 130
    finally:
        for f in logs:
            f.close()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        usage='%(prog)s [--workers N] [--logs DIR] -- COMMAND ...')
    parser.add_argument('--workers', type=int, default=2, help='Worker processes (default 2).')
    parser.add_argument('--logs', default=None,
                        help='Folder of the other workers\' logs (default: a new temporary '
                             'folder, printed at the start).')
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='The training command, after --.')
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        parser.error('give the training command after --, e.g. -- python mean_teacher.py '
                     '--strategy multiworker ...')
    if args.workers < 1:
        parser.error(f'--workers must be >= 1, got {args.workers}')
    if os.environ.get('TF_CONFIG'):
        parser.error('TF_CONFIG is already set in this shell; unset it, this script writes one '
                     'per worker')
    log_dir = args.logs or tempfile.mkdtemp(prefix='dc3-workers-')
    if args.workers > 1:
        print(f'note: {args.workers} workers; the logs of workers 1-{args.workers - 1} are in '
              f'{log_dir}', file=sys.stderr)
    # Signals to this script stop the workers too (a batch system's SIGTERM, say).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    return launch(command, args.workers, log_dir)


if __name__ == '__main__':
    sys.exit(main())

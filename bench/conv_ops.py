"""The network's 3x3 convolutions alone, TensorFlow against PyTorch: which pass differs, and why.

Convolutions are four fifths of the bf16 training step on a CPU without AMX (BENCHMARKS.md
section 5). This script times each of the three passes of a convolution -- forward, gradient with
respect to the input, gradient with respect to the filter -- on the shapes of FixMatch's ResNet at
uratio 7 (960 images; 32x32x32, 16x16x64 and 8x8x128 activations, seven such convolutions per
stage), in TensorFlow (``tf.raw_ops`` in a ``tf.function``, NHWC) and in PyTorch
(``aten::convolution_backward``, channels-last). Both frameworks call oneDNN; the workers run with
``ONEDNN_VERBOSE=1`` and the script reads back which oneDNN kernel ran and how long the kernel
itself took, so a difference can be placed in the kernel or around it.

BENCHMARK-ONLY: needs PyTorch (bench/requirements.txt). Each framework runs in its own short-lived
subprocess, alternately (TF, torch, torch, TF, ...), so their thread pools never compete.

    python -m bench.conv_ops                       # bf16 and fp32, 2 rounds
    python -m bench.conv_ops --precisions bf16 --rounds 4
    python -m bench.conv_ops --threads 1           # one thread in both frameworks
    python -m bench.conv_ops --torch_site DIR      # another PyTorch build, from pip install --target DIR

Each worker also reports the oneDNN version its framework bundles and the threading runtime oneDNN
runs on (TensorFlow: its own thread pool; PyTorch: OpenMP), from oneDNN's own info lines.
"""
import argparse
import json
import importlib
import os
import re
import subprocess
import sys
import time

import bench


PASSES = ('forward', 'input_grad', 'filter_grad')
ONEDNN_PROP = {'forward_training': 'forward', 'forward_inference': 'forward',
               'backward_data': 'input_grad', 'backward_weights': 'filter_grad'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--precisions', default='bf16,fp32')
    p.add_argument('--batch', type=int, default=960, help='images (FixMatch uratio 7: 64 + 2x448)')
    p.add_argument('--stages', default='32x32,16x64,8x128',
                   help='comma-separated SIZExCHANNELS of the 3x3 stride-1 convolutions')
    p.add_argument('--repeats', type=int, default=10, help='timed calls per case and round')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--rounds', type=int, default=2, help='alternations of the two frameworks')
    p.add_argument('--threads', type=int, default=2,
                   help="threads per framework: torch.set_num_threads and TensorFlow's intra-op pool")
    p.add_argument('--torch_site', default=None,
                   help='run the PyTorch worker with this directory first on PYTHONPATH, e.g. '
                        'another PyTorch installed with pip install --target DIR torch==VERSION')
    p.add_argument('--worker', choices=['tf', 'torch'], help=argparse.SUPPRESS)
    p.add_argument('--precision', default='bf16', help=argparse.SUPPRESS)
    p.add_argument('--out', default=os.path.join('bench', 'out', 'conv_ops.json'))
    return p.parse_args(argv)


def stages(text):
    out = []
    for item in text.split(','):
        try:
            size, channels = (int(v) for v in item.lower().split('x'))
        except ValueError:
            raise SystemExit(f'conv_ops: --stages item {item!r} is not SIZExCHANNELS, e.g. 32x32')
        out.append((size, channels))
    return out


# ---------------------------------------------------------------------------------------------
# Workers: each returns {(stage, pass): [seconds per call]}
# ---------------------------------------------------------------------------------------------

def tf_cases(args, size, channels):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    dtype = tf.bfloat16 if args.precision == 'bf16' else tf.float32
    x = tf.cast(tf.random.normal([args.batch, size, size, channels]), dtype)
    w = tf.cast(tf.random.normal([3, 3, channels, channels]), dtype)
    dy = tf.cast(tf.random.normal([args.batch, size, size, channels]), dtype)
    common = dict(strides=[1, 1, 1, 1], padding='SAME')

    @tf.function
    def forward():
        return tf.raw_ops.Conv2D(input=x, filter=w, **common)

    @tf.function
    def input_grad():
        return tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=w,
                                              out_backprop=dy, **common)

    @tf.function
    def filter_grad():
        return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(w),
                                               out_backprop=dy, **common)

    # Eager execution on the CPU is synchronous: the call returns when the kernel has finished.
    return {'forward': forward, 'input_grad': input_grad, 'filter_grad': filter_grad}


def torch_cases(args, size, channels):
    import torch
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == 'bf16' else torch.float32
    cl = torch.channels_last
    x = torch.randn(args.batch, channels, size, size).to(dtype=dtype, memory_format=cl)
    w = torch.randn(channels, channels, 3, 3).to(dtype=dtype, memory_format=cl)
    dy = torch.randn(args.batch, channels, size, size).to(dtype=dtype, memory_format=cl)

    def backward(mask):
        def run():
            with torch.no_grad():
                return torch.ops.aten.convolution_backward(
                    dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
        return run

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, w, padding=1)

    return {'forward': forward, 'input_grad': backward([True, False, False]),
            'filter_grad': backward([False, True, False])}


def serve(args):
    """Times every case; prints one RESULT line of JSON (oneDNN's verbose lines share stdout)."""
    import ctypes
    libc = ctypes.CDLL(None)

    def mark(text):
        # oneDNN writes through C's stdio buffer, Python through its own: flush C's first so the
        # verbose lines land between the right marks.
        libc.fflush(None)
        print(f'MARK {text}', flush=True)

    build = tf_cases if args.worker == 'tf' else torch_cases
    framework = importlib.import_module('tensorflow' if args.worker == 'tf' else 'torch')
    times = {}
    for size, channels in stages(args.stages):
        for name, call in build(args, size, channels).items():
            mark('skip')  # warm-up calls (primitive creation, caches) are not counted
            for _ in range(args.warmup):
                call()
            mark(f'{size}x{channels} {name}')
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                call()
                runs.append(time.perf_counter() - start)
            times[f'{size}x{channels} {name}'] = runs
    mark('skip')
    print('RESULT ' + json.dumps({'version': framework.__version__, 'times': times}), flush=True)


def parse_worker_output(text):
    """(call times, oneDNN kernels, library info) from a worker's stdout.

    The kernels map each case to {"implementation (pass[, attributes])": [kernel seconds]} for
    the convolution primitives oneDNN executed while the case was being timed (reorders are
    ignored). The info holds the framework's version and, from oneDNN's info lines, the oneDNN
    version, its CPU threading runtime and its thread count.
    """
    case, kernels, times, info = None, {}, None, {}
    for line in text.splitlines():
        if line.startswith('MARK '):
            case = line[5:].strip()
        elif line.startswith('RESULT '):
            result = json.loads(line[7:])
            times, info['version'] = result['times'], result['version']
        elif line.startswith('onednn_verbose') and ',info,' in line:
            # onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)
            # onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2
            version = re.search(r',info,oneDNN (v[0-9.]+)', line)
            runtime = re.search(r',info,cpu,runtime:([^,]+),nthr:([0-9]+)', line)
            if version:
                info['onednn'] = version.group(1)
            elif runtime:
                info['runtime'], info['nthr'] = runtime.group(1), int(runtime.group(2))
        elif line.startswith('onednn_verbose') and ',exec,' in line and case != 'skip':
            # onednn_verbose,v1,primitive,exec,cpu,KIND,IMPL,PROP,memory,attrs,alg,problem,MS
            fields = line.split(',')
            if case is None or len(fields) < 8 or fields[5] != 'convolution':
                continue
            attrs = fields[9] if len(fields) > 12 else ''  # e.g. attr-scratchpad:user
            impl = f'{fields[6]} ({ONEDNN_PROP.get(fields[7], fields[7])}' + (
                f', {attrs})' if attrs else ')')
            kernels.setdefault(case, {}).setdefault(impl, []).append(float(fields[-1]) / 1000)
    if times is None:
        raise RuntimeError('worker printed no RESULT line')
    return times, kernels, info


def run_worker(args, kind, precision):
    cmd = [sys.executable, '-m', 'bench.conv_ops', '--worker', kind, '--precision', precision,
           '--batch', str(args.batch), '--stages', args.stages, '--repeats', str(args.repeats),
           '--warmup', str(args.warmup), '--threads', str(args.threads)]
    env = dict(os.environ, ONEDNN_VERBOSE='1')
    if kind == 'torch' and args.torch_site:
        env['PYTHONPATH'] = os.pathsep.join(
            [os.path.abspath(args.torch_site)] + [p for p in [env.get('PYTHONPATH')] if p])
    proc = subprocess.run(cmd, cwd=bench.ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise SystemExit(f'conv_ops: the {kind} worker failed: '
                         f'{lines[-1] if lines else f"exit code {proc.returncode}"}')
    return parse_worker_output(proc.stdout)


def compare(args, precision):
    calls = {'tf': {}, 'torch': {}}
    kernels = {'tf': {}, 'torch': {}}
    libraries = {}
    for i in range(args.rounds):
        for kind in (('tf', 'torch') if i % 2 == 0 else ('torch', 'tf')):
            times, impls, libraries[kind] = run_worker(args, kind, precision)
            for case, runs in times.items():
                calls[kind].setdefault(case, []).extend(runs)
            for case, by_impl in impls.items():
                for impl, runs in by_impl.items():
                    kernels[kind].setdefault(case, {}).setdefault(impl, []).extend(runs)
    print(f'{precision}: ' + '; '.join(
        f"{name} {libraries[kind].get('version')} runs oneDNN {libraries[kind].get('onednn', '?')} "
        f"on {libraries[kind].get('runtime', '?')} with {libraries[kind].get('nthr', '?')} threads"
        for kind, name in (('tf', 'TF'), ('torch', 'torch'))), flush=True)
    rows = []
    for case in calls['tf']:
        row = {'case': case, 'precision': precision, 'libraries': libraries}
        for kind in ('tf', 'torch'):
            impls = kernels[kind].get(case, {})
            row[kind] = {'call_ms': 1000 * bench.median(calls[kind][case]),
                         'kernel_ms': {impl: 1000 * bench.median(runs)
                                       for impl, runs in impls.items()}}
        row['tf_over_torch_call'] = row['tf']['call_ms'] / row['torch']['call_ms']
        tf_kernel = sum(row['tf']['kernel_ms'].values())
        torch_kernel = sum(row['torch']['kernel_ms'].values())
        row['tf_over_torch_kernel'] = tf_kernel / torch_kernel if torch_kernel else None
        rows.append(row)
        impl_text = ' | '.join(sorted(set(row['tf']['kernel_ms']) | set(row['torch']['kernel_ms'])))
        kernel_ratio = (f"{row['tf_over_torch_kernel']:.2f}" if row['tf_over_torch_kernel']
                        else 'n/a')
        print(f"{precision} {case:22s} TF {row['tf']['call_ms']:7.1f} ms  torch "
              f"{row['torch']['call_ms']:7.1f} ms  TF/torch call {row['tf_over_torch_call']:.2f}, "
              f"oneDNN kernel {kernel_ratio}  [{impl_text}]", flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        serve(args)
        return
    stages(args.stages)  # bad flags fail here, before any worker starts
    if args.threads < 1:
        raise SystemExit(f'conv_ops: --threads {args.threads} must be at least 1')
    if args.torch_site and not os.path.isdir(os.path.join(args.torch_site, 'torch')):
        raise SystemExit(f'conv_ops: --torch_site {args.torch_site!r} holds no torch package; '
                         'install one with pip install --target DIR torch==VERSION')
    for precision in args.precisions.split(','):
        if precision not in ('bf16', 'fp32'):
            raise SystemExit(f'conv_ops: unknown precision {precision!r}; use bf16 and/or fp32')
    if not args.torch_site:  # with it, only the torch worker imports torch, from there
        bench.require_torch('conv_ops')
    machine = bench.machine_info()
    bench.banner_with_torch(machine)
    start = time.time()
    rows = []
    for precision in args.precisions.split(','):
        rows += compare(args, precision)
    bench.write_results('conv_ops', 'conv_ops', rows, args, machine, start)


if __name__ == '__main__':
    main()

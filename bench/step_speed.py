"""Speed of the project's real training step (``method._train_step``), vanilla and with DC3.

For every method (and FixMatch at uratio 7 as its own row) and precision, builds the vanilla
method (``DC3Config(combined_output=0, wou=0, wol=0)``) and the DC3 method (``DC3Config()``) in one
process, pre-fetches a few batches of ``libml.data.train_inputs`` into memory (the input pipeline
is timed by bench/input_pipeline.py, not here), traces and warms both up, then times single steps
alternately (vanilla, DC3, DC3, vanilla, ...) and reports medians and the DC3 / vanilla ratio.

img/s = images through the network per step / step time, where images through the network =
labeled + unlabeled x views (Mean Teacher's extra teacher forward pass is not counted).

    python -m bench.step_speed                       # default matrix, ~15 min on 2 cores
    python -m bench.step_speed --quick               # Mean Teacher and FixMatch only, 3 steps
    python -m bench.step_speed --breakdown           # forward / backward / optimizer / EMA split
    python -m bench.step_speed --ab fused_act        # the fused BN + leaky ReLU op against TF's
    python -m bench.step_speed --ab per_subset --methods mean_teacher   # --bn_batches per_subset
    python -m bench.step_speed --fused_bn_act off    # every step with TensorFlow's kernels
    python -m bench.step_speed --profile --methods fixmatch --uratio 7   # time per op type
"""
import argparse
import gc
import os
import sys
import tempfile
import time

import bench

from libml import io_utils
from libml.errors import DC3Error

ALL_ROWS = [('fully_supervised', 1), ('pi_model', 1), ('mean_teacher', 1), ('pseudo_label', 1),
            ('fixmatch', 1), ('fixmatch', 7)]
PRECISIONS = {'fp32': 0, 'bf16': 1}
# --ab: name -> (the baseline's build settings, the experiment's). fused_act: the fused batch
# norm + leaky ReLU op against TensorFlow's kernels; per_subset: one network call per subset
# against one joint call (--bn_batches). The xla and keras_bn experiments: BENCHMARKS.md section 5.
EXPERIMENTS = {'fused_act': ({'fused_bn_act': 'off'}, {'fused_bn_act': 'on'}),
               'per_subset': ({}, {'bn_batches': 'per_subset'})}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--methods', default=','.join(bench.METHODS),
                   help='comma-separated method names (fixmatch also runs at --fixmatch_uratio)')
    p.add_argument('--precisions', default='fp32,bf16', help='comma-separated: fp32, bf16')
    p.add_argument('--variants', default='vanilla,dc3', help='vanilla, dc3 or both')
    p.add_argument('--steps', type=int, default=5, help='timed steps per configuration')
    p.add_argument('--warmup', type=int, default=1, help='untimed steps after the tracing call')
    p.add_argument('--filters', type=int, default=32)
    p.add_argument('--size', type=int, default=32, help='image size of the random dataset')
    p.add_argument('--batch', type=int, default=64, help='labeled images per step')
    p.add_argument('--uratio', type=int, default=1)
    p.add_argument('--fixmatch_uratio', type=int, default=7,
                   help='extra FixMatch row at this uratio (0: none)')
    p.add_argument('--ab', choices=sorted(EXPERIMENTS),
                   help='instead of the matrix: the first method (vanilla) against a modified copy '
                        'of it, alternately: fused_act = --fused_bn_act on against off '
                        '(libml/fused_ops.py, needs g++); per_subset = --bn_batches per_subset '
                        'against joint')
    p.add_argument('--fused_bn_act', default='auto', choices=['auto', 'on', 'off'],
                   help='as the training scripts\' flag; --ab fused_act sets it itself')
    p.add_argument('--intra_threads', type=int, default=0,
                   help='tf.config.threading intra-op threads (0: TF default); experiment')
    p.add_argument('--inter_threads', type=int, default=0,
                   help='tf.config.threading inter-op threads (0: TF default); experiment')
    p.add_argument('--breakdown', action='store_true',
                   help='instead of the matrix: time forward, loss+gradient, +optimizer, '
                        'full step, EMA alone and weight decay alone for the first method')
    p.add_argument('--profile', action='store_true',
                   help='instead of the matrix: trace --steps steps of the first method with the '
                        'TensorFlow profiler and print the time per op type (self time, summed '
                        'over threads) and its share, per precision')
    p.add_argument('--top', type=int, default=15, help='op types listed by --profile')
    p.add_argument('--quick', action='store_true',
                   help='smaller matrix: mean_teacher and fixmatch (uratio 1 and 7), 3 steps')
    p.add_argument('--data_dir', default=None, help='reuse/write the random dataset here')
    p.add_argument('--out', default=os.path.join('bench', 'out', 'step_speed.json'))
    args = p.parse_args(argv)
    if args.quick:
        args.methods = 'mean_teacher,fixmatch'
        args.steps = min(args.steps, 3)
    return args


def configure_threads(intra, inter):
    import tensorflow as tf
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def dataset(args, tmp):
    from libml import records
    data_dir = args.data_dir or os.path.join(tmp, 'data')
    meta = os.path.join(records.dataset_dir(data_dir, bench.DATASET, bench.SEED), records.META_FILE)
    if os.path.exists(meta):
        info = records.load_dataset_info(data_dir, bench.DATASET, bench.SEED)
        if info.image_size == args.size:
            return info
    return bench.write_random_dataset(data_dir, size=args.size)


def prefetch(method, info, count=3, seed=0):
    """``count`` batches of the method's real input pipeline, held in memory."""
    from libml import data
    iterator = iter(data.train_inputs(info, method.input_config(seed)))
    batches = [next(iterator) for _ in range(count)]
    del iterator  # stops tf.data's background prefetching, which would steal CPU from the step
    gc.collect()
    return batches


def timed(fn, batch):
    """(wall seconds, CPU seconds of this process) of one call.

    CPU seconds are much less sensitive than wall time to other jobs on a shared machine: when
    another process takes a core, the step's wall time grows but its CPU time barely does.
    """
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(batch)
    # The step runs synchronously on CPU; reading a result makes sure it has finished.
    float(out['losses/total'].numpy() if isinstance(out, dict) else out.numpy())
    return time.perf_counter() - start, time.process_time() - cpu


def build(args, name, uratio, dc3, precision, tmp, info, **settings):
    """The method ``name`` as bench.make_method builds it; ``settings`` override its network
    settings (``fused_bn_act`` defaults to the command line's)."""
    return bench.make_method(name, info, os.path.join(tmp, 'runs'), dc3=dc3,
                             mixed_precision=PRECISIONS[precision], filters=args.filters,
                             batch=args.batch, uratio=uratio,
                             **{'fused_bn_act': args.fused_bn_act, **settings})


def time_row(args, name, uratio, precision, tmp, info):
    """Builds the row's variants, warms them up and times them alternately; one dict per variant."""
    variants = [v for v in ('vanilla', 'dc3') if v in args.variants.split(',')]
    methods = {v: build(args, name, uratio, v == 'dc3', precision, tmp, info) for v in variants}
    # Each variant reads its own pipeline (the same seed, so the same images): the supervised
    # baseline reads unlabeled views only with DC3.
    batches = {v: prefetch(method, info) for v, method in methods.items()}
    trace_s, times, cpu = {}, {v: [] for v in variants}, {v: [] for v in variants}
    for v, method in methods.items():
        trace_s[v] = timed(method._train_step, batches[v][0])[0]
        for i in range(args.warmup):
            timed(method._train_step, batches[v][(i + 1) % len(batches[v])])
    load = os.getloadavg()[0]
    for i in range(args.steps):
        # Alternate the order every round (A B, B A, ...) so drift in machine load cancels.
        order = variants if i % 2 == 0 else variants[::-1]
        for v in order:
            wall, cpu_s = timed(methods[v]._train_step, batches[v][i % len(batches[v])])
            times[v].append(wall)
            cpu[v].append(cpu_s)
    rows = []
    for v, method in methods.items():
        images, labeled = bench.images_per_step(method)
        step = bench.median(times[v])
        rows.append({'method': name, 'uratio': uratio, 'precision': precision, 'variant': v,
                     'policy': method.precision, 'images_per_step': images,
                     'labeled_per_step': labeled, 'median_step_s': step,
                     'img_per_s': images / step, 'labeled_img_per_s': labeled / step,
                     'best_img_per_s': images / min(times[v]),
                     'median_cpu_s': bench.median(cpu[v]),
                     'img_per_cpu_s': images / bench.median(cpu[v]),
                     'loadavg_1min_before': load, 'trace_s': trace_s[v],
                     'step_times_s': times[v], 'step_cpu_s': cpu[v]})
    del methods, batches
    gc.collect()
    return rows


def run_matrix(args, tmp, info):
    names = args.methods.split(',')
    rows_spec = [(n, args.uratio) for n in names]
    if 'fixmatch' in names and args.fixmatch_uratio and args.fixmatch_uratio != args.uratio:
        rows_spec.append(('fixmatch', args.fixmatch_uratio))
    results, ratios = [], []
    for precision in args.precisions.split(','):
        for name, uratio in rows_spec:
            start = time.time()
            rows = time_row(args, name, uratio, precision, tmp, info)
            results.extend(rows)
            by_variant = {r['variant']: r for r in rows}
            line = ' | '.join(f"{v} {r['median_step_s']:.3f} s {r['img_per_s']:.1f} img/s "
                              f"({r['labeled_img_per_s']:.1f} labeled, best "
                              f"{r['best_img_per_s']:.1f}, {r['median_cpu_s']:.2f} cpu-s)"
                              for v, r in by_variant.items())
            if len(by_variant) == 2:
                a, b = by_variant['vanilla'], by_variant['dc3']
                paired = [d / v for v, d in zip(a['step_times_s'], b['step_times_s'])]
                ratio = {'method': name, 'uratio': uratio, 'precision': precision,
                         'dc3_over_vanilla': b['median_step_s'] / a['median_step_s'],
                         'paired_median': bench.median(paired),
                         'best_ratio': min(b['step_times_s']) / min(a['step_times_s']),
                         'cpu_ratio': b['median_cpu_s'] / a['median_cpu_s']}
                ratios.append(ratio)
                line += (f" | DC3/vanilla wall {ratio['dc3_over_vanilla']:.3f}, best "
                         f"{ratio['best_ratio']:.3f}, cpu {ratio['cpu_ratio']:.3f}")
            print(f'{name:16s} u{uratio} {precision}: {line}  [{time.time() - start:.0f} s]',
                  flush=True)
    return {'rows': results, 'dc3_ratios': ratios}


def run_ab(args, tmp, info):
    """Baseline step against a modified step, alternately, per precision."""
    name, out = args.methods.split(',')[0], []
    for precision in args.precisions.split(','):
        baseline, experiment = EXPERIMENTS[args.ab]
        methods = {'baseline': build(args, name, args.uratio, False, precision, tmp, info,
                                     **baseline),
                   args.ab: build(args, name, args.uratio, False, precision, tmp, info,
                                  **experiment)}
        batches = prefetch(methods['baseline'], info)
        for method in methods.values():
            for i in range(1 + args.warmup):
                timed(method._train_step, batches[i % len(batches)])
        times, cpu = {k: [] for k in methods}, {k: [] for k in methods}
        for i in range(args.steps):
            for k in (list(methods) if i % 2 == 0 else list(methods)[::-1]):
                wall, cpu_s = timed(methods[k]._train_step, batches[i % len(batches)])
                times[k].append(wall)
                cpu[k].append(cpu_s)
        images, _ = bench.images_per_step(methods['baseline'])
        row = {'method': name, 'uratio': args.uratio, 'precision': precision,
               'experiment': args.ab, 'images_per_step': images,
               'img_per_s': {k: images / bench.median(t) for k, t in times.items()},
               'best_img_per_s': {k: images / min(t) for k, t in times.items()},
               # > 1: the experiment's step is slower than the project's.
               'time_ratio': bench.median(times[args.ab]) / bench.median(times['baseline']),
               'best_time_ratio': min(times[args.ab]) / min(times['baseline']),
               'cpu_time_ratio': bench.median(cpu[args.ab]) / bench.median(cpu['baseline']),
               'times_s': times, 'cpu_s': cpu}
        out.append(row)
        print(f"{name} u{args.uratio} {precision}: baseline {row['img_per_s']['baseline']:.1f} "
              f"img/s, {args.ab} {row['img_per_s'][args.ab]:.1f} img/s; step time "
              f"{args.ab}/baseline: median {row['time_ratio']:.2f}, best "
              f"{row['best_time_ratio']:.2f}, CPU {row['cpu_time_ratio']:.2f}", flush=True)
        del methods, batches
        gc.collect()
    return {'ab': out}


def run_breakdown(args, tmp, info):
    """Times the parts of one method's step, interleaved: where does the time go?"""
    name = args.methods.split(',')[0]
    return {'breakdown': [breakdown_one(args, name, precision, tmp, info)
                          for precision in args.precisions.split(',')]}


def single_variant(args):
    """--breakdown and --profile look at one variant: DC3 only if it alone is asked for."""
    variants = args.variants.split(',')
    return 'dc3' in variants and 'vanilla' not in variants


def breakdown_one(args, name, precision, tmp, info):
    import tensorflow as tf

    from libml import losses
    method = build(args, name, args.uratio, single_variant(args), precision, tmp, info)
    variables = method.model.trainable_variables

    def forward(batch):
        outputs = method.forward(batch)
        return tf.add_n([tf.reduce_sum(v) for v in outputs.labeled.values()])

    def loss(batch):
        return method.loss(batch)[0]

    def loss_and_gradient(batch):
        with tf.GradientTape() as tape:
            total = method.loss(batch)[0]
        grads = tape.gradient(total, variables)
        return total + 0.0 * tf.add_n([tf.reduce_sum(g[..., :1]) for g in grads])

    def without_ema(batch):
        with tf.GradientTape() as tape:
            total = method.loss(batch)[0]
        method.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return total

    def ema_only(batch):
        method.update_ema()
        return tf.constant(0.0)

    def weight_decay_only(batch):
        return losses.l2_regularization(variables)

    parts = {'forward (student)': forward, 'loss (all forwards + losses + wd)': loss,
             'loss + gradient': loss_and_gradient, '+ optimizer (no EMA)': without_ema,
             'full _train_step': None, 'EMA update alone': ema_only,
             'weight decay term alone': weight_decay_only}
    fns = {k: (method._train_step if f is None else tf.function(f)) for k, f in parts.items()}
    batches = prefetch(method, info)
    for fn in fns.values():
        for i in range(1 + args.warmup):
            timed(fn, batches[i % len(batches)])
    times, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for i in range(args.steps):
        for k, fn in fns.items():
            wall, cpu_s = timed(fn, batches[i % len(batches)])
            times[k].append(wall)
            cpu[k].append(cpu_s)
    images, _ = bench.images_per_step(method)
    print(f'{name} u{args.uratio} {precision} ({method.precision}), {images} images/step: '
          'median wall / best wall / median CPU', flush=True)
    for k, t in times.items():
        print(f'  {k:36s} {1000 * bench.median(t):8.1f} / {1000 * min(t):8.1f} / '
              f'{1000 * bench.median(cpu[k]):8.1f} ms', flush=True)
    return {'method': name, 'precision': precision, 'images_per_step': images,
            'median_s': {k: bench.median(t) for k, t in times.items()},
            'best_s': {k: min(t) for k, t in times.items()},
            'median_cpu_s': {k: bench.median(t) for k, t in cpu.items()},
            'times_s': times, 'cpu_s': cpu}


def op_self_times(xplane_path):
    """Self time (seconds) per TensorFlow op type in a profiler trace, summed over threads.

    Op executions appear on the host plane's executor threads as events named ``<op>:<type>``;
    a function-call op contains the ops it runs, so each event's time minus that of the op
    events nested in it (on the same thread) is its self time.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    with open(xplane_path, 'rb') as f:
        space.ParseFromString(f.read())
    totals = {}
    for plane in space.planes:
        if not plane.name.startswith('/host:CPU'):
            continue
        for line in plane.lines:
            events = []
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ':' in name and '::' not in name and ' ' not in name:
                    events.append((event.offset_ps, event.offset_ps + event.duration_ps,
                                   name.rsplit(':', 1)[1]))
            events.sort(key=lambda e: (e[0], -e[1]))  # an enclosing event before its children
            stack = []  # open events: [end, op type, duration, time of the op events inside]
            for start, end, op_type in events:
                while stack and stack[-1][0] <= start:
                    _close_event(stack, totals)
                stack.append([end, op_type, end - start, 0])
            while stack:
                _close_event(stack, totals)
    return {op_type: ps * 1e-12 for op_type, ps in totals.items()}


def _close_event(stack, totals):
    """Pops the innermost open event: adds its self time, and its time to its parent's nested."""
    _, op_type, duration, nested = stack.pop()
    totals[op_type] = totals.get(op_type, 0) + duration - nested
    if stack:
        stack[-1][3] += duration


def run_profile(args, tmp, info):
    """The first method's step under the TensorFlow profiler: time per op type."""
    import glob

    import tensorflow as tf
    name = args.methods.split(',')[0]
    out = []
    for precision in args.precisions.split(','):
        method = build(args, name, args.uratio, single_variant(args), precision, tmp, info)
        batches = prefetch(method, info)
        for i in range(1 + args.warmup):
            timed(method._train_step, batches[i % len(batches)])
        logdir = os.path.join(tmp, f'profile_{precision}')
        tf.profiler.experimental.start(logdir)
        for i in range(args.steps):
            timed(method._train_step, batches[i % len(batches)])
        tf.profiler.experimental.stop()
        traces = glob.glob(os.path.join(logdir, 'plugins', 'profile', '*', '*.xplane.pb'))
        per_type = {k: v / args.steps for k, v in op_self_times(sorted(traces)[-1]).items()}
        total = sum(per_type.values())
        ranked = sorted(per_type.items(), key=lambda kv: -kv[1])
        print(f'{name} u{args.uratio} {precision} ({method.precision}): op self time per step '
              f'{1000 * total:.1f} ms (summed over threads)', flush=True)
        for op_type, seconds in ranked[:args.top]:
            print(f'  {op_type:40s} {1000 * seconds:8.2f} ms  {100 * seconds / total:5.1f} %',
                  flush=True)
        print('  by group (as python -m bench.torch_peer --profile groups PyTorch\'s ops):')
        groups = bench.print_op_groups(per_type, indent='    ')
        out.append({'method': name, 'uratio': args.uratio, 'precision': precision,
                    'policy': method.precision, 'op_self_s_per_step': dict(ranked),
                    'group_self_s_per_step': groups, 'total_s_per_step': total})
        del method, batches
        gc.collect()
    return {'profile': out}


def main(argv=None):
    args = parse_args(argv)
    configure_threads(args.intra_threads, args.inter_threads)
    machine = bench.machine_info()
    print(f"{machine['cpu']}, {machine['cores']} cores, tensorflow "
          f"{machine['versions']['tensorflow']}, {machine['date']}", flush=True)
    print('img/s = (labeled + unlabeled x views) images through the network per step / step time',
          flush=True)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        info = dataset(args, tmp)
        if args.ab:
            try:
                result = run_ab(args, tmp, info)
            except DC3Error as err:  # e.g. no compiler for --ab fused_act
                sys.exit(f'step_speed: {err}')
        elif args.breakdown:
            result = run_breakdown(args, tmp, info)
        elif args.profile:
            result = run_profile(args, tmp, info)
        else:
            result = run_matrix(args, tmp, info)
    result.update({'command': 'python -m bench.step_speed ' + ' '.join(sys.argv[1:]),
                   'machine': machine, 'args': vars(args), 'wall_s': time.time() - start,
                   'img_per_s_definition': 'images through the network per step (labeled + '
                   'unlabeled x views; Mean Teacher teacher pass not counted) / median step time'})
    io_utils.write_json(args.out, result)  # atomic: no half-written results
    print(f'wrote {args.out} ({time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()

"""Benchmarks of the project's real training step, input pipeline and memory (not part of training).

Shared helpers: a random dataset written through the project's record schema, the five methods
built in-process without flags, and a description of the machine for the result files.
"""
import datetime
import importlib
import importlib.metadata
import os
import platform
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

DATASET = 'benchrand'
SEED = 1
NUM_CLASSES = 10
COUNTS = {'train': 256, 'unlabeled': 512, 'val': 64}

# The paper's five methods with the augmentation their scripts default to.
METHODS = ('fully_supervised', 'pi_model', 'mean_teacher', 'pseudo_label', 'fixmatch')


def write_random_dataset(data_dir, size=32, counts=None, name=DATASET, seed=SEED,
                         num_classes=NUM_CLASSES):
    """Random uint8 images with random labels in the project's record format; returns its info.

    Every third image gets a soft label (0.6 / 0.4) so the data has the schema's full shape. The
    content is noise: only speed and memory are measured on it.
    """
    from libml import records
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (counts or COUNTS).items():
        labels = rng.integers(0, num_classes, n)
        soft = np.eye(num_classes)[labels]
        ambiguous = np.arange(n) % 3 == 0
        soft[ambiguous] = (0.6 * soft[ambiguous]
                           + 0.4 * np.eye(num_classes)[(labels[ambiguous] + 1) % num_classes])
        splits[split] = (rng.integers(0, 256, (n, size, size, 3), np.uint8), labels, soft)
    return records.write_arrays(data_dir, name, seed, [f'c{i}' for i in range(num_classes)],
                                splits, source='random')


def method_class(name):
    from libml import methods
    return methods.method_class(name)


def make_method(name, info, train_dir, dc3=False, mixed_precision=0, filters=32, repeat=4,
                scales=0, batch=64, uratio=1, augment=None, fused_bn_act='auto',
                bn_batches='joint'):
    """One method built as its script builds it (``libml.methods.build``, its hyperparameters and
    augmentation at the script's defaults), with DC3 composed in when ``dc3``.

    ``dc3=False`` is the vanilla method; ``dc3=True`` is DC3 with its defaults. ``fused_bn_act``
    and ``bn_batches`` as the scripts' flags (default auto, joint).
    """
    from libml import dc3 as dc3_lib
    from libml import methods, models, trainer
    defaults = methods.flag_defaults(name)
    train_config = trainer.TrainConfig(
        train_dir=str(train_dir), dataset=f'{info.name}.{info.seed}@-1-10', batch=batch,
        uratio=uratio, augment=augment or defaults['augment'], mixed_precision=mixed_precision)
    model_config = models.ModelConfig(filters=filters, scales=scales, repeat=repeat,
                                      fused_bn_act=fused_bn_act, bn_batches=bn_batches)
    return methods.build(method_class(name), info, -1, train_config, model_config,
                         dc3_lib.DC3Config() if dc3 else None, **methods.params_defaults(name))


def images_per_step(method):
    """(images through the network per step, labeled images per step).

    Images through the network = labeled + unlabeled x the views the student's pass carries (one
    forward and backward pass each): every view, but Mean Teacher's student sees only the second
    (since 2026-12-04; its teacher's forward pass on the first view is not counted).
    """
    cfg = method.train_config
    views = 1 if method.method_name == 'MeanTeacher' else method.unlabeled_views
    return cfg.batch + cfg.batch * cfg.uratio * views, cfg.batch


def cpuinfo():
    """Vendor, family, model name, flags and clock (MHz) of the first processor in /proc/cpuinfo
    (defaults where it cannot be read)."""
    info = {'vendor': '', 'family': 0, 'model_name': 'unknown', 'flags': set(), 'mhz': 0.0}
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                key, _, value = (s.strip() for s in line.partition(':'))
                if key == 'vendor_id' and not info['vendor']:
                    info['vendor'] = value
                elif key == 'cpu family' and not info['family']:
                    info['family'] = int(value)
                elif key == 'model name' and info['model_name'] == 'unknown':
                    info['model_name'] = value
                elif key == 'flags' and not info['flags']:
                    info['flags'] = set(value.split())
                elif key == 'cpu MHz' and not info['mhz']:
                    info['mhz'] = float(value)
    except OSError:
        pass
    return info


def machine_info():
    """CPU model, core count, library versions and the date, for every result file."""
    info = cpuinfo()
    cpu, flags = info['model_name'], info['flags']
    versions = {}
    for package in ('tensorflow', 'keras', 'numpy', 'torch'):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'cpu': cpu, 'cores': os.cpu_count(),
        'isa': sorted(flags & {'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'}),
        'python': platform.python_version(), 'versions': versions,
        'loadavg_at_start': os.getloadavg(),
    }


# Op groups for comparing profiles across frameworks. A name is lower-cased and stripped of '_'
# before matching, so TF's `_MklNativeConv2DBackpropFilter` and PyTorch's
# `aten::convolution_backward` both land in 'convolution'. First match wins.
OP_GROUPS = (
    ('convolution', lambda key: 'conv' in key),
    ('batch norm', lambda key: 'batchnorm' in key),
    ('leaky ReLU', lambda key: 'leakyrelu' in key),
    # Residual adds and gradient sums; not `aten::addmm` (a matmul) nor `AssignAddVariableOp`.
    ('adds', lambda key: key in ('add', 'addv2', 'addn', 'aten::add')),
)


def op_groups(per_op):
    """{op name: seconds} from a profiler -> {group: seconds}, groups of OP_GROUPS plus 'other'."""
    groups = dict.fromkeys([name for name, _ in OP_GROUPS] + ['other'], 0.0)
    for op, seconds in per_op.items():
        key = op.lower().replace('_', '')
        group = next((name for name, match in OP_GROUPS if match(key)), 'other')
        groups[group] += seconds
    return groups


def print_op_groups(per_op, indent='  '):
    groups = op_groups(per_op)
    total = sum(groups.values())
    for name, seconds in groups.items():
        print(f'{indent}{name:14s} {1000 * seconds:9.1f} ms  {100 * seconds / total:5.1f} %',
              flush=True)
    return groups


def banner_with_torch(machine):
    """The first line of the scripts that compare against PyTorch."""
    versions = machine['versions']
    print(f"{machine['cpu']}, {machine['cores']} cores, tensorflow {versions['tensorflow']}, "
          f"torch {versions['torch']}, {machine['date']}", flush=True)


def require_torch(prog):
    """Exits with one line when the benchmark-only PyTorch is missing."""
    import importlib.util
    if importlib.util.find_spec('torch') is None:
        sys.exit(f'{prog}: PyTorch is not installed (benchmark-only); '
                 'pip install -r bench/requirements.txt')


def median(values):
    return float(np.median(np.asarray(values, dtype=np.float64)))


def write_results(script, key, rows, args, machine, start):
    """Writes ``{key: rows, machine, args, command, wall_s}`` to ``args.out`` atomically (no
    half-written results) and says so."""
    import sys
    import time

    from libml import io_utils
    result = {key: rows, 'machine': machine, 'args': vars(args),
              'command': f'python -m bench.{script} ' + ' '.join(sys.argv[1:]),
              'wall_s': time.time() - start}
    io_utils.write_json(args.out, result)
    print(f'wrote {args.out} ({time.time() - start:.0f} s)')

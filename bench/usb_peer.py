"""USB's own FixMatch and MeanTeacher training steps on the CPU, timed against the project's (#21).

BENCHMARK-ONLY. USB (microsoft/Semi-supervised-learning, the `semilearn` 0.3.2 package) runs in a
virtual environment of its own, bench/out/venv-usb (bench/requirements-usb.txt says how to make
it); this file has two modes:

* worker, with the venv's python (imports neither TensorFlow nor libml)::

    bench/out/venv-usb/bin/python -m bench.usb_peer --worker --algorithm fixmatch --uratio 7 \\
        --batch 64 --size 32 --threads 2 --precision fp32 --warmup 2

  builds USB's algorithm object (``semilearn``'s registered FixMatch / MeanTeacher class, its
  ``wrn_28_2`` from ``get_net_builder``, its optimizer, scheduler, EMA and hooks, configured by
  USB's own ``get_config`` with the values of USB's config/classic_cv/*_cifar10_40_0.yaml) and
  times what USB's training loop (``AlgorithmBase.train``) does per iteration::

      call_hook('before_train_step')
      out_dict, log_dict = train_step(**process_batch(**data_lb, **data_ulb))
      call_hook('after_train_step')   # ParamUpdateHook: backward, SGD step, scheduler, zero_grad;
      it += 1                         # EMAHook: EMA update, ema_model reloaded; eval/ckpt/log checks

  on random CPU tensors of the loaders' shapes (data_lb: idx_lb, x_lb [B,3,S,S], y_lb; data_ulb:
  idx_ulb, x_ulb_w, x_ulb_s [B*U,3,S,S]). Then it speaks bench/torch_peer.py's worker protocol.

  What is not USB's (USB trains on GPUs only: its send_model_cuda raises without CUDA):
  ``set_dataset`` returns None (no CIFAR-10 download; AlgorithmBase then builds no loaders, as it
  does for a None dataset), ``process_batch`` is USB's minus the ``.cuda(gpu)`` copy, TimerHook is
  unregistered (it records torch.cuda.Event timings), eval / log intervals lie past the timed
  steps (those hooks still run their checks), the logger writes to stderr, and placeholder modules
  stand in for wandb, aim, transformers, torchaudio, timm, skimage and torch.utils.tensorboard
  (imported by ``import semilearn``, never run by this step). Everything inside the step is USB's
  code.

  bf16: USB's ``amp`` switch is torch.cuda.amp (autocast + GradScaler), a no-op on the CPU, so
  ``--precision bf16`` keeps amp off and wraps ``train_step`` (forward and losses, where USB's
  ``amp_cm`` sits) in ``torch.autocast('cpu', dtype=torch.bfloat16)``; backward runs in the hook
  outside it, as with USB's amp. fp32 is USB as configured.

  images_per_step (bench/README.md "Definitions": images with a forward and backward pass):
  FixMatch B + 2·B·U (labeled, weak, strong in one concatenated batch, use_cat); MeanTeacher
  B + B·U (labeled and the strong view; its teacher, the EMA weights on the weak view without
  gradient, is not counted, as Mean Teacher's teacher pass is not counted for ours). Ours counts
  the same since 2026-12-04, when our Mean Teacher's student stopped carrying the first view (it
  counted B + 2·B·U before).

* driver, with the project's python::

    python -m bench.usb_peer --vs_ours [--configs fixmatch_u7,mean_teacher] [--precisions fp32]
        [--rounds 4] [--block 2]

  starts the project's TF worker (bench.torch_peer.Worker 'tf': the real ``method._train_step``,
  vanilla, ``--filters 32``) and a USB worker, runs blocks of steps alternately (ours, USB, USB,
  ours, ...), prints img/s, GFLOP/s, each side's share of the CPU's measured peak (bench/peak.py,
  run first) and the ratios ours / USB (median, best, per CPU-second), and writes
  bench/out/usb_peer.json.

Both networks are FixMatch's WRN-28-2: 3x3 stem of 16, three stages of four pre-activation blocks
of 32 / 64 / 128 filters, leaky ReLU 0.1, a 1x1 shortcut where the width changes, a 10-way linear
head. USB's stem convolution has a bias (16 parameters more) and its batch norm epsilon is 1e-5
(ours 1e-3); the driver prints both parameter counts.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from bench import worker_protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, 'bench', 'out', 'venv-usb', 'bin', 'python')
NUM_CLASSES = 10
# --vs_ours rows: (our method, USB algorithm, uratio)
CONFIGS = {
    'mean_teacher': ('mean_teacher', 'meanteacher', 1),
    'fixmatch_u1': ('fixmatch', 'fixmatch', 1),
    'fixmatch_u7': ('fixmatch', 'fixmatch', 7),
}
# USB's config/classic_cv/{fixmatch,meanteacher}/*_cifar10_40_0.yaml (uratio and batch from flags).
USB_CIFAR10 = {
    'fixmatch': {'hard_label': True, 'T': 0.5, 'p_cutoff': 0.95, 'ulb_loss_ratio': 1.0,
                 'use_cat': True},
    'meanteacher': {'ulb_loss_ratio': 50.0, 'unsup_warm_up': 0.4},
}
USB_COMMON = {'epoch': 1024, 'num_train_iter': 1048576, 'num_labels': 40, 'eval_batch_size': 256,
              'ema_m': 0.999, 'crop_ratio': 0.875, 'img_size': 32, 'optim': 'SGD', 'lr': 0.03,
              'momentum': 0.9, 'weight_decay': 5e-4, 'layer_decay': 1.0, 'amp': False,
              'clip_grad': 0.0, 'net': 'wrn_28_2', 'net_from_name': False, 'dataset': 'cifar10',
              'num_classes': NUM_CLASSES, 'seed': 0, 'world_size': 1, 'rank': 0, 'gpu': None,
              'multiprocessing_distributed': False, 'distributed': False, 'resume': False,
              'use_wandb': False, 'use_aim': False, 'use_tensorboard': False,
              # Past any timed step: EvaluationHook / CheckpointHook / LoggingHook check and skip.
              'num_eval_iter': 1048576, 'num_log_iter': 1048576}
# Imported by `import semilearn` (logging hooks and TBLog, NLP / audio / ViT nets, datasets), not
# installed in the venv (bench/requirements-usb.txt) and never called by the wrn_28_2 step.
# torch.utils.tensorboard needs the tensorboard package; USB uses it only with use_tensorboard.
PLACEHOLDERS = ('wandb', 'aim', 'transformers', 'torchaudio', 'timm', 'skimage',
                'torch.utils.tensorboard')
_TORCHVISION_LIB = None  # the schemas torchvision_without_ops declares, kept alive


# ---------------------------------------------------------------------------------------------
# FLOPs and parameters of the network (pure Python: used by the driver and the worker)
# ---------------------------------------------------------------------------------------------

def wrn_forward(size=32, filters=32, scales=3, repeat=4, stem=16, classes=NUM_CLASSES,
                stem_bias=False):
    """(forward FLOPs per image, trainable parameters) of FixMatch's WRN (wrn_28_2 at filters=32).

    FLOPs = 2 x the multiply-adds of the convolutions and the linear head ('same' padding, output
    positions x kernel area x input channels x output channels); batch norm, activations, pooling,
    losses and the optimizer are not counted (under 2 % of the convolutions here). Parameters:
    convolution kernels, batch-norm gamma and beta, head weights and bias, and the stem bias when
    ``stem_bias`` (USB's wrn_28_2 has one, ours not).
    """
    macs = size * size * 9 * 3 * stem
    params = 9 * 3 * stem + (stem if stem_bias else 0)
    cin = stem
    for scale in range(scales):
        f, res = filters << scale, size >> scale
        for block in range(repeat):
            c = cin if block == 0 else f
            macs += res * res * 9 * (c * f + f * f)
            params += 9 * (c * f + f * f) + 2 * (c + f)  # two convolutions, bn1(c), bn2(f)
            if c != f:
                macs += res * res * c * f
                params += c * f
        cin = f
    macs += cin * classes
    params += 2 * cin + cin * classes + classes  # final batch norm, head
    return 2 * macs, params


def step_flops(kind, batch, uratio, size=32, filters=32):
    """FLOPs of one training step: passes with backward count 3x the forward (backward = input
    gradient + weight gradient, each about the forward's), forward-only passes (Mean Teacher's
    teacher) 1x. ``kind``: 'ours_fixmatch' / 'usb_fixmatch' (B + 2BU trained), 'ours_mean_teacher'
    / 'usb_meanteacher' (B + BU trained: labeled and second / strong view; teacher on the first /
    weak view, BU).
    """
    forward, _ = wrn_forward(size, filters)
    trained, teacher = {
        'ours_fixmatch': (batch + 2 * batch * uratio, 0),
        'usb_fixmatch': (batch + 2 * batch * uratio, 0),
        'ours_mean_teacher': (batch + batch * uratio, batch * uratio),
        'usb_meanteacher': (batch + batch * uratio, batch * uratio),
    }[kind]
    return forward * (3 * trained + teacher)


# ---------------------------------------------------------------------------------------------
# The USB worker (venv python; no TensorFlow, no libml)
# ---------------------------------------------------------------------------------------------

def install_placeholders(names=PLACEHOLDERS):
    """Makes ``import name`` / ``from name.sub import X`` succeed for ``names`` (dotted names
    allowed) with empty modules: every attribute is a placeholder class that raises when
    instantiated."""
    import importlib.abc
    import importlib.machinery
    import types

    def placeholder(qualname):
        def fail(*args, **kwargs):
            raise RuntimeError(f'{qualname} is a placeholder (bench/usb_peer.py): not installed')
        return type(qualname.rsplit('.', 1)[-1], (), {'__init__': fail, '__call__': fail})

    class Module(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith('__'):
                raise AttributeError(attr)
            value = placeholder(f'{self.__name__}.{attr}')
            setattr(self, attr, value)
            return value

    class PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            if any(fullname == n or fullname.startswith(n + '.') for n in names):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            return Module(spec.name)

        def exec_module(self, module):
            module.__path__ = []

    if not any(type(f).__name__ == 'PlaceholderFinder' for f in sys.meta_path):
        sys.meta_path.insert(0, PlaceholderFinder())


def torchvision_without_ops():
    """Lets torchvision 0.28 import when its C++ ops do not load (PyPI's CUDA build next to the
    CPU torch): it registers a fake kernel for torchvision::nms / qnms unconditionally, so the two
    schemas are declared. Returns whether the ops loaded; USB's step uses none of them."""
    import glob
    import importlib.util

    import torch
    global _TORCHVISION_LIB  # pylint: disable=global-statement
    if _TORCHVISION_LIB is not None:
        return False
    spec = importlib.util.find_spec('torchvision')
    for path in glob.glob(os.path.join(spec.submodule_search_locations[0], '_C*.so')):
        try:
            torch.ops.load_library(path)
            return True
        except OSError:
            pass
    _TORCHVISION_LIB = torch.library.Library('torchvision', 'DEF')
    _TORCHVISION_LIB.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _TORCHVISION_LIB.define('qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor')
    return False


def build_usb(args):
    """USB's algorithm object and one training iteration of its loop, on random CPU batches."""
    import collections
    import contextlib
    import importlib.metadata
    import inspect
    import types

    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    install_placeholders()
    torchvision_ops = torchvision_without_ops()
    from semilearn.core.hooks import Hook
    from semilearn.core.utils import ALGORITHMS, get_net_builder
    from semilearn.lighting import get_config

    config = get_config({**USB_COMMON, **USB_CIFAR10[args.algorithm],
                         'algorithm': args.algorithm, 'batch_size': args.batch,
                         'uratio': args.uratio, 'img_size': args.size,
                         'save_name': f'bench_{args.algorithm}', 'save_dir': '/nonexistent'})
    usb_class = ALGORITHMS[args.algorithm]

    class OnCpu(usb_class):
        def set_dataset(self):
            return None  # no download; AlgorithmBase.set_data_loader then returns None

        def process_batch(self, input_args=None, **kwargs):
            # AlgorithmBase.process_batch without `.cuda(self.gpu)`.
            if input_args is None:
                input_args = list(inspect.signature(self.train_step).parameters.keys())
            return {arg: var for arg, var in kwargs.items()
                    if arg in input_args and var is not None}

    logger = types.SimpleNamespace(info=lambda *a: print(*a, file=sys.stderr, flush=True))
    algorithm = OnCpu(args=config, net_builder=get_net_builder(config.net, config.net_from_name),
                      tb_log=None, logger=logger)
    algorithm._hooks = [h for h in algorithm._hooks if h.name != 'TimerHook']  # CUDA events
    algorithm.hooks_dict = collections.OrderedDict((h.name, h) for h in algorithm._hooks)
    algorithm.model.train()
    algorithm.call_hook('before_run')  # EMAHook: the EMA shadow of the weights

    labeled, unlabeled = args.batch, args.batch * args.uratio
    gen = torch.Generator().manual_seed(0)

    def images(n):
        return torch.randn(n, 3, args.size, args.size, generator=gen)

    data = [({'idx_lb': torch.arange(labeled), 'x_lb': images(labeled),
              'y_lb': torch.randint(0, NUM_CLASSES, (labeled,), generator=gen)},
             {'idx_ulb': torch.arange(unlabeled), 'x_ulb_w': images(unlabeled),
              'x_ulb_s': images(unlabeled)}) for _ in range(3)]
    autocast = ((lambda: torch.autocast('cpu', dtype=torch.bfloat16))
                if args.precision == 'bf16' else contextlib.nullcontext)

    def step(index):
        data_lb, data_ulb = data[index % len(data)]
        algorithm.call_hook('before_train_step')
        with autocast():
            algorithm.out_dict, algorithm.log_dict = algorithm.train_step(
                **algorithm.process_batch(**data_lb, **data_ulb))
        algorithm.call_hook('after_train_step')
        algorithm.it += 1

    trained = labeled + (2 * unlabeled if args.algorithm == 'fixmatch' else unlabeled)
    versions = {p: importlib.metadata.version(p) for p in ('semilearn', 'torch', 'torchvision')}
    info = {'images_per_step': trained, 'labeled_per_step': labeled,
            'params': sum(p.numel() for p in algorithm.model.parameters()),
            'hooks_after_train_step': [h.name for h in algorithm._hooks
                                       if type(h).after_train_step is not Hook.after_train_step],
            'algorithm_class': f'{usb_class.__module__}.{usb_class.__name__}',
            'versions': versions, 'torchvision_ops_loaded': torchvision_ops,
            'torch_threads': torch.get_num_threads(),
            'amp': 'torch.autocast(cpu, bfloat16) around train_step' if args.precision == 'bf16'
                   else 'off (fp32)'}
    return step, info


def serve(args):
    """bench/torch_peer.py's worker protocol (bench/worker_protocol.py) for USB's step."""
    step, info = build_usb(args)
    worker_protocol.serve(step, info, args.warmup)


# ---------------------------------------------------------------------------------------------
# The driver (project python)
# ---------------------------------------------------------------------------------------------

def count_ours(args):
    """Prints the trainable parameters of the project's network as a JSON line (TF process)."""
    from libml import models  # noqa: F401  (TensorFlow)
    import numpy as np
    net = models.build_network('resnet', args.size, {models.CLASS_HEAD: NUM_CLASSES},
                               filters=args.filters)
    print(json.dumps({
        'trainable': int(sum(np.prod(w.shape) for w in net.trainable_weights)),
        'non_trainable': int(sum(np.prod(w.shape) for w in net.non_trainable_weights))}))


def ours_params(args):
    out = subprocess.run([sys.executable, '-m', 'bench.usb_peer', '--count_ours', '--size',
                          str(args.size), '--filters', str(args.filters)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith('{')][-1])


def lscpu_model():
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return next((line.split(':', 1)[1].strip() for line in out.splitlines()
                 if line.startswith('Model name')), None)


def usb_worker(args, algorithm, uratio, precision):
    from bench import torch_peer
    worker = torch_peer.Worker.__new__(torch_peer.Worker)
    worker.kind = 'usb'
    cmd = [args.usb_python, '-m', 'bench.usb_peer', '--worker', '--algorithm', algorithm,
           '--uratio', str(uratio), '--batch', str(args.batch), '--size', str(args.size),
           '--threads', str(args.threads), '--precision', precision, '--warmup', str(args.warmup)]
    worker.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
    worker.info = worker._read()  # pylint: disable=protected-access
    return worker


def versus_ours(args, cpu_peak=None):
    import bench
    from bench import torch_peer
    args.dc3 = False  # torch_peer.Worker's flags: the vanilla step
    results = []
    for config in args.configs.split(','):
        method, algorithm, uratio = CONFIGS[config]
        flops = {'ours': step_flops(f'ours_{method}', args.batch, uratio, args.size, args.filters),
                 'usb': step_flops(f'usb_{algorithm}', args.batch, uratio, args.size, 32)}
        for precision in args.precisions.split(','):
            start = time.time()
            workers = {'ours': torch_peer.Worker('tf', args, method, uratio, precision)}
            workers['usb'] = usb_worker(args, algorithm, uratio, precision)
            times, cpu = {k: [] for k in workers}, {k: [] for k in workers}
            load = os.getloadavg()[0]
            for i in range(args.rounds):
                for kind in (('ours', 'usb') if i % 2 == 0 else ('usb', 'ours')):
                    block = workers[kind].run(args.block)
                    times[kind] += block['times']
                    cpu[kind] += block['cpu']
            for w in workers.values():
                w.close()
            row = {'config': config, 'method': method, 'usb_algorithm': algorithm,
                   'uratio': uratio, 'precision': precision, 'loadavg_1min_before': load,
                   'usb_worker': {k: v for k, v in workers['usb'].info.items() if k != 'ready'}}
            for kind, w in workers.items():
                images, step = w.info['images_per_step'], bench.median(times[kind])
                row[kind] = {'images_per_step': images, 'median_step_s': step,
                             'img_per_s': images / step,
                             'best_img_per_s': images / min(times[kind]),
                             'img_per_cpu_s': images / bench.median(cpu[kind]),
                             'labeled_img_per_s': args.batch / step,
                             'flops_per_step': flops[kind],
                             'gflop_per_s': flops[kind] / step * 1e-9,
                             'best_gflop_per_s': flops[kind] / min(times[kind]) * 1e-9,
                             'step_times_s': times[kind], 'step_cpu_s': cpu[kind]}
            for metric in ('img_per_s', 'best_img_per_s', 'img_per_cpu_s', 'labeled_img_per_s',
                           'gflop_per_s'):
                row[f'ours_over_usb_{metric}'] = row['ours'][metric] / row['usb'][metric]
            shares = ''
            if cpu_peak:
                row['peak_gflop_per_s'] = cpu_peak['precisions'][precision]['peak_gflops']
                for kind in workers:
                    row[kind]['share_of_peak'] = row[kind]['gflop_per_s'] / row['peak_gflop_per_s']
                shares = (f", share of peak ours {row['ours']['share_of_peak']:.0%} USB "
                          f"{row['usb']['share_of_peak']:.0%}")
            results.append(row)
            o, u = row['ours'], row['usb']
            print(f"{config:12s} {precision}: ours {o['img_per_s']:6.1f} img/s (best "
                  f"{o['best_img_per_s']:.1f}, {o['images_per_step']}/step, "
                  f"{o['gflop_per_s']:.1f} GFLOP/s), USB {u['img_per_s']:6.1f} img/s (best "
                  f"{u['best_img_per_s']:.1f}, {u['images_per_step']}/step, "
                  f"{u['gflop_per_s']:.1f} GFLOP/s); ours/USB median "
                  f"{row['ours_over_usb_img_per_s']:.2f}, best "
                  f"{row['ours_over_usb_best_img_per_s']:.2f}, per CPU-second "
                  f"{row['ours_over_usb_img_per_cpu_s']:.2f}, labeled img/s "
                  f"{row['ours_over_usb_labeled_img_per_s']:.2f}, GFLOP/s "
                  f"{row['ours_over_usb_gflop_per_s']:.2f}{shares}  [{time.time() - start:.0f} s]",
                  flush=True)
    return results


def drive(args):
    import bench
    from bench import peak
    from libml import io_utils
    unknown = [c for c in args.configs.split(',') if c not in CONFIGS]
    if unknown:
        sys.exit(f'usb_peer: unknown --configs {",".join(unknown)}; use {",".join(CONFIGS)}')
    if not os.path.exists(args.usb_python):
        sys.exit(f'usb_peer: no USB venv at {args.usb_python}; make it as '
                 'bench/requirements-usb.txt says')
    start = time.time()
    machine = bench.machine_info()
    machine['lscpu_model_name'] = lscpu_model()
    forward, analytic = wrn_forward(args.size, args.filters)
    _, analytic_usb = wrn_forward(args.size, 32, stem_bias=True)
    ours = ours_params(args)
    print(f"{machine['lscpu_model_name'] or machine['cpu']}, {machine['cores']} cores, "
          f"tensorflow {machine['versions']['tensorflow']}, {machine['date']}", flush=True)
    print(f"parameters: ours (libml.models, --filters {args.filters}) {ours['trainable']:,} "
          f"trainable (WRN formula {analytic:,}); USB wrn_28_2 formula {analytic_usb:,} (worker "
          f"counts its own below); forward {forward / 1e6:.1f} MFLOP/image at {args.size} px",
          flush=True)
    try:  # the CPU's measured peak per precision, for the shares of peak (bench/peak.py)
        cpu_peak = peak.peak()
        for line in peak.describe(cpu_peak):
            print(line, flush=True)
    except (RuntimeError, OSError) as e:
        cpu_peak = None
        print(f'usb_peer: no shares of peak ({e})', flush=True)
    rows = versus_ours(args, cpu_peak)
    for row in rows[:1]:
        print(f"USB wrn_28_2 parameters (torch): {row['usb_worker']['params']:,}; "
              f"{row['usb_worker']['algorithm_class']}, semilearn "
              f"{row['usb_worker']['versions']['semilearn']}, torch "
              f"{row['usb_worker']['versions']['torch']}", flush=True)
    result = {'vs_usb': rows, 'machine': machine, 'args': vars(args), 'peak': cpu_peak,
              'params': {'ours_trainable': ours['trainable'],
                         'ours_non_trainable': ours['non_trainable'],
                         'ours_formula': analytic, 'usb_formula': analytic_usb,
                         'usb_torch': rows[0]['usb_worker']['params'] if rows else None},
              'flops_rule': ' '.join((step_flops.__doc__.split('. ``kind``')[0] + '; ' + wrn_forward
                                      .__doc__.split('\n\n')[1].split(' Parameters:')[0]).split()),
              'forward_flops_per_image': forward,
              'command': 'python -m bench.usb_peer ' + ' '.join(sys.argv[1:]),
              'wall_s': time.time() - start}
    io_utils.write_json(args.out, result)  # atomic: temp file + rename
    print(f'wrote {args.out} ({time.time() - start:.0f} s)')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--vs_ours', action='store_true',
                   help="driver: alternate the project's step and USB's; print ours/USB ratios")
    p.add_argument('--configs', default='mean_teacher,fixmatch_u7',
                   help=f'--vs_ours rows, from {",".join(CONFIGS)}')
    p.add_argument('--precisions', default='fp32')
    p.add_argument('--rounds', type=int, default=4, help='--vs_ours: alternations per row')
    p.add_argument('--block', type=int, default=2, help='--vs_ours: steps per block')
    p.add_argument('--usb_python', default=VENV_PYTHON, help="the USB venv's python")
    p.add_argument('--fused_bn_act', default='auto', choices=['auto', 'on', 'off'],
                   help="our step's --fused_bn_act (the training scripts' flag)")
    p.add_argument('--filters', type=int, default=32, help='our network width')
    p.add_argument('--out', default=os.path.join('bench', 'out', 'usb_peer.json'))
    # Shared by the driver and the worker
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (USB worker)')
    p.add_argument('--warmup', type=int, default=2)
    # Worker
    p.add_argument('--worker', action='store_true', help="USB worker (run with the venv's python)")
    p.add_argument('--algorithm', default='fixmatch', choices=sorted(USB_CIFAR10))
    p.add_argument('--uratio', type=int, default=7)
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    p.add_argument('--count_ours', action='store_true', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        serve(args)
    elif args.count_ours:
        count_ours(args)
    elif args.vs_ours:
        drive(args)
    else:
        sys.exit('usb_peer: give --vs_ours (driver) or --worker (USB venv)')


if __name__ == '__main__':
    main()

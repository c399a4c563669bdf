"""Quality parity of the vanilla methods: USB's FixMatch, MeanTeacher and PseudoLabel against ours
on the same CIFAR-10N import (issue #21, BENCHMARKS.md section 14).

BENCHMARK-ONLY. USB (the `semilearn` 0.3.2 package) runs in bench/out/venv-usb, the virtual
environment of bench/usb_peer.py (bench/requirements-usb.txt says how to make it). Modes:

* ``--run`` (project python, resumable: finished runs are skipped)::

      python -m bench.usb_quality --run [--seeds 1,2,3]
          [--methods fixmatch,mean_teacher,pseudo_label]
          [--kimg 24] [--sides usb,ours]
          [--ours_dir experiments/<folder> --ours_flags "--bn_batches per_subset"]

  for every seed s: exports data/cifar10n.s (train = the 1600 labeled images, unlabeled = 6400,
  val = 2000) to bench/out/usb_quality/cifar10n.s.npz, trains USB's algorithm on it (a worker in
  the venv; its run folder in bench/out/usb_quality/usb_runs) and ours (scripts/run_ablation.py,
  variant baseline, into experiments/cifar10n_usb_parity), stores one small JSON per finished
  run in bench/results/usb_quality/ (committed: the run folders are git-ignored and a fresh
  checkout has none; a stored run is not trained again), then writes the table (``--table``).
* ``--table``: bench/results/usb_quality/table.{md,json} (``table.<folder>`` for another
  ``--ours_dir``; it holds the ``--methods`` and ``--seeds`` asked for, so ``--run`` on a subset
  leaves a table of that subset), from the stored JSONs alone: validation accuracy and macro F1,
  per seed and mean ± standard deviation, of the EMA weights (what both codebases evaluate) and
  of the live ("raw") weights, and ours − USB paired by seed (the same data slice) with a verdict:
  ``ahead``, ``within noise`` (behind by no more than the larger of the two sides' seed-to-seed
  standard deviations) or ``behind`` (``verdict``). The raw rows compare the training; the EMA
  rows also compare the averaging, which differs at short budgets: USB's decay is a fixed 0.999
  from the first step (after 384 steps its average still holds 0.999^384 = 68 % of the initial
  weights), ours warms up as min(0.999, (1 + t) / (10 + t)) (README, Differences, row 23).
  The ``ema_bn`` and ``raw_bn`` rows evaluate the same weights after re-estimating every batch
  norm's statistics on the clean training images (labeled + unlabeled, one pass, batches of 256,
  each batch weighted equally: torch's cumulative average, ``reestimate_bn_keras`` on our side).
  At 384 steps the running averages lag the weights: our FixMatch seed 1's live weights score
  31.2 % with their running statistics and 46.3 % with re-estimated ones (2026-12-04), so the
  raw rows measure the lag as much as the training; the ``_bn`` rows compare what was learned.
  USB's EMA network borrows the live network's running statistics (its EMA averages parameters
  only); ``ema_bn`` gives both sides statistics of their own EMA weights.
* ``--worker`` (venv python; imports neither TensorFlow nor libml): one USB run.

The protocol, identical on both sides:
  * data: our TFRecords' images and training labels (``label``); validation targets are the argmax
    of the soft label, as in our metrics (libml/metrics.py). USB's unlabeled set is exactly ours
    (USB by default adds the labeled images to it; ``include_lb_to_ulb`` is a property of its own
    split function, which is not used here).
  * WRN-28-2 (ours ``--filters 32``), batch 64, uratio 1 for all three methods (FixMatch's 7 would
    cost 5x the CPU time per step), the same number of labeled images seen (``--kimg``, default 24
    = 384 steps, the Table 2 budget of BENCHMARKS.md section 7), fp32, plain cross-entropy (ours
    with ``--use_weighted_xe 0``; USB has no class weights), every other setting each codebase's
    default for CIFAR-10 (USB: config/classic_cv/<algorithm>/*_cifar10_40_0.yaml's values; lr
    0.03, SGD momentum 0.9 nesterov, weight decay 5e-4 on the kernels, EMA 0.999, the cosine decay
    lr·cos(7πt/16) over the run,
    threshold 0.95, unsupervised warm-up 0.4 of the run, Mean Teacher weight 50; ours the same
    values), except the batch-norm momentum: 0.99 on both sides (``--bn_momentum``, Keras
    convention; torch 0.01) instead of both codebases' 0.999 (torch 0.001), which after 384 steps
    leaves 0.999^384 = 68 % of the initial statistics (mean 0, variance 1) in the running averages
    that evaluation uses: USB's FixMatch evaluated at 12-14 % accuracy that way (2026-12-04).
  * USB's augmentations are its own (weak: reflect-pad crop + flip; FixMatch's strong view adds
    its RandAugment(3, 5); MeanTeacher's second view is a second weak one), normalised with its
    CIFAR-10 mean and std.

What is not USB's code in a USB run (USB trains on GPUs only): ``torch.Tensor.cuda`` is the
identity (its loop and ``evaluate`` call ``.cuda(gpu)``), ``set_dataset`` returns USB's
``BasicDataset`` over our arrays instead of downloading CIFAR-10, TimerHook (CUDA events) is
unregistered, the logger writes to stderr, and bench/usb_peer.py's placeholder modules stand in for
packages ``import semilearn`` needs but the run never calls. The loop is USB's
``AlgorithmBase.train`` with its hooks (parameter update, EMA, evaluation, checkpoint, logging).
A killed USB run restarts from its beginning (a FixMatch run takes 30-50 minutes on the 2-core
EPYC, depending on what else runs).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

from bench import usb_peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'bench', 'out', 'usb_quality')
RESULTS = os.path.join(ROOT, 'bench', 'results', 'usb_quality')
OURS_DIR = os.path.join('experiments', 'cifar10n_usb_parity')
NUM_CLASSES = 10
BATCH = 64
# ours (script module) -> (USB algorithm, our run-folder prefix)
METHODS = {'fixmatch': ('fixmatch', 'FixMatch'), 'mean_teacher': ('meanteacher', 'MeanTeacher'),
           'pseudo_label': ('pseudolabel', 'PseudoLabel')}
# USB's config/classic_cv/*/<algorithm>_cifar10_40_0.yaml, the algorithm-specific values
# (FixMatch's and MeanTeacher's as the speed benchmark configures them).
USB_ALGORITHM = {**usb_peer.USB_CIFAR10,
                 'pseudolabel': {'ulb_loss_ratio': 1.0, 'p_cutoff': 0.95, 'unsup_warm_up': 0.4}}
# The EMA weights (what both codebases evaluate) and the live ones, each as trained and with
# batch-norm statistics re-estimated on the clean training images (``_bn``).
MODELS = ('ema', 'raw', 'ema_bn', 'raw_bn')
OURS_EXTRA = ('--filters 32 --mixed_precision 0 --use_weighted_xe 0 --uratio 1 '
              '--bn_momentum {bn_momentum} --train_kimg {kimg} --report_kimg 8 --save_kimg 8')


def steps_for(kimg):
    return int(round(kimg * 1024 / BATCH))


def atomic_json(path, value):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The USB worker (venv python)
# ---------------------------------------------------------------------------------------------

def usb_run(args):
    """Trains one USB algorithm on an exported slice with USB's own loop; writes a result JSON."""
    import collections
    import random
    import time
    import types

    import torch
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    usb_peer.install_placeholders()
    usb_peer.torchvision_without_ops()
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: USB's .cuda(gpu) calls keep the tensor
    from semilearn.core.utils import ALGORITHMS, get_net_builder
    from semilearn.datasets.augmentation import RandAugment
    from semilearn.datasets.cv_datasets import cifar as usb_cifar
    from semilearn.datasets.cv_datasets.datasetbase import BasicDataset
    from semilearn.lighting import get_config
    from torchvision import transforms

    arrays = np.load(args.npz)
    steps = steps_for(args.kimg)
    name = f'{args.algorithm}_seed{args.seed}'
    common = {**usb_peer.USB_COMMON, 'epoch': 1, 'num_train_iter': steps,
              'num_eval_iter': steps_for(8), 'num_log_iter': 50, 'seed': args.seed,
              'num_workers': 1, 'save_name': name,
              'save_dir': args.save_dir}
    config = get_config({**common, **USB_ALGORITHM[args.algorithm], 'algorithm': args.algorithm,
                         'batch_size': BATCH, 'uratio': 1, 'img_size': 32,
                         'num_labels': int(len(arrays['y_train']))})
    size, pad = 32, int(32 * (1 - config.crop_ratio))
    norm = transforms.Normalize(usb_cifar.mean['cifar10'], usb_cifar.std['cifar10'])
    crop_flip = [transforms.Resize(size),
                 transforms.RandomCrop(size, padding=pad, padding_mode='reflect'),
                 transforms.RandomHorizontalFlip()]
    weak = transforms.Compose(crop_flip + [transforms.ToTensor(), norm])
    strong = transforms.Compose(crop_flip + [RandAugment(3, 5), transforms.ToTensor(), norm])
    plain = transforms.Compose([transforms.Resize(size), transforms.ToTensor(), norm])
    alg = args.algorithm
    datasets = {
        'train_lb': BasicDataset(alg, arrays['x_train'], arrays['y_train'].tolist(), NUM_CLASSES,
                                 weak, is_ulb=False),
        'train_ulb': BasicDataset(alg, arrays['x_unlabeled'], None, NUM_CLASSES, weak,
                                  is_ulb=True, strong_transform=strong),
        'eval': BasicDataset(alg, arrays['x_val'], arrays['y_val'].tolist(), NUM_CLASSES, plain,
                             is_ulb=False),
        'test': None}

    class OnOurData(ALGORITHMS[alg]):
        def set_dataset(self):
            self.args.ulb_dest_len = len(datasets['train_ulb'])
            self.args.lb_dest_len = len(datasets['train_lb'])
            return datasets

    logger = types.SimpleNamespace(info=lambda *a: print(*a, file=sys.stderr, flush=True))
    algorithm = OnOurData(args=config, net_builder=get_net_builder(config.net, False),
                          tb_log=None, logger=logger)
    for net in (algorithm.model, algorithm.ema_model):  # Keras convention -> torch's
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0 - args.bn_momentum
    algorithm._hooks = [h for h in algorithm._hooks if h.name != 'TimerHook']
    algorithm.hooks_dict = collections.OrderedDict((h.name, h) for h in algorithm._hooks)
    evaluations = []
    evaluate = algorithm.evaluate

    def recorded(eval_dest='eval', *a, **k):
        result = evaluate(eval_dest, *a, **k)
        evaluations.append({'it': algorithm.it + 1, **{key: float(v) for key, v in result.items()
                                                        if np.ndim(v) == 0}})
        return result
    algorithm.evaluate = recorded
    start = time.time()
    algorithm.train()  # USB's AlgorithmBase.train: its loop and hooks, evaluation at the end
    seconds = time.time() - start
    ema = evaluations[-1]  # USB's evaluation at the last step: the EMA weights
    # The live weights, through USB's own evaluate with its EMA swap made a no-op.
    apply_shadow = algorithm.ema.apply_shadow
    algorithm.ema.apply_shadow = algorithm.ema.restore = lambda: None
    raw = evaluate('eval')
    # The same two networks with batch-norm statistics re-estimated on the clean training images
    # (USB's EMA swaps only the parameters in: its EMA network uses the live running statistics).
    clean = np.concatenate([arrays['x_train'], arrays['x_unlabeled']])
    reestimate_bn_torch(algorithm.model, clean, plain)
    raw_bn = evaluate('eval')
    apply_shadow()
    reestimate_bn_torch(algorithm.model, clean, plain)
    ema_bn = evaluate('eval')

    def metrics(result):
        return {'accuracy': float(result['eval/top-1-acc']), 'macro_f1': float(result['eval/F1'])}
    atomic_json(args.result, {
        'side': 'usb', 'algorithm': alg, 'seed': args.seed, 'steps': algorithm.it,
        'labeled_images': algorithm.it * BATCH,
        'ema': metrics(ema), 'raw': metrics(raw), 'raw_bn': metrics(raw_bn),
        'ema_bn': metrics(ema_bn),
        'evaluations': evaluations, 'seconds': seconds, 'bn_momentum': args.bn_momentum,
        'threads': torch.get_num_threads(),
        'config': {k: v for k, v in vars(config).items()
                   if isinstance(v, (int, float, str, bool)) or v is None}})


def reestimate_bn_torch(net, images, transform, batch=256):
    """Sets every batch norm's running mean and variance of ``net`` (torch) to their average over
    one pass of ``images`` (uint8 [N, H, W, 3]) through ``transform``, in batches of ``batch``:
    the statistics of the network's final weights, without the lag of a running average."""
    import torch
    from PIL import Image
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # torch: cumulative average over the batches seen since the reset
    net.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            net(torch.stack([transform(Image.fromarray(x)) for x in images[start:start + batch]]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


# ---------------------------------------------------------------------------------------------
# The driver (project python)
# ---------------------------------------------------------------------------------------------

def export(seed, data_dir, out=OUT):
    """data/cifar10n.<seed> -> <out>/cifar10n.<seed>.npz (uint8 images)."""
    from libml import records
    path = os.path.join(out, f'cifar10n.{seed}.npz')
    if os.path.exists(path):
        return path
    directory = records.dataset_dir(data_dir, 'cifar10n', seed)
    split = {s: records.read_split_numpy(directory, s, NUM_CLASSES)
             for s in ('train', 'unlabeled', 'val')}
    os.makedirs(out, exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}.npz'  # two drivers (--sides usb / ours) may export at once
    np.savez(tmp, x_train=split['train']['image'], y_train=split['train']['label'],
             x_unlabeled=split['unlabeled']['image'], x_val=split['val']['image'],
             y_val=split['val']['soft_label'].argmax(axis=1),
             soft_val=split['val']['soft_label'])
    os.replace(tmp, path)
    return path


def ours_result(seed, method, kimg, bn_momentum, ours_dir=OURS_DIR):
    """Final validation metrics (EMA and raw weights) of our run of ``kimg`` and
    ``bn_momentum``, or None when there is none that has finished."""
    from libml import run_files
    folder = run_folder(ours_dir, seed)
    prefix = METHODS[method][1] + '_'
    if not os.path.isdir(folder):
        return None
    for run in sorted(os.listdir(folder)):
        args_path = os.path.join(folder, run, run_files.ARGS_FILE)
        if not run.startswith(prefix) or not os.path.exists(args_path):
            continue
        with open(args_path) as f:
            run_args = json.load(f)
        if (run_args.get('train_kimg'), run_args.get('bn_momentum')) != (kimg, bn_momentum):
            continue
        # A run still training may have no metrics yet, or a last line cut short by a kill.
        lines = run_files.read_metrics(os.path.join(folder, run))
        if lines and lines[-1]['kimg'] >= kimg:
            val = lines[-1]['splits']['val']
            return {'side': 'ours', 'method': method, 'seed': seed, 'run': run,
                    **{model: {'accuracy': val[model]['accuracy'],
                               'macro_f1': val[model]['macro_f1']} for model in ('ema', 'raw')},
                    'evaluations': [{'kimg': x['kimg'],
                                     'accuracy': x['splits']['val']['ema']['accuracy']}
                                    for x in lines]}
    return None


def reestimate_bn_keras(model, images, batch=256):
    """Our counterpart of ``reestimate_bn_torch``: every batch norm's moving mean and variance of
    ``model`` (Keras, eager) become their average over the batches of ``images`` (normalised
    float32 [N, H, W, 3]), each batch weighted equally as torch's cumulative average does."""
    def every_layer(layer):  # the layers of nested models too, through the public ``layers``
        for inner in getattr(layer, 'layers', ()):
            yield inner
            yield from every_layer(inner)
    norms = [layer for layer in every_layer(model)
             if hasattr(layer, 'moving_mean') and hasattr(layer, 'momentum')]
    momenta = [layer.momentum for layer in norms]
    for i, start in enumerate(range(0, len(images), batch)):
        for layer in norms:  # moving <- moving + (batch - moving) / (i + 1)
            layer.momentum = 1.0 - 1.0 / (i + 1)
        model(images[start:start + batch], training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def ours_reestimated(run_dir, data_dir):
    """Validation accuracy and macro F1 of a finished run's live (``raw_bn``) and EMA
    (``ema_bn``) weights with batch-norm statistics re-estimated on the clean training images
    (labeled, then unlabeled; as the USB worker does)."""
    import keras
    import sklearn.metrics
    import tensorflow as tf

    from libml import data, methods
    from libml.models import CLASS_HEAD
    keras.mixed_precision.set_global_policy('float32')
    method, _ = methods.build_from_run(run_dir, data_dir, mixed_precision=0)
    method.checkpoint.restore(
        tf.train.latest_checkpoint(os.path.join(run_dir, 'ckpt'))).expect_partial()

    def arrays(split):
        batches = list(data.eval_inputs(method.dataset, split, 256))
        return (np.concatenate([b['image'].numpy() for b in batches]),
                np.concatenate([b['soft_label'].numpy() for b in batches]).argmax(axis=1))
    clean = np.concatenate([arrays('train')[0], arrays('unlabeled')[0]])
    x_val, y_val = arrays('val')
    result = {}
    for name, model in (('raw_bn', method.model), ('ema_bn', method.ema_model)):
        reestimate_bn_keras(model, clean)
        predicted = np.concatenate([model(x_val[i:i + 500], training=False)[CLASS_HEAD].numpy()
                                    .argmax(axis=1) for i in range(0, len(x_val), 500)])
        result[name] = {'accuracy': float(np.mean(predicted == y_val)),
                        'macro_f1': float(sklearn.metrics.f1_score(y_val, predicted,
                                                                   average='macro'))}
    return result


def usb_result_path(seed, method, kimg, bn_momentum, results=RESULTS):
    return os.path.join(results, f'usb_{method}_seed{seed}_kimg{kimg:g}_bn{bn_momentum:g}.json')


def _tag(ours_dir):
    """'' for the default ``--ours_dir``, '.<its last folder>' for any other."""
    ours_dir = os.path.normpath(ours_dir)
    return '' if ours_dir == OURS_DIR else f'.{os.path.basename(ours_dir)}'


def ours_record_path(seed, method, kimg, bn_momentum, results=RESULTS, ours_dir=OURS_DIR):
    """Where the record of our run is kept; runs of another ``--ours_dir`` (e.g. a variant of the
    code under test) get their own file."""
    return os.path.join(results, f'ours_{method}_seed{seed}_kimg{kimg:g}_bn{bn_momentum:g}'
                        f'{_tag(ours_dir)}.json')


def run_folder(ours_dir, seed, run=''):
    """Our run folder ``run`` of data seed ``seed`` (or the seed's folder of runs)."""
    return os.path.join(ROOT, ours_dir, f'cifar10n.{seed}@-1-10', run)


def run_identity(ours_dir, seed, run):
    """What ties a record to one training of a run folder: its name and a digest of its
    metrics.jsonl (a folder retrained under the same name gets other metrics)."""
    import hashlib
    with open(os.path.join(run_folder(ours_dir, seed, run), 'metrics.jsonl'), 'rb') as f:
        return {'run': run, 'metrics_sha1': hashlib.sha1(f.read()).hexdigest()}


def stored_ours(seed, method, kimg, bn_momentum, ours_dir=OURS_DIR, results=RESULTS):
    """The stored record of our run, or None. A record outlives its run folder (a fresh checkout
    has the records but not the folders); while the folder is there, the record counts only for
    the training it was made from."""
    path = ours_record_path(seed, method, kimg, bn_momentum, results, ours_dir)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if os.path.exists(os.path.join(run_folder(ours_dir, seed, record['run']), 'metrics.jsonl')):
        identity = run_identity(ours_dir, seed, record['run'])
        if any(record.get(key) != value for key, value in identity.items()):
            return None
    return record


def store_ours(seed, method, kimg, bn_momentum, data_dir, ours_dir=OURS_DIR, results=RESULTS,
               reestimate=None):
    """Makes the record of our finished run (``ours_result``, the run's identity and the
    re-estimated rows of ``reestimate(run_dir, data_dir)``, default ``ours_reestimated``) unless a
    current one is stored; returns it, or None when the run has not finished."""
    record = stored_ours(seed, method, kimg, bn_momentum, ours_dir, results)
    ours = ours_result(seed, method, kimg, bn_momentum, ours_dir)
    if ours is None or (record is not None and record['run'] == ours['run']):
        return record
    print(f'[ours] {method} seed {seed}: batch-norm statistics re-estimated', flush=True)
    reestimate = reestimate or ours_reestimated
    record = {**ours, **run_identity(ours_dir, seed, ours['run']),
              **reestimate(run_folder(ours_dir, seed, ours['run']), data_dir)}
    os.makedirs(results, exist_ok=True)
    atomic_json(ours_record_path(seed, method, kimg, bn_momentum, results, ours_dir), record)
    return record


def run_all(args):
    env = {**os.environ, 'PYTHONPATH': ROOT}
    for seed in args.seeds:
        npz = export(seed, args.data_dir, args.out)
        for method in args.methods:
            usb_path = usb_result_path(seed, method, args.kimg, args.bn_momentum, args.results)
            if 'usb' in args.sides and not os.path.exists(usb_path):
                print(f'[usb] {method} seed {seed}', flush=True)
                os.makedirs(args.results, exist_ok=True)
                subprocess.run([args.usb_python, '-m', 'bench.usb_quality', '--worker',
                                '--algorithm', METHODS[method][0], '--seed', str(seed),
                                '--npz', npz, '--kimg', str(args.kimg),
                                '--bn_momentum', str(args.bn_momentum),
                                '--result', usb_path,
                                '--save_dir', os.path.join(args.out, 'usb_runs')],
                               cwd=ROOT, env=env, check=True)
            if 'ours' not in args.sides:
                continue
            if (stored_ours(seed, method, args.kimg, args.bn_momentum, args.ours_dir,
                            args.results) is None and
                    ours_result(seed, method, args.kimg, args.bn_momentum, args.ours_dir) is None):
                print(f'[ours] {method} seed {seed}', flush=True)
                subprocess.run([sys.executable, 'scripts/run_ablation.py', '--dataset_name',
                                'cifar10n', '--data_dir', args.data_dir, '--seeds', str(seed),
                                '--methods', method, '--variants', 'baseline', '--train_dir',
                                args.ours_dir, '--extra', OURS_EXTRA.format(
                                    kimg=args.kimg, bn_momentum=args.bn_momentum)
                                + (' ' + args.ours_flags if args.ours_flags else '')],
                               cwd=ROOT, check=True)
            store_ours(seed, method, args.kimg, args.bn_momentum, args.data_dir, args.ours_dir,
                       args.results)
    table(args)


def _stats(values):
    values = np.asarray(values, dtype=float)
    return {'seeds': len(values), 'mean': float(values.mean()) if len(values) else None,
            'std': float(values.std(ddof=1)) if len(values) > 1 else None}


def verdict(difference, ours, usb):
    """Is ours within noise of USB or better? ``difference``: the statistics of ours − USB over
    the seeds both sides ran (the same data slice per seed); ``ours``, ``usb``: each side's
    statistics over its seeds. The noise is the larger of the two sides' seed-to-seed standard
    deviations: ``ahead`` when the mean difference is ≥ 0, ``within noise`` when it is behind by
    no more than that noise, ``behind`` otherwise; fewer than two paired seeds can say nothing."""
    if difference['seeds'] < 2 or ours['std'] is None or usb['std'] is None:
        return 'too few seeds'
    if difference['mean'] >= 0:
        return 'ahead'
    return 'within noise' if -difference['mean'] <= max(ours['std'], usb['std']) else 'behind'


def _cell(stats):
    if not stats['seeds']:
        return 'not run'
    std = f' ± {100 * stats["std"]:.2f}' if stats['std'] is not None else ''
    return f'{100 * stats["mean"]:.2f}{std} ({stats["seeds"]})'


def table_path(results, ours_dir=OURS_DIR):
    """The table's path without its extension: ``table`` in ``results``, tagged like the records
    when ``ours_dir`` is not the default."""
    return os.path.join(results, f'table{_tag(ours_dir)}')


def stored_selection(args):
    """{method: seeds} of the table: ``--methods`` and ``--seeds`` as given, plus every method and
    seed our ``--ours_dir`` has a stored record of (at ``--kimg`` and ``--bn_momentum``); a seed
    or method no side has a record of is left out. So a ``--run`` of some methods or new seeds
    rewrites the table with every stored run of ours, not only its own."""
    names = set(os.listdir(args.results)) if os.path.isdir(args.results) else set()
    seeds = sorted({int(part[len('seed'):]) for name in names for part in name.split('_')
                    if part.startswith('seed') and part[len('seed'):].isdigit()} | set(args.seeds))

    def ours(seed, method):
        return os.path.basename(ours_record_path(seed, method, args.kimg, args.bn_momentum,
                                                 args.results, args.ours_dir)) in names

    def usb(seed, method):
        return os.path.basename(usb_result_path(seed, method, args.kimg, args.bn_momentum,
                                                args.results)) in names

    selection = {}
    for method in METHODS:
        chosen = [seed for seed in seeds if ours(seed, method) or (
            method in args.methods and seed in args.seeds and usb(seed, method))]
        if chosen:
            selection[method] = chosen
    return selection


def table(args):
    """Mean ± std over seeds per method, weights (EMA / raw), side and metric, from the stored
    records of ``stored_selection`` -> ``table_path``.md and .json."""
    rows, per_seed = [], []
    for method, seeds in stored_selection(args).items():
        results = {'ours': [], 'usb': []}
        for seed in seeds:
            usb_path = usb_result_path(seed, method, args.kimg, args.bn_momentum, args.results)
            usb = json.load(open(usb_path)) if os.path.exists(usb_path) else None
            ours = stored_ours(seed, method, args.kimg, args.bn_momentum, args.ours_dir,
                               args.results)
            per_seed.append({'method': method, 'seed': seed, 'ours': ours, 'usb': usb})
            for side, result in (('ours', ours), ('usb', usb)):
                if result is not None:
                    results[side].append(result)
        for model in MODELS:
            row = {'method': method, 'model': model, **{
                f'{side}_{metric}': _stats([r[model][metric] for r in results[side]
                                            if model in r])
                for side in results for metric in ('accuracy', 'macro_f1')}}
            pairs = [x for x in per_seed if x['method'] == method and
                     all(x[side] is not None and model in x[side] for side in ('ours', 'usb'))]
            for metric in ('accuracy', 'macro_f1'):
                row[f'difference_{metric}'] = _stats(
                    [x['ours'][model][metric] - x['usb'][model][metric] for x in pairs])
                row[f'verdict_{metric}'] = verdict(row[f'difference_{metric}'],
                                                   row[f'ours_{metric}'], row[f'usb_{metric}'])
            rows.append(row)
    lines = ['| method | weights | ours accuracy | USB accuracy | ours macro F1 | USB macro F1 | '
             'ours − USB, paired by seed (accuracy / macro F1) | verdict (accuracy / macro F1) |',
             '|---|---|---|---|---|---|---|---|']
    for row in rows:
        lines.append(f'| {row["method"]} | {row["model"]} | {_cell(row["ours_accuracy"])} | '
                     f'{_cell(row["usb_accuracy"])} | {_cell(row["ours_macro_f1"])} | '
                     f'{_cell(row["usb_macro_f1"])} | {_cell(row["difference_accuracy"])} / '
                     f'{_cell(row["difference_macro_f1"])} | {row["verdict_accuracy"]} / '
                     f'{row["verdict_macro_f1"]} |')
    lines += ['', '| method | seed | weights | ours accuracy | USB accuracy | ours macro F1 | '
              'USB macro F1 |', '|---|---|---|---|---|---|---|']
    for x in per_seed:
        for model in MODELS:
            cells = ['—' if x[side] is None or model not in x[side]
                     else f'{100 * x[side][model][metric]:.2f}'
                     for metric in ('accuracy', 'macro_f1') for side in ('ours', 'usb')]
            lines.append(f'| {x["method"]} | {x["seed"]} | {model} | ' + ' | '.join(cells) + ' |')
    text = '\n'.join(lines) + '\n'
    path = table_path(args.results, args.ours_dir)
    os.makedirs(args.results, exist_ok=True)
    with open(path + '.md.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.md.tmp', path + '.md')
    atomic_json(path + '.json', {'kimg': args.kimg, 'rows': rows, 'per_seed': per_seed})
    print(text)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--run', action='store_true')
    mode.add_argument('--table', action='store_true')
    mode.add_argument('--worker', action='store_true')
    parser.add_argument('--seeds', default='1,2,3', help='the data seeds to train (--run) and '
                        'to tabulate; the table also lists every other stored run of ours')
    parser.add_argument('--methods', default=','.join(METHODS), help='the methods to train '
                        '(--run) and to tabulate; the table also lists every other method with '
                        'a stored run of ours')
    parser.add_argument('--sides', default='usb,ours')
    parser.add_argument('--kimg', type=float, default=24.0)
    parser.add_argument('--bn_momentum', type=float, default=0.99,
                        help='Both sides, Keras convention (torch momentum = 1 - this).')
    parser.add_argument('--data_dir', default=os.environ.get('ML_DATA', 'data'))
    parser.add_argument('--out', default=OUT, help='Data exports and USB run folders (large, '
                        'git-ignored).')
    parser.add_argument('--results', default=RESULTS, help='One JSON per finished run of either '
                        'side and the tables (small; committed, so that they outlive the run '
                        'folders).')
    parser.add_argument('--ours_dir', default=OURS_DIR, help='--train_dir of our runs.')
    parser.add_argument('--ours_flags', default='', help='More flags for our runs, e.g. '
                        '"--bn_batches per_subset"; give them their own --ours_dir.')
    parser.add_argument('--usb_python', default=os.path.join('bench', 'out', 'venv-usb', 'bin',
                                                             'python'))
    # worker
    parser.add_argument('--algorithm', choices=sorted(USB_ALGORITHM))
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--npz')
    parser.add_argument('--result')
    parser.add_argument('--save_dir', default=os.path.join(OUT, 'usb_runs'))
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        usb_run(args)
        return 0
    args.seeds = [int(s) for s in args.seeds.split(',')]
    args.methods = args.methods.split(',')
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f'unknown --methods {unknown}; choose from {sorted(METHODS)}')
    from libml.errors import DC3Error
    try:
        run_all(args) if args.run else table(args)
    except DC3Error as e:  # e.g. CIFAR-10N not imported: one line, not a traceback
        print(f'error: {e} (CIFAR-10N is imported by ./generate_datasets.sh --cifar10n '
              '../shared/data/CIFAR10N)', file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f'error: a training run failed (exit {e.returncode}): {" ".join(e.cmd)}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""The training loop: configuration, process set-up, checkpoints, TensorBoard and the NaN policy.

``train(method)`` trains any ``libml.method.SSLMethod`` to ``train_kimg`` and resumes from the run
folder's latest checkpoint; ``evaluate_checkpoint`` reports one checkpoint. One summary writer
per run folder receives the training scalars (means over ``log_every`` steps) and the reports'
metrics (``libml.evaluation``).
"""
import contextlib
import dataclasses
import math
import os
import sys
import time

import keras
import tensorflow as tf
import tqdm

from libml import checkpoints, distribute, evaluation, hparams, run_files, summaries
from libml.errors import DC3Error

MAX_CONSECUTIVE_SKIPS = 10


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The run's data, optimisation, length and operation (the flags of the same names)."""
    train_dir: str = hparams.field(help_text='Folder that receives the run folders.',
                                   flag_default='experiments')
    dataset: str = hparams.field(
        help_text='Dataset <name>.<seed>@<labeled size or -1>-<ignored>, generated under '
                  '$ML_DATA.', flag_default='synthetic.1@-1-10')
    batch: int = hparams.field(64, 'Labeled images per step and replica (global batch: batch x '
                                   'replicas).')
    uratio: int = hparams.field(1, 'Unlabeled images per labeled image in a step.')
    lr: float = hparams.field(0.03, 'Initial learning rate (cosine decay to cos(7 pi / 16) of it).')
    wd: float = hparams.field(0.0005, 'Weight decay: factor of sum(kernel^2) / 2 in the loss.')
    ema: float = hparams.field(0.999, 'Decay of the exponential moving average of the weights.')
    train_kimg: float = hparams.field(1 << 16, 'Training length in thousands (1024) of labeled '
                                               'images.')
    report_kimg: float = hparams.field(64, 'Evaluate and write predictions every this many kimg.')
    save_kimg: float = hparams.field(64, 'Save a checkpoint every this many kimg.')
    keep_ckpt: int = hparams.field(50, 'Checkpoints to keep.')
    seed: int = hparams.field(0, 'Seed of weight initialisation, data order and augmentation.')
    augment: str = hparams.field('d.d.d', 'Augmentations labeled.unlabeled1.unlabeled2: x none, d '
                                          'flip+translate, rac RandAugment+cutout.')
    use_weighted_xe: int = hparams.field(
        1, '1 (the original DC3 code\'s default): weight the labeled cross-entropy by class '
           '(inverse frequency in the labeled split); 0: unweighted.')
    mixed_precision: int = hparams.field(0, '1: bf16 on CPU, fp16 with loss scaling on GPU.')
    nan_policy: str = hparams.field('stop', 'On a non-finite loss: stop with an error, or rewind '
                                            'to the last checkpoint.', choices=('stop', 'skip'))
    eval_batch: int = hparams.field(256, 'Batch size of evaluation.')
    deterministic: int = hparams.field(
        0, '1: TF op determinism; with the same --seed two runs on the same machine give '
           'identical results (slower).')
    strategy: str = hparams.field(
        'default', 'default: one device; mirrored: one replica per GPU of this machine; '
                   'multiworker: one process per machine, the cluster from TF_CONFIG or SLURM '
                   '(README, "Several machines").', choices=distribute.STRATEGIES)

    def __post_init__(self):
        finite = all(math.isfinite(v) for v in (self.lr, self.wd, self.ema, self.train_kimg,
                                                self.report_kimg, self.save_kimg))
        checks = [
            (finite, '--lr, --wd, --ema, --train_kimg, --report_kimg and --save_kimg must be '
                     'finite numbers'),
            ('/' not in self.dataset and '\\' not in self.dataset
             and self.dataset not in ('', '.', '..'),
             f'--dataset {self.dataset!r} must be a dataset name like cifar10n.1@-1-10, not a '
             'path'),
            (self.batch >= 1, f'--batch must be >= 1, got {self.batch}'),
            (self.uratio >= 1, f'--uratio must be >= 1, got {self.uratio}'),
            (self.lr > 0, f'--lr must be > 0, got {self.lr}'),
            (self.wd >= 0, f'--wd must be >= 0, got {self.wd}'),
            (0 <= self.ema < 1, f'--ema must be in [0, 1), got {self.ema}'),
            (self.train_kimg > 0, f'--train_kimg must be > 0, got {self.train_kimg}'),
            (self.report_kimg > 0, f'--report_kimg must be > 0, got {self.report_kimg}'),
            (self.save_kimg > 0, f'--save_kimg must be > 0, got {self.save_kimg}'),
            (self.keep_ckpt >= 1, f'--keep_ckpt must be >= 1, got {self.keep_ckpt}'),
            (self.eval_batch >= 1, f'--eval_batch must be >= 1, got {self.eval_batch}'),
            (self.mixed_precision in (0, 1),
             f'--mixed_precision must be 0 or 1, got {self.mixed_precision}'),
            (self.deterministic in (0, 1), f'--deterministic must be 0 or 1, got '
                                           f'{self.deterministic}'),
            (self.use_weighted_xe in (0, 1), f'--use_weighted_xe must be 0 or 1, got '
                                             f'{self.use_weighted_xe}'),
        ]
        for ok, message in checks:
            if not ok:
                raise DC3Error(message)
        hparams.check_choices(self)


class CosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """FixMatch's schedule: ``lr * cos(7 pi t / 16)`` with t the training progress in [0, 1]."""

    def __init__(self, lr, total_steps):
        self.lr = lr
        self.total_steps = total_steps

    def __call__(self, step):
        progress = tf.minimum(tf.cast(step, tf.float32) / self.total_steps, 1.0)
        return self.lr * tf.cos(progress * (7.0 * math.pi / 16.0))

    def get_config(self):
        return {'lr': self.lr, 'total_steps': self.total_steps}


def set_precision(mixed_precision):
    """bf16 on CPUs (AMX), fp16 with loss scaling on GPUs, else float32. Returns the policy name."""
    if not mixed_precision:
        policy = 'float32'
    elif tf.config.list_physical_devices('GPU'):
        policy = 'mixed_float16'
    else:
        policy = 'mixed_bfloat16'
    keras.mixed_precision.set_global_policy(policy)
    return policy


def configure_process(config):
    """The process-wide state a run needs before its networks are built: the precision policy,
    op determinism and the seeds. Returns the precision policy's name."""
    policy = set_precision(config.mixed_precision)
    if config.deterministic:
        # Process-wide: deterministic kernels, and tf.data runs stateful augmentations in order.
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    return policy


def schedule_every(kimg, global_batch):
    """Steps between two events that happen every ``kimg`` thousand (1024) images."""
    return max(1, round(kimg * 1024 / global_batch))


def train(method):
    """Trains ``method`` to ``train_kimg``, resuming from the run folder's latest checkpoint.

    The run folder is locked for the duration (``run_files.run_lock``). After a resume, reports
    that a crash left out are written first (``evaluation.complete_reports``). In a multi-worker cluster
    only the chief locks the folder and writes args.json, reports, metrics.jsonl and TensorBoard;
    the other workers train and save (``libml.checkpoints``) without writing to the folder.
    """
    run_dir = method.resolve_run_dir()
    chief = distribute.is_chief(method.strategy)
    with run_files.run_lock(run_dir) if chief else contextlib.nullcontext():
        if chief:
            run_files.prepare_run_dir(run_dir, method.hyperparameters())
        try:
            return _train(method, run_dir, chief)
        except tf.errors.DataLossError as e:
            raise DC3Error(f'damaged data while training ({str(e).splitlines()[0][:200]}); '
                           'check the dataset with records.verify_dataset(..., checksum=True) '
                           'and re-run its import') from None
        except PEER_LOST as e:
            worker = distribute.worker_id(method.strategy)
            if not worker:
                raise
            raise DC3Error(f'{worker}: another worker of the cluster stopped or cannot be '
                           f'reached ({type(e).__name__}: {_first_line(e)}); rerun every worker '
                           'to resume from the last checkpoint') from None


# What a collective op raises when a peer dies: its heartbeats stop and the runtime aborts the op.
PEER_LOST = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
             tf.errors.DeadlineExceededError)


def _first_line(error):
    lines = [line for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if 'unhealthy' in line or 'aborted' in line.lower()]
    return (useful or lines or [''])[0][:200]


def _train(method, run_dir, chief):
    cfg = method.train_config
    ckpts = checkpoints.RunCheckpoints(method.checkpoint, os.path.join(run_dir, 'ckpt'),
                                       cfg.keep_ckpt, chief)
    restored = ckpts.restore_newest_readable()
    if restored:
        print(f'Resumed from {restored}', file=sys.stderr)
    step = int(method.optimizer.iterations.numpy())
    distribute.agree(method.strategy, step, 'the step to resume from',
                     'the run folder must be on a file system that every worker sees')
    writer = (tf.summary.create_file_writer(os.path.join(run_dir, 'tb')) if chief
              else tf.summary.create_noop_writer())
    if chief:
        summaries.write_hparams(writer, method.hyperparameters(), os.path.basename(run_dir))
    batch = method.global_batch
    report_every = schedule_every(cfg.report_kimg, batch)
    save_every = schedule_every(cfg.save_kimg, batch)
    log_every = max(1, min(report_every, round(1024 / batch)))
    eval_sets = evaluation.eval_datasets(method) if chief else None
    if restored and chief:
        evaluation.complete_reports(method, run_dir, ckpts.manager, step, report_every,
                                    eval_sets, writer)

    # After a resume the data order is re-seeded from the step: restoring tf.data's shuffle
    # buffer would write a copy of the dataset into every checkpoint.
    keras.utils.set_random_seed(cfg.seed + step)
    iterator = method.train_batches(cfg.seed + step)
    sums, count, skips = {}, 0, 0
    window = []  # the monitors (device tensors) of the steps since the loss was last checked
    bar = tqdm.tqdm(total=method.total_steps * batch, initial=step * batch, unit='img',
                    unit_scale=True, dynamic_ncols=True, file=sys.stderr, disable=not chief,
                    mininterval=1 if sys.stderr.isatty() else 30, desc=os.path.basename(run_dir))
    try:  # closed on errors too, so that an error line starts on a line of its own
        start = time.time()
        while step < method.total_steps:
            monitors = method._train_step(next(iterator))
            window.append(monitors)
            step += 1
            bar.update(batch)
            for name, value in monitors.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
            end = step == method.total_steps
            log, save = step % log_every == 0 or end, step % save_every == 0 or end
            report = step % report_every == 0 or end
            if not (log or save or report):
                continue
            # The loss is read back from the device here, before anything is written, and not
            # after every step: the host queues the next steps while the device computes. The
            # schedule is the same on every worker, and the monitors are reduced over all
            # replicas and workers, so every worker takes the same branch.
            bad, window = _first_non_finite(window, step), []
            if bad:
                step, skips = _diverged(method, *bad, ckpts, skips)
                bar.n = step * batch
                bar.refresh()
                sums, count, start = {}, 0, time.time()
                continue
            skips = 0
            if log:
                means = {name: float(total.numpy()) / count for name, total in sums.items()}
                means['monitors/img_per_sec'] = count * batch / (time.time() - start)
                with writer.as_default(step=step * batch):
                    for name, value in means.items():
                        tf.summary.scalar(name, value)
                bar.set_postfix(loss=f'{means["losses/total"]:.3f}')
                sums, count, start = {}, 0, time.time()
            if save:
                ckpts.save(step)
            if report and chief:
                evaluation.report(method, run_dir, step, eval_sets, writer, embeddings=end)
    finally:
        bar.close()
    writer.flush()
    # A barrier: the other workers wait for the chief's final report, so that none of them
    # exits while the chief still runs (its coordination service would report the exit as a
    # crashed task).
    distribute.agree(method.strategy, step, 'the final step', 'rerun every worker')
    return run_dir


def _first_non_finite(window, step):
    """``(steps before it, its monitors)`` of the first step of ``window`` (the monitors of the
    steps up to ``step``) whose loss is not finite, or None: one read-back for the window."""
    finite = tf.math.is_finite(tf.stack([m['losses/total'] for m in window])).numpy()
    if finite.all():
        return None
    first = int(finite.argmin())
    return step - len(window) + first, window[first]


def _diverged(method, step, monitors, ckpts, skips):
    """A non-finite loss: stop (default) or rewind to the last checkpoint and go on."""
    terms = ', '.join(f'{k}={float(v.numpy()):.4g}' for k, v in sorted(monitors.items())
                      if k.startswith(('losses/', 'dc3/')))
    where = f'non-finite loss at step {step + 1} ({terms})'
    latest = ckpts.latest
    if method.train_config.nan_policy == 'stop' or skips >= MAX_CONSECUTIVE_SKIPS:
        raise DC3Error(f'{where}; stopped, last good checkpoint: {latest or "none saved yet"}; '
                       'lower --lr, check the data, or pass --nan_policy skip')
    # Batch-norm statistics of the bad batch are already in the model: rewind everything.
    if latest:
        method.checkpoint.restore(latest).expect_partial()
    step = int(method.optimizer.iterations.numpy())
    distribute.agree(method.strategy, step, 'the step to rewind to',
                     'the run folder must be on a file system that every worker sees')
    print(f'warning: {where}; skipped, resuming from step {step}', file=sys.stderr)
    return step, skips + 1


def evaluate_checkpoint(method, checkpoint_path):
    """``--eval_ckpt``: loads one checkpoint and writes its report next to the run folder."""
    if not tf.io.gfile.exists(checkpoint_path + '.index'):
        raise DC3Error(f'checkpoint {checkpoint_path} not found (give the path without '
                       '.index, e.g. RUN/ckpt/ckpt-1000)')
    try:
        # Every variable of the rebuilt method must come from the checkpoint.
        method.checkpoint.restore(checkpoint_path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise DC3Error(f'checkpoint {checkpoint_path} does not fit the network of its args.json '
                       f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); was args.json '
                       'edited or copied from another run?') from None
    step = int(method.optimizer.iterations.numpy())
    out_dir = os.path.join(os.path.dirname(os.path.dirname(checkpoint_path)), 'eval',
                           os.path.basename(checkpoint_path))
    os.makedirs(out_dir, exist_ok=True)
    evaluation.report(method, out_dir, step, evaluation.eval_datasets(method), embeddings=True)
    return out_dir

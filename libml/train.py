"""The one training loop, evaluation path and checkpoint path shared by every SSL method.

A method subclasses ``SSLMethod`` and implements ``method_losses`` (its per-sample losses) and sets
``unlabeled_views``. DC3 composes with any method through ``libml.dc3.with_dc3``, which overrides
``heads`` and ``combine_losses``. Everything else -- network, optimiser, learning-rate schedule,
weight decay, EMA, checkpoints, TensorBoard, evaluation, predictions -- lives here once.
"""
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
import tqdm

from libml import data, distribute, fused_ops, io_utils, losses, metrics, models
from libml.dc3 import AMBIGUITY_HEAD, OVERCLUSTER_HEAD, DC3Config
from libml.errors import DC3Error
from libml.models import CLASS_HEAD
from libml.run_args import OPERATIONAL_KEYS

MAX_CONSECUTIVE_SKIPS = 10


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = 'resnet'
    filters: int = 32
    scales: int = 0             # 0: FixMatch's rule, log2(image size) - 2
    repeat: int = 4
    bn_momentum: float = 0.999  # FixMatch's; short runs want ~0.99 (see models.build_network)
    sync_bn: int = 0            # 1: batch-norm moments over all replicas (see models)
    fused_bn_act: str = 'auto'  # batch norm + leaky ReLU as one CPU op: auto, on, off (fused_ops)

    def __post_init__(self):
        if self.sync_bn not in (0, 1):
            raise DC3Error(f'--sync_bn must be 0 or 1, got {self.sync_bn}')
        if self.fused_bn_act not in fused_ops.MODES:
            raise DC3Error(f'--fused_bn_act must be one of {", ".join(fused_ops.MODES)}, '
                           f'got {self.fused_bn_act!r}')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    train_dir: str
    dataset: str                # FixMatch-style name, e.g. 'cifar10n.1@-1-10'
    batch: int = 64             # labeled images per replica; the global batch is batch x replicas
    uratio: int = 1
    lr: float = 0.03
    wd: float = 0.0005
    ema: float = 0.999
    train_kimg: float = 1 << 16
    report_kimg: float = 64
    save_kimg: float = 64
    keep_ckpt: int = 50
    seed: int = 0
    augment: str = 'd.d.d'
    use_weighted_xe: int = 1    # the original DC3 code's default
    mixed_precision: int = 0
    nan_policy: str = 'stop'    # 'stop': exit non-zero; 'skip': rewind to the last checkpoint
    eval_batch: int = 256
    deterministic: int = 0      # 1: TF op determinism (bit-identical reruns on the same machine)
    strategy: str = 'default'   # tf.distribute strategy: 'default' (one device) or 'mirrored'

    def __post_init__(self):
        checks = [
            (self.batch >= 1, f'--batch must be >= 1, got {self.batch}'),
            (self.uratio >= 1, f'--uratio must be >= 1, got {self.uratio}'),
            (self.lr > 0, f'--lr must be > 0, got {self.lr}'),
            (self.wd >= 0, f'--wd must be >= 0, got {self.wd}'),
            (0 <= self.ema < 1, f'--ema must be in [0, 1), got {self.ema}'),
            (self.train_kimg > 0, f'--train_kimg must be > 0, got {self.train_kimg}'),
            (self.report_kimg > 0, f'--report_kimg must be > 0, got {self.report_kimg}'),
            (self.save_kimg > 0, f'--save_kimg must be > 0, got {self.save_kimg}'),
            (self.keep_ckpt >= 1, f'--keep_ckpt must be >= 1, got {self.keep_ckpt}'),
            (self.nan_policy in ('stop', 'skip'),
             f'--nan_policy must be stop or skip, got {self.nan_policy!r}'),
            (self.strategy in distribute.STRATEGIES,
             f'--strategy must be one of {", ".join(distribute.STRATEGIES)}, '
             f'got {self.strategy!r}'),
        ]
        for ok, message in checks:
            if not ok:
                raise DC3Error(message)


@dataclasses.dataclass
class Outputs:
    """Network outputs split by subset: dicts of head name -> tensor."""
    labeled: dict
    unlabeled: list             # one dict per unlabeled view
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. Mean Teacher's teacher outputs


@dataclasses.dataclass
class Views:
    """How a method uses its unlabeled views, for terms added on top of its own (DC3's).

    ``main`` is the view that carries the method's per-image weighting (DC3's ``p_a``, L_A and
    the unlabeled CE^-1); ``other`` is the view it is compared with (L_S), with the gradient
    stopped wherever the method stops it; ``confidence`` is the threshold above which a
    prediction of ``main`` counts as a pseudo-label.
    """
    main: dict = None
    other: dict = None
    confidence: float = 0.95    # the original DC3 code's threshold, unless the method has its own


@dataclasses.dataclass
class LossTerms:
    """What a method contributes: per-sample losses and the weight of its unlabeled term."""
    labeled_xe: tf.Tensor       # [B] supervised cross-entropy
    ssl: tf.Tensor = None       # [B * uratio] the method's unlabeled loss, or None
    ssl_weight: tf.Tensor = 0.0
    monitors: dict = dataclasses.field(default_factory=dict)


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


def warmup(progress, warmup_pos):
    """Linear ramp from 0 to 1 over the first ``warmup_pos`` of training."""
    if warmup_pos <= 0:
        return tf.constant(1.0)
    return tf.clip_by_value(progress / warmup_pos, 0.0, 1.0)


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


class SSLMethod:
    """Base class of every method: owns the network, the training loop and evaluation.

    Subclasses set ``unlabeled_views`` (0, 1 or 2 augmented views of each unlabeled image) and
    implement ``method_losses``. Their hyperparameters arrive as keyword arguments (``hparams``).

    Under ``--strategy mirrored`` every variable is mirrored on each replica; a step runs the loss
    and the optimiser update on every replica (``strategy.run``), each on its slice of the global
    batch, and the EMA update once afterwards. Training length, reports and the progress bar count
    images of the global batch.
    """
    unlabeled_views = 0
    method_name = None  # set by subclasses' class creation below; DC3 keeps the method's name

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'method_name' not in cls.__dict__:
            cls.method_name = cls.__name__

    def __init__(self, dataset, labeled_size, train: TrainConfig, model: ModelConfig,
                 dc3: DC3Config, **hparams):
        self.dataset = dataset
        self.labeled_size = labeled_size
        self.train_config = train
        self.model_config = model
        resolved = dc3.with_dataset_prior(dataset.prior_ambiguity)
        if resolved is not dc3:
            print(f'note: --prior_fuzzy_distribution {dc3.prior_fuzzy_distribution:g} takes the '
                  f'dataset\'s estimate, {resolved.prior_fuzzy_distribution:.4g} (meta.json)',
                  file=sys.stderr)
        self.dc3 = resolved
        self.hparams = hparams
        self.num_classes = dataset.num_classes
        if self.unlabeled_views and not dataset.has_split('unlabeled'):
            raise DC3Error(f'{type(self).__name__} needs unlabeled images but dataset '
                           f'{dataset.name}.{dataset.seed} has none; use fully_supervised.py or '
                           'regenerate the dataset with an unlabeled split')
        if dc3.enabled and train.batch < 2:
            raise DC3Error('DC3 needs --batch >= 2: CE^-1 pairs images within a batch and L_A '
                           'ranks them')
        self.augment = data.augment.parse_augment(train.augment)
        self.precision = set_precision(train.mixed_precision)
        if train.deterministic:
            # Process-wide: deterministic kernels, and tf.data runs stateful augmentations in order.
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(train.seed)

        self.strategy = distribute.make_strategy(train.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = train.batch * self.replicas
        self.total_steps = max(1, math.ceil(train.train_kimg * 1024 / self.global_batch))
        self.class_weights = dataset.class_weights if train.use_weighted_xe else None
        heads = self.heads()
        # Resolved here, not recorded: both paths train the same network (see fused_ops).
        self.fused_bn_act = fused_ops.resolve(
            model.fused_bn_act, synchronized_replicas=bool(model.sync_bn) and self.replicas > 1)
        build = dict(arch=model.arch, image_size=dataset.image_size, heads=heads,
                     filters=model.filters, scales=model.scales, repeat=model.repeat,
                     bn_momentum=model.bn_momentum, sync_bn=model.sync_bn,
                     fused_bn_act=self.fused_bn_act)
        self.schedule = CosineDecay(train.lr, self.total_steps)
        with self.strategy.scope():  # mirrored variables, and the optimiser's all-reduce
            self.model = self.build_network('model', **build)
            self.ema_model = self.build_network('ema_model', **build)
            for ema_var, var in zip(self.ema_model.variables, self.model.variables):
                ema_var.assign(var)
            optimizer = keras.optimizers.SGD(self.schedule, momentum=0.9, nesterov=True)
            if self.precision == 'mixed_float16':
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
        self.checkpoint = tf.train.Checkpoint(model=self.model, ema_model=self.ema_model,
                                              optimizer=self.optimizer)
        self._train_step = tf.function(self.train_step)
        image_spec = tf.TensorSpec([None, dataset.image_size, dataset.image_size, 3], tf.float32)
        self._predict = {
            'ema': tf.function(lambda x: self._inference(self.ema_model, x),
                               input_signature=[image_spec]),
            'raw': tf.function(lambda x: self._inference(self.model, x),
                               input_signature=[image_spec]),
        }

    # ------------------------------------------------------------------------------------------
    # Hooks
    # ------------------------------------------------------------------------------------------

    def heads(self):
        """Output heads of the network: name -> units. DC3 adds its two heads here."""
        return {CLASS_HEAD: self.num_classes}

    def build_network(self, name, **build):
        """The Keras model trained (``name='model'``) and its EMA copy (``'ema_model'``): a dict of
        head outputs plus ``'embedding'``. A method with several sub-networks overrides this."""
        return models.build_network(name=name, **build)

    def method_metrics(self, split, pred, labeled_pred):
        """Extra evaluation metrics of a method (name -> float or None) for one split and model;
        ``labeled_pred`` is the same model's predictions on the labeled split (``train``)."""
        del split, pred, labeled_pred
        return {}

    def method_losses(self, batch, outputs, progress):
        """The method's per-sample losses as ``LossTerms``; ``progress`` runs from 0 to 1."""
        raise NotImplementedError

    def combine_losses(self, batch, outputs, terms):
        """Reduces the method's terms to one loss: ``mean(xe) + ssl_weight * mean(ssl)``."""
        total = tf.reduce_mean(terms.labeled_xe)
        if terms.ssl is not None:
            total += terms.ssl_weight * tf.reduce_mean(terms.ssl)
        return total, {}

    def views(self, outputs):
        """Which unlabeled view is the main one and which its counterpart (see ``Views``); by
        default the first and the second. Methods override it with their own choice."""
        unlabeled = outputs.unlabeled
        return Views(main=unlabeled[0] if unlabeled else None,
                     other=unlabeled[1] if len(unlabeled) > 1 else None)

    def labeled_cross_entropy(self, batch, outputs):
        """Per-sample supervised cross-entropy, class-weighted with ``--use_weighted_xe 1``."""
        return losses.cross_entropy(batch['label'], outputs.labeled[CLASS_HEAD],
                                    self.class_weights)

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------

    def forward(self, batch, training=True):
        """One pass over labeled and unlabeled images together, so batch norm sees one batch."""
        groups = [batch['image'], *batch['unlabeled']]
        out = self.model(tf.concat(groups, 0), training=training)
        sizes = [tf.shape(g)[0] for g in groups]
        parts = {name: tf.split(value, sizes) for name, value in out.items()}
        per_group = [{name: parts[name][i] for name in parts} for i in range(len(groups))]
        return Outputs(labeled=per_group[0], unlabeled=per_group[1:])

    def loss(self, batch):
        """The full loss of one batch (method, DC3, weight decay) and its scalar monitors."""
        progress = tf.cast(self.optimizer.iterations, tf.float32) / self.total_steps
        outputs = self.forward(batch)
        terms = self.method_losses(batch, outputs, progress)
        loss, monitors = self.combine_losses(batch, outputs, terms)
        loss_wd = losses.l2_regularization(self.model.trainable_variables)
        total = loss + self.train_config.wd * loss_wd
        monitors = {**terms.monitors, **monitors,
                    'losses/total': total, 'losses/xe': tf.reduce_mean(terms.labeled_xe),
                    'losses/wd': loss_wd, 'monitors/lr': self.schedule(self.optimizer.iterations),
                    'monitors/ssl_weight': tf.cast(terms.ssl_weight, tf.float32)}
        if terms.ssl is not None:
            monitors['losses/ssl'] = tf.reduce_mean(terms.ssl)
        return total, monitors

    def train_step(self, batch):
        """One optimisation step on every replica, then the EMA update; returns the monitors
        averaged over replicas (each replica's are means over its equal share of the batch)."""
        monitors = self.strategy.run(self.replica_step, args=(batch,))
        self.update_ema()  # in cross-replica context: reads and writes every mirrored copy
        return {name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in monitors.items()}

    def replica_step(self, batch):
        """Loss, gradients and optimiser update on one replica's slice of the batch."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            total, monitors = self.loss(batch)
            # Keras' optimiser sums the replicas' gradients (an all-reduce in apply_gradients):
            # each replica contributes its mean divided by their number, so the sum is the
            # gradient of the global batch's mean.
            scaled = total / self.replicas
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                scaled = self.optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return monitors

    def update_ema(self):
        """EMA of all weights (batch-norm statistics included) with a warm-up of the decay.

        ``decay_t = min(ema, (1 + t) / (10 + t))``, as tf.train.ExponentialMovingAverage does with
        ``num_updates``: identical to FixMatch's fixed decay after a few thousand steps, but a
        short run's EMA is not dominated by the random initial weights (0.999^256 = 0.77).
        """
        step = tf.cast(self.optimizer.iterations, tf.float32)
        decay = tf.minimum(self.train_config.ema, (1.0 + step) / (10.0 + step))
        for ema_var, var in zip(self.ema_model.variables, self.model.variables):
            ema_var.assign(decay * ema_var + (1.0 - decay) * var)

    def input_config(self, seed):
        """Global batches; ``train_batches`` splits them between the replicas."""
        return data.InputConfig(batch=self.global_batch, uratio=self.train_config.uratio,
                                unlabeled_views=self.unlabeled_views, augment=self.augment,
                                labeled_size=self.labeled_size, seed=seed)

    def train_batches(self, seed):
        """Iterator over training batches, each split into one slice per replica."""
        inputs = data.train_inputs(self.dataset, self.input_config(seed))
        return iter(self.strategy.experimental_distribute_dataset(inputs))

    def hyperparameters(self):
        """Everything that defines the run, flat, for args.json and the run folder name."""
        return {'method': self.method_name, 'dataset_name': self.dataset.name,
                'dataset_seed': self.dataset.seed, 'labeled_size': self.labeled_size,
                'replicas': self.replicas,
                **dataclasses.asdict(self.train_config), **dataclasses.asdict(self.model_config),
                **dataclasses.asdict(self.dc3), **self.hparams}

    def run_dir(self):
        """``<train_dir>/<dataset>/<Method>_<key hyperparameters>_<hash of all of them>``."""
        args = {k: v for k, v in self.hyperparameters().items()
                if k not in OPERATIONAL_KEYS}
        digest = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:8]
        replicas = f'x{self.replicas}' if self.replicas > 1 else ''
        short = (f'co{self.dc3.combined_output}_wol{self.dc3.wol:g}_wou{self.dc3.wou:g}'
                 f'_pA{self.dc3.prior_fuzzy_distribution:g}_f{self.model_config.filters}'
                 f'_lr{self.train_config.lr:g}_b{self.train_config.batch}{replicas}')
        return os.path.join(self.train_config.train_dir, self.train_config.dataset,
                            f'{self.method_name}_{short}_{digest}')

    def _prepare_run_dir(self):
        run_dir = self.run_dir()
        os.makedirs(run_dir, exist_ok=True)
        args = self.hyperparameters()
        args_path = os.path.join(run_dir, 'args.json')
        if os.path.exists(args_path):
            old = io_utils.read_json(args_path, 'run arguments')
            changed = sorted(k for k in set(old) | set(args)
                             if k not in OPERATIONAL_KEYS and old.get(k) != args.get(k))
            if changed:
                raise DC3Error(f'{run_dir} holds a run with other hyperparameters '
                               f'({", ".join(changed)}); use another --train_dir or delete it')
        io_utils.write_json(args_path, args)
        return run_dir

    def train(self):
        """Trains to ``train_kimg``, resuming from the run folder's latest checkpoint if any."""
        cfg = self.train_config
        run_dir = self._prepare_run_dir()
        manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(run_dir, 'ckpt'),
                                             max_to_keep=cfg.keep_ckpt)
        if manager.latest_checkpoint:
            self.checkpoint.restore(manager.latest_checkpoint).expect_partial()
            print(f'Resumed from {manager.latest_checkpoint}', file=sys.stderr)
        step = int(self.optimizer.iterations.numpy())
        writer = tf.summary.create_file_writer(os.path.join(run_dir, 'tb'))
        batch = self.global_batch
        report_every = max(1, round(cfg.report_kimg * 1024 / batch))
        save_every = max(1, round(cfg.save_kimg * 1024 / batch))
        log_every = max(1, min(report_every, round(1024 / batch)))
        eval_sets = self._eval_datasets()

        # After a resume the data order is re-seeded from the step: restoring tf.data's shuffle
        # buffer would write a copy of the dataset into every checkpoint.
        keras.utils.set_random_seed(cfg.seed + step)
        iterator = self.train_batches(cfg.seed + step)
        sums, count, skips = {}, 0, 0
        bar = tqdm.tqdm(total=self.total_steps * batch, initial=step * batch, unit='img',
                        unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                        mininterval=1 if sys.stderr.isatty() else 30, desc=os.path.basename(run_dir))
        start = time.time()
        while step < self.total_steps:
            monitors = self._train_step(next(iterator))
            if not np.isfinite(monitors['losses/total'].numpy()):
                step, skips = self._diverged(step, monitors, manager, skips)
                continue
            skips = 0
            step += 1
            bar.update(batch)
            for name, value in monitors.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
            if step % log_every == 0 or step == self.total_steps:
                means = {name: float(total.numpy()) / count for name, total in sums.items()}
                means['monitors/img_per_sec'] = count * batch / (time.time() - start)
                with writer.as_default(step=step * batch):
                    for name, value in means.items():
                        tf.summary.scalar(name, value)
                bar.set_postfix(loss=f'{means["losses/total"]:.3f}')
                sums, count, start = {}, 0, time.time()
            if step % save_every == 0 or step == self.total_steps:
                manager.save(checkpoint_number=step)
            if step % report_every == 0 or step == self.total_steps:
                self.report(run_dir, step, eval_sets, writer,
                            embeddings=step == self.total_steps)
        bar.close()
        writer.flush()
        return run_dir

    def _diverged(self, step, monitors, manager, skips):
        """A non-finite loss: stop (default) or rewind to the last checkpoint and go on."""
        terms = ', '.join(f'{k}={float(v.numpy()):.4g}' for k, v in sorted(monitors.items())
                          if k.startswith(('losses/', 'dc3/')))
        where = f'non-finite loss at step {step + 1} ({terms})'
        if self.train_config.nan_policy == 'stop' or skips >= MAX_CONSECUTIVE_SKIPS:
            kept = manager.latest_checkpoint or 'none saved yet'
            raise DC3Error(f'{where}; stopped, last good checkpoint: {kept}; lower --lr, check '
                           'the data, or pass --nan_policy skip')
        # Batch-norm statistics of the bad batch are already in the model: rewind everything.
        if manager.latest_checkpoint:
            self.checkpoint.restore(manager.latest_checkpoint).expect_partial()
        print(f'warning: {where}; skipped, resuming from step '
              f'{int(self.optimizer.iterations.numpy())}', file=sys.stderr)
        return int(self.optimizer.iterations.numpy()), skips + 1

    # ------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------

    def _inference(self, model, images):
        out = model(images, training=False)
        result = {'probs': tf.nn.softmax(out[CLASS_HEAD]), 'embedding': out['embedding']}
        if OVERCLUSTER_HEAD in out:
            result['cluster_probs'] = tf.nn.softmax(out[OVERCLUSTER_HEAD])
        if AMBIGUITY_HEAD in out:
            result['ambiguity'] = tf.sigmoid(out[AMBIGUITY_HEAD][:, 0])
        return result

    def _eval_datasets(self):
        """Ordered, cached evaluation passes over every split the dataset has."""
        return {split: data.eval_inputs(self.dataset, split, self.train_config.eval_batch)
                for split in ('train', 'unlabeled', 'val', 'test')
                if self.dataset.has_split(split)}

    def predict(self, dataset, which='ema'):
        """Runs one model over a split: dict of NumPy arrays (outputs and record fields)."""
        columns = {}
        for batch in dataset:
            out = self._predict[which](batch['image'])
            for name, value in list(out.items()) + [(k, batch[k]) for k in
                                                    ('label', 'soft_label', 'path', 'index')]:
                columns.setdefault(name, []).append(value.numpy())
        return {name: np.concatenate(parts) for name, parts in columns.items()}

    def report(self, out_dir, step, eval_sets, writer=None, embeddings=False):
        """Evaluates raw and EMA weights on every split; writes metrics, CSVs and summaries."""
        images = step * self.global_batch
        report_dir = os.path.join(out_dir, 'reports', f'img{images:010d}')
        result = {'images': images, 'kimg': images / 1024, 'step': step, 'splits': {}}
        predictions, labeled = {}, {}
        for split, dataset in eval_sets.items():  # 'train' (the labeled images) comes first
            result['splits'][split] = {}
            for which in ('ema', 'raw'):
                pred = self.predict(dataset, which)
                if split == 'train':
                    labeled[which] = pred
                result['splits'][split][which] = {
                    **metrics.split_metrics(pred['label'], pred['soft_label'], pred['probs'],
                                            cluster_ids(pred), pred.get('ambiguity')),
                    **self.method_metrics(split, pred, labeled.get(which))}
                if which == 'ema':
                    predictions[split] = pred
        if writer is not None:
            with writer.as_default(step=images):
                for split, per_model in result['splits'].items():
                    for which, values in per_model.items():
                        for name, value in values.items():
                            if value is not None and not isinstance(value, str):
                                tf.summary.scalar(f'{split}/{which}/{name}', float(value))
            writer.flush()
        with io_utils.atomic_path(report_dir) as tmp:
            os.makedirs(tmp)
            for split, pred in predictions.items():
                write_predictions(os.path.join(tmp, f'{split}.csv'), split, pred)
                if embeddings:
                    np.save(os.path.join(tmp, f'{split}_embeddings.npy'),
                            pred['embedding'].astype(np.float32))
            io_utils.write_json(os.path.join(tmp, 'metrics.json'), {
                **result, 'classes': list(self.dataset.classes),
                'has_ambiguity_head': self.dc3.ambiguity_head,
                'num_clusters': self.heads().get(OVERCLUSTER_HEAD, self.num_classes)})
        with open(os.path.join(out_dir, 'metrics.jsonl'), 'a', encoding='utf-8') as f:
            f.write(json.dumps(result, sort_keys=True) + '\n')
        val = result['splits'].get('val', {}).get('ema', {})
        tqdm.tqdm.write(f'kimg {images / 1024:.1f}: ' + ' '.join(
            f'{k}={_fmt(val.get(k))}' for k in ('accuracy', 'f1_certain', 'inner_distance',
                                                 'd_minus_f1', 'ambiguous_share')),
            file=sys.stderr)
        return result

    def evaluate_checkpoint(self, checkpoint_path):
        """``--eval_ckpt``: loads one checkpoint and writes its report next to the run folder."""
        if not tf.io.gfile.exists(checkpoint_path + '.index'):
            raise DC3Error(f'checkpoint {checkpoint_path} not found (give the path without '
                           '.index, e.g. RUN/ckpt/ckpt-1000)')
        self.checkpoint.restore(checkpoint_path).expect_partial()
        step = int(self.optimizer.iterations.numpy())
        out_dir = os.path.join(os.path.dirname(os.path.dirname(checkpoint_path)), 'eval',
                               os.path.basename(checkpoint_path))
        os.makedirs(out_dir, exist_ok=True)
        self.report(out_dir, step, self._eval_datasets(), embeddings=True)
        return out_dir


def cluster_ids(pred):
    """argmax p_o where the network has an overclustering head, else argmax p_n."""
    return np.argmax(pred.get('cluster_probs', pred['probs']), axis=1)


def write_predictions(path, split, pred):
    """One CSV row per image: record fields, soft label, p_n, cluster, p_a, final output and p_o."""
    probs = pred['probs']
    clusters = pred.get('cluster_probs', probs)
    ambiguity = pred.get('ambiguity')
    k = probs.shape[1]
    is_cluster = (ambiguity >= 0.5) if ambiguity is not None else np.zeros(len(probs), bool)
    frame = {'path': [p.decode('utf-8') if isinstance(p, bytes) else p for p in pred['path']],
             'split': split, 'index': pred['index'], 'label': pred['label']}
    frame.update({f'soft_{c}': pred['soft_label'][:, c] for c in range(k)})
    frame.update({f'prob_{c}': probs[:, c] for c in range(k)})
    frame['cluster'] = np.argmax(clusters, axis=1)
    frame['cluster_prob'] = np.max(clusters, axis=1)
    frame['ambiguity'] = ambiguity if ambiguity is not None else np.nan
    frame['output_kind'] = np.where(is_cluster, 'cluster', 'class')
    frame['output'] = np.where(is_cluster, frame['cluster'], np.argmax(probs, axis=1))
    if 'cluster_probs' in pred:
        # The full p_o (k' values), appended after the existing columns: the DCIC export needs
        # every cluster confidence, not only the argmax above.
        frame.update({f'cluster_prob_{j}': clusters[:, j] for j in range(clusters.shape[1])})
    pd.DataFrame(frame).to_csv(path, index=False, float_format='%.6g')


def _fmt(value):
    return 'n/a' if value is None else f'{100 * value:.2f}' if isinstance(value, float) else value

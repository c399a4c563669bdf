"""The SSL method: its network, hyperparameters, hooks, loss and training step.

A method subclasses ``SSLMethod``, sets ``unlabeled_views``, declares its hyperparameters as a
frozen dataclass ``Params`` (fields made with ``libml.hparams.field``: the command-line flags are
generated from them, see ``cli.py``) and implements ``method_losses``. DC3 composes with any method
through ``libml.dc3.with_dc3``, which overrides ``heads``, ``combine_losses`` and the run's name;
the base knows nothing of DC3. The training loop is ``libml.trainer``, evaluation
``libml.evaluation``, the run folder's files ``libml.run_files``. Call
``libml.trainer.configure_process`` (precision policy, determinism, seeds) before building a
method.
"""
import dataclasses
import math

import keras
import tensorflow as tf

from libml import data, distribute, fused_ops, losses, models, records, run_files, trainer
from libml.errors import DC3Error
from libml.hparams import NoParams, make_params
from libml.models import CLASS_HEAD


@dataclasses.dataclass
class Outputs:
    """Network outputs split by subset: dicts of head name -> tensor."""
    labeled: dict
    unlabeled: list             # one dict per unlabeled view; None: one the student does not see
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


def warmup(progress, warmup_pos):
    """Linear ramp from 0 to 1 over the first ``warmup_pos`` of training."""
    if warmup_pos <= 0:
        return tf.constant(1.0)
    return tf.clip_by_value(progress / warmup_pos, 0.0, 1.0)


class SSLMethod:
    """Base class of every method: owns the networks, the optimiser and the training step.

    Under ``--strategy mirrored`` every variable is mirrored on each replica; a step runs the loss
    and the optimiser update on every replica (``strategy.run``), each on its slice of the global
    batch, and the EMA update once afterwards. Training length, reports and the progress bar count
    images of the global batch.
    """
    unlabeled_views = 0
    Params = NoParams
    flag_defaults = {}  # shared flags whose default this method changes, e.g. FixMatch's uratio
    composes_with_dc3 = True  # False: a framework of its own (FOC); DC3 flags are refused
    method_name = None  # set by subclasses' class creation below; DC3 keeps the method's name

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'method_name' not in cls.__dict__:
            cls.method_name = cls.__name__

    def __init__(self, dataset, labeled_size, train: trainer.TrainConfig,
                 model: models.ModelConfig, **hparams):
        self.dataset = dataset
        self.labeled_size = labeled_size
        self.train_config = train
        self.model_config = model
        self.params = make_params(self.Params, hparams)
        self.num_classes = dataset.num_classes
        if self.unlabeled_views and not dataset.has_split('unlabeled'):
            raise DC3Error(f'{type(self).__name__} needs unlabeled images but dataset '
                           f'{dataset.name}.{dataset.seed} has none; use fully_supervised.py or '
                           'regenerate the dataset with an unlabeled split')
        self.augment = data.augment.parse_augment(train.augment)
        self.precision = keras.mixed_precision.global_policy().name  # trainer.configure_process

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
        self.schedule = trainer.CosineDecay(train.lr, self.total_steps)
        with self.strategy.scope():  # mirrored variables, and the optimiser's all-reduce
            self.model = self.build_network('model', **build)
            self.moving_statistics = models.moving_statistics(self.model)
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
            'ema': tf.function(lambda x: self.inference(self.ema_model, x),
                               input_signature=[image_spec]),
            'raw': tf.function(lambda x: self.inference(self.model, x),
                               input_signature=[image_spec]),
        }

    @classmethod
    def adjust_train_config(cls, train_config, params, explicit):
        """The training configuration the method needs, given its ``params`` and the flags given
        on the command line (``explicit``); e.g. FOC derives ``uratio``. By default unchanged."""
        del params, explicit
        return train_config

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

    def inference(self, model, images):
        """``model`` in inference mode on ``images``, reduced by ``inference_outputs``."""
        return self.inference_outputs(model(images, training=False))

    def inference_outputs(self, out):
        """What evaluation keeps of the network's outputs: ``probs`` (p_n) and ``embedding``;
        methods with more heads add theirs (``cluster_probs`` p_o, ``ambiguity`` p_a)."""
        return {'probs': tf.nn.softmax(out[CLASS_HEAD]), 'embedding': out['embedding']}

    @property
    def has_ambiguity_head(self):
        return False

    @property
    def num_clusters(self):
        """Size of the clustering output reports name clusters by (p_n's without one)."""
        return self.num_classes

    # ------------------------------------------------------------------------------------------
    # Training step
    # ------------------------------------------------------------------------------------------

    def forward(self, batch, training=True):
        """The network on the labeled images and on each unlabeled view.

        ``--bn_batches joint``: one call on all of them, so batch norm normalises them as one
        batch (FixMatch's way). ``per_subset``: one call per subset, as the original DC3 code's
        Mean Teacher, Pi-model, Pseudo-Label and ``ce.py`` do; each subset is normalised with its
        own moments, and the moving statistics keep the labeled call's update only (the original
        collects the update ops of that call alone).
        """
        groups = [batch['image'], *batch['unlabeled']]
        if self.model_config.bn_batches == 'per_subset':
            labeled = self.model(groups[0], training=training)
            after_labeled = [tf.identity(v) for v in self.moving_statistics]
            unlabeled = [self.model(g, training=training) for g in groups[1:]]
            if training:  # undo the unlabeled calls' updates (program order orders the ops)
                for var, value in zip(self.moving_statistics, after_labeled):
                    var.assign(value)
            return Outputs(labeled=labeled, unlabeled=unlabeled)
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
        # Every worker of a cluster builds the same seeded pipeline and keeps its replicas'
        # slices of each global batch: each split is one TFRecord file, so sharding by file
        # (the default) would leave all but one worker without data.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return iter(self.strategy.experimental_distribute_dataset(inputs.with_options(options)))

    # ------------------------------------------------------------------------------------------
    # The run
    # ------------------------------------------------------------------------------------------

    def hyperparameters(self):
        """Everything that defines the run, flat, for args.json and the run folder name."""
        return {'method': self.method_name, 'dataset_name': self.dataset.name,
                'dataset_seed': self.dataset.seed, 'labeled_size': self.labeled_size,
                'dataset_fingerprint': records.dataset_fingerprint(self.dataset.directory),
                'replicas': self.replicas,
                **dataclasses.asdict(self.train_config), **dataclasses.asdict(self.model_config),
                **dataclasses.asdict(self.params)}

    def name_fields(self):
        """The key hyperparameters in the run folder's name (DC3 puts its own in front)."""
        replicas = f'x{self.replicas}' if self.replicas > 1 else ''
        return (f'f{self.model_config.filters}_lr{self.train_config.lr:g}'
                f'_b{self.train_config.batch}{replicas}')

    def run_dir(self):
        """``<train_dir>/<dataset>/<Method>_<key hyperparameters>_<hash of all of them>``."""
        return run_files.run_dir(self.train_config.train_dir, self.train_config.dataset,
                                 self.method_name, self.name_fields(), self.hyperparameters())

    def resolve_run_dir(self):
        """``run_dir()``, or the folder an older version of this code named for the same run
        where only that exists (``run_files.resolve_run_dir``)."""
        return run_files.resolve_run_dir(self.run_dir(), self.method_name, self.hyperparameters())

    def train(self):
        """Trains to ``train_kimg``, resuming from the run folder's latest checkpoint if any."""
        return trainer.train(self)

    def evaluate_checkpoint(self, checkpoint_path):
        """``--eval_ckpt``: loads one checkpoint and writes its report next to the run folder."""
        return trainer.evaluate_checkpoint(self, checkpoint_path)

"""Networks: FixMatch's ResNet backbone with any number of named linear heads on its embedding.

Every network returns a dict: ``'embedding'`` (the pooled features) plus one entry per head, e.g.
``'logits'`` for the classifier. DC3 adds ``'overcluster_logits'`` and ``'ambiguity_logit'`` as
separate named layers, so checkpoints, summaries and gradients can address each head by name.
"""
import dataclasses
import math

import keras
import tensorflow as tf
from keras import layers

from libml import distribute, fused_ops, hparams
from libml.errors import DC3Error

BN_BATCHES = ('joint', 'per_subset')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network's shape and kernels (the flags of the same names)."""
    arch: str = hparams.field('resnet', 'Backbone architecture.', choices=('resnet',))
    filters: int = hparams.field(32, 'Width of the first ResNet stage.')
    scales: int = hparams.field(0, 'Number of ResNet stages (0: log2(image size) - 2).')
    repeat: int = hparams.field(4, 'Residual blocks per stage.')
    bn_momentum: float = hparams.field(
        0.999, 'Batch-norm momentum; 0.999 (FixMatch) suits long runs, use ~0.99 for runs of a '
               'few thousand steps.')
    sync_bn: int = hparams.field(0, '1: with several replicas, batch norm uses the moments of the '
                                    'global batch (as one device would); 0: each replica its own.')
    fused_bn_act: str = hparams.field(
        'auto', 'Train batch norm + leaky ReLU as one CPU op (built with g++ on first use; 1.3x '
                'faster bf16 steps on AMX CPUs). auto: when no GPU is visible and it builds; on: '
                'required; off: TensorFlow\'s kernels.', choices=fused_ops.MODES)
    bn_batches: str = hparams.field(
        'joint', 'joint: the labeled images and every unlabeled view through the network in one '
                 'call, so batch norm normalises them as one batch (FixMatch); per_subset: one '
                 'call per subset, each normalised with its own moments, the moving statistics '
                 'from the labeled call only (the original DC3 code\'s Mean Teacher, Pi-model, '
                 'Pseudo-Label and supervised baseline).', choices=BN_BATCHES)

    def __post_init__(self):
        if not 1 <= self.filters <= 4096:
            raise DC3Error(f'--filters must be in [1, 4096], got {self.filters}')
        if not 0 <= self.scales <= 8:
            raise DC3Error(f'--scales must be in [0, 8] (0: log2(image size) - 2), '
                           f'got {self.scales}')
        if not 1 <= self.repeat <= 64:
            raise DC3Error(f'--repeat must be in [1, 64], got {self.repeat}')
        if not 0 <= self.bn_momentum < 1:  # also refuses NaN
            raise DC3Error(f'--bn_momentum must be in [0, 1), got {self.bn_momentum}')
        if self.sync_bn not in (0, 1):
            raise DC3Error(f'--sync_bn must be 0 or 1, got {self.sync_bn}')
        hparams.check_choices(self)

CLASS_HEAD = 'logits'
ARCHITECTURES = ('resnet',)


def _conv(filters, kernel, stride=1, name=None):
    # FixMatch's initialisation: normal with std sqrt(2 / (k * k * filters)) (fan-out He init).
    init = keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (kernel * kernel * filters)))
    # No bias: in this pre-activation ResNet every convolution feeds a batch norm, which cancels a
    # bias (its gradient is zero), so it would only cost memory and time.
    return layers.Conv2D(filters, kernel, strides=stride, padding='same', use_bias=False,
                         kernel_initializer=init, name=name)


class FusedBatchNormalization(layers.Layer):
    """Batch normalisation over the channel axis of NHWC tensors with TensorFlow's fused kernel.

    Same parameters and semantics as ``keras.layers.BatchNormalization`` (gamma, beta, moving mean
    and variance updated with ``momentum``), but one fused op instead of Keras 3's moments +
    elementwise ops + float32 casts: the training step is 1.3x faster in float32 and 2x faster
    under mixed bfloat16 on this codebase's CPU benchmark (BENCHMARKS.md). The kernel takes bf16
    or fp16 activations with float32 statistics, so no casts surround it.
    The moving variance is updated with the kernel's batch variance, which carries Bessel's
    correction n / (n - 1) (n = batch x height x width); Keras uses the biased one.

    ``synchronized``: with several replicas (``tf.distribute``), normalise training batches with the
    moments of the global batch (all-reduced, and differentiated through the all-reduce), so that
    results match one device with the global batch. The fused kernel cannot take given moments in
    training mode, so that path uses ``tf.nn.batch_normalization``. Without it every replica
    normalises with its own batch. Either way the moving statistics are averaged over replicas
    (``aggregation='mean'``, which also lets replicas assign them).

    ``leaky_relu``: a slope, to also apply leaky ReLU; in training (on one replica, or without
    ``synchronized``) batch norm and activation then run as one op (``libml.fused_ops``).
    """

    def __init__(self, momentum=0.999, epsilon=1e-3, synchronized=False, leaky_relu=None,
                 **kwargs):
        # The variables stay float32 even under a mixed policy: the kernel wants them so.
        super().__init__(autocast=False, **kwargs)
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized = synchronized
        self.leaky_relu = leaky_relu

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer='ones', name='gamma')
        self.beta = self.add_weight(shape=channels, initializer='zeros', name='beta')
        self.moving_mean = self.add_weight(shape=channels, initializer='zeros', name='moving_mean',
                                           trainable=False, aggregation='mean')
        self.moving_variance = self.add_weight(shape=channels, initializer='ones',
                                               name='moving_variance', trainable=False,
                                               aggregation='mean')

    def call(self, inputs, training=False):
        # Explicit float32: Keras autocasts variables of a layer called on its own under a mixed
        # policy even with autocast=False (inside a model the parent's scope prevents it).
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        if training:
            replicas = distribute.several_replicas() if self.synchronized else None
            if replicas is None and self.leaky_relu is not None:
                outputs, mean, variance, _ = fused_ops.load().batch_norm_leaky_relu(
                    inputs, gamma, beta, epsilon=self.epsilon, alpha=self.leaky_relu)
                self._update_moving_statistics(mean, variance)
                return outputs
            if replicas is None:
                outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                    inputs, gamma, beta, epsilon=self.epsilon, is_training=True)
            else:
                outputs, mean, variance = self._synchronized_batch_norm(inputs, gamma, beta,
                                                                        replicas)
            self._update_moving_statistics(mean, variance)
            return self._activation(outputs)
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
            is_training=False)
        return self._activation(outputs)

    def _update_moving_statistics(self, mean, variance):
        decay = 1.0 - self.momentum
        self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
        self.moving_variance.assign_sub((self.moving_variance - variance) * decay)

    def _activation(self, outputs):
        if self.leaky_relu is None:
            return outputs
        return tf.nn.leaky_relu(outputs, alpha=self.leaky_relu)

    def _synchronized_batch_norm(self, inputs, gamma, beta, replicas):
        """(outputs, mean, Bessel-corrected variance) with moments of every replica's batch.

        Two passes (mean, then squared deviations) for the same accuracy as the fused kernel.
        """
        x = tf.cast(inputs, tf.float32)
        axes = [0, 1, 2]
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]) * replicas.num_replicas_in_sync,
                        tf.float32)
        sum_op = tf.distribute.ReduceOp.SUM
        mean = replicas.all_reduce(sum_op, tf.reduce_sum(x, axes)) / count
        variance = replicas.all_reduce(sum_op, tf.reduce_sum(tf.square(x - mean), axes)) / count
        outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)
        return (tf.cast(outputs, inputs.dtype), mean,
                variance * count / tf.maximum(count - 1.0, 1.0))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), 'momentum': self.momentum, 'epsilon': self.epsilon,
                'synchronized': self.synchronized, 'leaky_relu': self.leaky_relu}


LEAKY_RELU_SLOPE = 0.1


def _bn_relu(x, bn):
    bn = dict(bn)
    if bn.pop('fused'):
        x = FusedBatchNormalization(epsilon=1e-3, leaky_relu=LEAKY_RELU_SLOPE, **bn)(x)
        # Holds the activation's place: checkpoints address layers by position, so both paths
        # keep the same layers and restore each other's checkpoints.
        return layers.Identity()(x)
    x = FusedBatchNormalization(epsilon=1e-3, **bn)(x)
    return layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE)(x)


def _residual(x0, filters, bn, stride=1, activate_before_residual=False):
    x = _bn_relu(x0, bn)
    if activate_before_residual:
        x0 = x
    x = _conv(filters, 3, stride)(x)
    x = _bn_relu(x, bn)
    x = _conv(filters, 3)(x)
    if x0.shape[-1] != filters:
        x0 = _conv(filters, 1, stride)(x0)
    return layers.Add()([x0, x])


def default_scales(image_size):
    """FixMatch's rule: log2(width) - 2 downscalings (3 for 32 px, 4 for 96 px)."""
    return max(1, int(math.log2(image_size)) - 2)


def build_network(arch, image_size, heads, filters=32, scales=0, repeat=4, bn_momentum=0.999,
                  sync_bn=0, fused_bn_act=False, name='network'):
    """Builds a Keras model mapping images in [-1, 1] to ``{'embedding': ..., <head>: logits}``.

    Args:
      arch: backbone name; only ``'resnet'`` (FixMatch's WRN-style ResNet) exists.
      image_size: input height and width.
      heads: dict ``{output name: number of units}``; each becomes a separate Dense layer,
        initialised as one Glorot-normal layer with all the heads' units would be (the original
        code's single layer of k + k' + 1 outputs, sliced): std sqrt(2 / (fan_in + all units)).
      filters, scales, repeat: width, number of stages (0 = ``default_scales``) and blocks per stage.
      bn_momentum: batch-norm moving-average momentum; FixMatch's 0.999 suits runs of 10^5+
        steps, a short run needs less (e.g. 0.99) or its evaluation uses stale statistics.
      sync_bn: 1 to normalise with the moments of all replicas' batches (see
        ``FusedBatchNormalization``); no effect on one device.
      fused_bn_act: True to train every batch norm + leaky ReLU pair as one CPU op
        (``libml.fused_ops``; ``fused_ops.resolve`` decides when that is possible).
    """
    if arch not in ARCHITECTURES:
        raise DC3Error(f'unknown --arch {arch!r}; choose one of {", ".join(ARCHITECTURES)}')
    scales = scales or default_scales(image_size)
    bn = {'momentum': bn_momentum, 'synchronized': bool(sync_bn), 'fused': bool(fused_bn_act)}
    inputs = keras.Input((image_size, image_size, 3), name='image')
    y = _conv(16, 3)(inputs)
    for scale in range(scales):
        y = _residual(y, filters << scale, bn, stride=2 if scale else 1,
                      activate_before_residual=scale == 0)
        for _ in range(repeat - 1):
            y = _residual(y, filters << scale, bn)
    y = _bn_relu(y, bn)
    # Heads and embedding stay float32 under mixed precision: losses need full-precision logits.
    embedding = layers.GlobalAveragePooling2D(name='embedding', dtype='float32')(y)
    outputs = {'embedding': embedding}
    fan_in, all_units = embedding.shape[-1], sum(heads.values())
    for head, units in heads.items():
        # Glorot's fan_avg variance 2 / (fan_in + units), rescaled to 2 / (fan_in + all_units).
        init = keras.initializers.VarianceScaling(
            scale=(fan_in + units) / (fan_in + all_units), mode='fan_avg',
            distribution='truncated_normal')
        outputs[head] = layers.Dense(units, name=head, dtype='float32',
                                     kernel_initializer=init)(embedding)
    return keras.Model(inputs, outputs, name=name)


def moving_statistics(model):
    """The batch-norm moving means and variances of ``model``."""
    return [v for v in model.non_trainable_variables
            if v.name in ('moving_mean', 'moving_variance')]

"""The network: fused batch norm against Keras' own layer, heads, shapes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from libml import models


@pytest.fixture
def keras_and_fused():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (8, 5, 5, 4)), tf.float32)
    reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    fused = models.FusedBatchNormalization(momentum=0.9, epsilon=1e-3)
    reference.build(x.shape)
    fused.build(x.shape)
    gamma, beta = rng.uniform(0.5, 2, 4), rng.normal(size=4)
    for layer in (reference, fused):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return x, reference, fused


def test_fused_batch_norm_trains_like_keras(keras_and_fused):
    x, reference, fused = keras_and_fused
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = [layer(x, training=True) for layer in (reference, fused)]
        losses = [tf.reduce_sum(tf.sin(y)) for y in outputs]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4)
    for wrt in ((x,), (reference.gamma, fused.gamma), (reference.beta, fused.beta)):
        grads = [tape.gradient(loss, w) for loss, w in zip(losses, wrt if len(wrt) == 2 else wrt * 2)]
        np.testing.assert_allclose(grads[1], grads[0], rtol=1e-3, atol=1e-4)
    n = 8 * 5 * 5
    np.testing.assert_allclose(fused.moving_mean, reference.moving_mean, atol=1e-5)
    # Keras updates with the biased batch variance, the fused kernel with the unbiased one.
    np.testing.assert_allclose(fused.moving_variance - 0.9,
                               (reference.moving_variance - 0.9) * n / (n - 1), rtol=1e-4)


def test_fused_batch_norm_inference_uses_moving_statistics(keras_and_fused):
    x, reference, fused = keras_and_fused
    for layer in (reference, fused):
        layer.moving_mean.assign([1.0, -1.0, 0.5, 2.0])
        layer.moving_variance.assign([4.0, 1.0, 0.25, 9.0])
    np.testing.assert_allclose(fused(x, training=False), reference(x, training=False), atol=1e-4)


def test_fused_batch_norm_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
        inputs = keras.Input((3, 3, 2))
        layer = models.FusedBatchNormalization()
        model = keras.Model(inputs, layer(keras.layers.Identity()(inputs)))
        y = model(tf.random.normal((4, 3, 3, 2), 5.0, 2.0), training=True)
        assert y.dtype == tf.bfloat16 and layer.gamma.dtype == 'float32'
        per_channel = tf.reduce_mean(tf.cast(y, tf.float32), axis=[0, 1, 2])
        np.testing.assert_allclose(per_channel, 0.0, atol=0.05)  # normalised
    finally:
        keras.mixed_precision.set_global_policy('float32')


def test_network_has_one_named_output_per_head():
    net = models.build_network('resnet', 16, {'logits': 3, 'ambiguity_logit': 1}, filters=4,
                               scales=2, repeat=1)
    out = net(tf.zeros((2, 16, 16, 3)), training=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        'embedding': (2, 8), 'logits': (2, 3), 'ambiguity_logit': (2, 1)}
    assert net.get_layer('ambiguity_logit').kernel.shape == (8, 1)


def test_heads_are_initialised_as_one_combined_glorot_layer():
    # The original's single dense layer of k + k' + 1 outputs has std sqrt(2 / (fan_in + all));
    # each of our named heads is drawn with that std. A vanilla network (one head) keeps Glorot's.
    keras.utils.set_random_seed(0)
    heads = {'logits': 10, 'overcluster_logits': 50, 'ambiguity_logit': 1}
    net = models.build_network('resnet', 16, heads, filters=16, scales=3, repeat=1)
    fan_in = net.get_layer('logits').kernel.shape[0]
    expected = np.sqrt(2 / (fan_in + 61))
    for head in ('logits', 'overcluster_logits'):
        std = np.std(net.get_layer(head).kernel.numpy())
        assert std == pytest.approx(expected, rel=0.12), head
    vanilla = models.build_network('resnet', 16, {'logits': 10}, filters=16, scales=3, repeat=1)
    std = np.std(vanilla.get_layer('logits').kernel.numpy())
    assert std == pytest.approx(np.sqrt(2 / (fan_in + 10)), rel=0.12)
    assert std > 1.2 * expected  # the two really differ at this fan_in

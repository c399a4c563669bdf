"""The benchmark's fused batch norm + leaky ReLU op (bench/fused_op.py) against NumPy in float64.

The op is an experiment (BENCHMARKS.md section 5), not used in training, but its timing only
means something if it computes the same thing as TensorFlow's two kernels.
"""
import shutil

import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.skipif(shutil.which('g++') is None, reason='needs a C++ compiler')

ALPHA, EPS = 0.1, 1e-3


@pytest.fixture(scope='module')
def ops():
    from bench import fused_op
    return fused_op.load()


def reference(x, dy, gamma, beta):
    """Forward and gradient of leaky_relu(batch_norm(x)) over all but the last axis, float64."""
    c = x.shape[-1]
    x, dy = x.reshape(-1, c).astype(np.float64), dy.reshape(-1, c).astype(np.float64)
    m = x.shape[0]
    mean, var = x.mean(0), x.var(0)
    inv = 1 / np.sqrt(var + EPS)
    xhat = (x - mean) * inv
    z = gamma * xhat + beta
    y = np.where(z > 0, z, ALPHA * z)
    g = dy * np.where(z > 0, 1.0, ALPHA)
    dbeta, dgamma = g.sum(0), (g * xhat).sum(0)
    dx = gamma * inv * (g - dbeta / m - xhat * dgamma / m)
    return dict(y=y, mean=mean, var=var * m / (m - 1), dx=dx, dgamma=dgamma, dbeta=dbeta, z=z)


def run(ops, x, dy, gamma, beta, dtype):
    xt = tf.cast(tf.constant(x), dtype)
    y, mean, var, inv = ops.batch_norm_leaky_relu(xt, gamma, beta, epsilon=EPS, alpha=ALPHA)
    dx, dgamma, dbeta = ops.batch_norm_leaky_relu_grad(tf.cast(tf.constant(dy), dtype), xt, gamma,
                                                       beta, mean, inv, alpha=ALPHA)
    out = dict(y=y, mean=mean, var=var, dx=dx, dgamma=dgamma, dbeta=dbeta)
    return {k: tf.cast(v, tf.float32).numpy().reshape(-1, x.shape[-1]) if v.shape.rank > 1
            else v.numpy() for k, v in out.items()}


def inputs(shape, seed, offset=0.5):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = (rng.normal(size=shape) * 2 + offset).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = (rng.normal(size=c) * 0.3).astype(np.float32)
    return x, dy, gamma, beta


# 7 x 5 x 3 = 105 rows: not a multiple of the op's 64-row chunks or of its blocks.
@pytest.mark.parametrize('shape', [(7, 5, 3, 6), (300, 16), (2, 33, 33, 32)])
def test_float32_matches_numpy(ops, shape):
    x, dy, gamma, beta = inputs(shape, seed=0)
    got, want = run(ops, x, dy, gamma, beta, tf.float32), reference(x, dy, gamma, beta)
    c = shape[-1]
    for key in ('mean', 'var', 'dgamma', 'dbeta'):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(got['y'], want['y'].reshape(-1, c), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got['dx'], want['dx'].reshape(-1, c), rtol=1e-4, atol=1e-5)


def test_variance_is_accurate_far_from_zero(ops):
    """Shifted sums: a mean of 1000 with unit spread must not lose the variance to cancellation."""
    x, dy, gamma, beta = inputs((64, 8, 8, 4), seed=1, offset=1000.0)
    got, want = run(ops, x, dy, gamma, beta, tf.float32), reference(x, dy, gamma, beta)
    np.testing.assert_allclose(got['var'], want['var'], rtol=1e-4)


def test_bfloat16_matches_numpy_to_its_precision(ops):
    x, dy, gamma, beta = inputs((16, 8, 8, 32), seed=2)
    # The reference sees the same bf16-rounded inputs the op sees.
    x = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    dy = tf.cast(tf.cast(dy, tf.bfloat16), tf.float32).numpy()
    got, want = run(ops, x, dy, gamma, beta, tf.bfloat16), reference(x, dy, gamma, beta)
    np.testing.assert_allclose(got['mean'], want['mean'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got['dbeta'], want['dbeta'], rtol=1e-4, atol=1e-3)
    # Outputs are rounded to bf16 (8 significant bits): relative error <= 2^-8.
    np.testing.assert_allclose(got['y'], want['y'], rtol=2 ** -8, atol=1e-6)
    np.testing.assert_allclose(got['dx'], want['dx'], rtol=2 ** -7, atol=2e-3)


def test_layer_gradient_and_moving_statistics_match_the_projects_layers(ops):
    """The --ab fused_act layer trains like FusedBatchNormalization + LeakyReLU."""
    from bench import fused_op
    from libml import models
    x, dy, _, _ = inputs((8, 6, 6, 5), seed=3)
    fused = fused_op.bn_leaky_relu_layer()(momentum=0.9, epsilon=EPS)
    plain = models.FusedBatchNormalization(momentum=0.9, epsilon=EPS)
    results = []
    for layer, act in ((fused, lambda t: t), (plain, lambda t: tf.nn.leaky_relu(t, ALPHA))):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 5))
        layer.beta.assign(np.linspace(-0.3, 0.3, 5))
        with tf.GradientTape() as tape:
            xt = tf.constant(x)
            tape.watch(xt)
            loss = tf.reduce_sum(act(layer(xt, training=True)) * dy)
        grads = tape.gradient(loss, [xt, layer.gamma, layer.beta])
        inference = act(layer(xt, training=False))
        results.append([g.numpy() for g in grads] + [layer.moving_mean.numpy(),
                                                     layer.moving_variance.numpy(),
                                                     inference.numpy()])
    for name, a, b in zip(['dx', 'dgamma', 'dbeta', 'moving_mean', 'moving_variance',
                           'inference'], *results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)
    assert not np.allclose(results[0][3], 0)  # the moving mean did move


def test_bad_shapes_are_refused(ops):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        ops.batch_norm_leaky_relu(tf.zeros([4, 3]), tf.ones([2]), tf.zeros([2]))


def test_a_failed_build_says_why_in_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    from bench import fused_op
    broken = tmp_path / 'broken.cc'
    broken.write_text('this is not C++;\n')
    out = tmp_path / 'kernels'
    monkeypatch.setattr(fused_op, 'SOURCE', str(broken))
    monkeypatch.setattr(fused_op, 'BUILD_DIR', str(out))
    with pytest.raises(fused_op.BuildError) as failed:
        fused_op.build()
    assert 'error' in str(failed.value) and '\n' not in str(failed.value)
    assert list(out.iterdir()) == []  # the temporary library was removed
    with pytest.raises(fused_op.BuildError, match='not found'):
        fused_op.build(compiler='no-such-compiler')

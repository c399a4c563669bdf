"""The fused batch norm + leaky ReLU op (libml/fused_ops.py) against NumPy in float64, and the
network built with it against the one built with TensorFlow's kernels (--fused_bn_act)."""
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from libml import fused_ops, models
from libml.errors import DC3Error

needs_compiler = pytest.mark.skipif(shutil.which('g++') is None, reason='needs a C++ compiler')

ALPHA, EPS = 0.1, 1e-3


@pytest.fixture(scope='module')
def ops():
    if shutil.which('g++') is None:
        pytest.skip('needs a C++ compiler')
    return fused_ops.load()


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
    """With ``leaky_relu`` the layer trains like FusedBatchNormalization + LeakyReLU."""
    x, dy, _, _ = inputs((8, 6, 6, 5), seed=3)
    fused = models.FusedBatchNormalization(momentum=0.9, epsilon=EPS, leaky_relu=ALPHA)
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


@needs_compiler
def test_a_failed_build_says_why_in_one_line_and_leaves_no_file(tmp_path):
    broken = tmp_path / 'broken.cc'
    broken.write_text('this is not C++;\n')
    out = tmp_path / 'kernels'
    with pytest.raises(fused_ops.BuildError) as failed:
        fused_ops.build(source=str(broken), out_dir=str(out))
    assert 'error:' in str(failed.value) and '\n' not in str(failed.value)
    assert list(out.iterdir()) == []  # the temporary library was removed
    with pytest.raises(fused_ops.BuildError, match='not found'):
        fused_ops.build(compiler='no-such-compiler', out_dir=str(out))


def test_an_unwritable_kernel_folder_is_a_build_error_naming_the_fix(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')  # a file where the folder should be
    with pytest.raises(fused_ops.BuildError, match='DC3_KERNEL_DIR'):
        fused_ops.build(out_dir=str(blocker / 'kernels'))


def network(fused):
    keras.utils.set_random_seed(0)
    return models.build_network('resnet', 8, {'logits': 3}, filters=4, repeat=1,
                                bn_momentum=0.9, fused_bn_act=fused)


def test_fused_network_trains_and_predicts_like_the_unfused_one(ops):
    fused, plain = network(True), network(False)
    # the same variables in the same order (names differ only by Keras' layer counters)
    assert [v.shape for v in fused.variables] == [v.shape for v in plain.variables]
    assert [v.path.split('/')[-1] for v in fused.variables] == [
        v.path.split('/')[-1] for v in plain.variables]
    # the fused path really runs the op (and the plain one does not)
    graph = tf.function(lambda x: fused(x, training=True)).get_concrete_function(
        tf.TensorSpec([2, 8, 8, 3])).graph
    assert any(op.type == 'BatchNormLeakyRelu' for op in graph.get_operations())
    for v, w in zip(fused.variables, plain.variables):
        v.assign(w)
    x = tf.constant(np.random.default_rng(4).uniform(-1, 1, (6, 8, 8, 3)), tf.float32)
    results = []
    for net in (fused, plain):
        with tf.GradientTape() as tape:
            logits = net(x, training=True)['logits']
            loss = tf.reduce_sum(tf.square(logits))
        grads = tape.gradient(loss, net.trainable_variables)
        results.append([logits] + grads + [net(x, training=False)['logits']]
                       + [v for v in net.non_trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_checkpoints_restore_across_the_two_paths(ops, tmp_path):
    fused, plain = network(True), network(False)
    x = tf.constant(np.random.default_rng(5).uniform(-1, 1, (4, 8, 8, 3)), tf.float32)
    fused(x, training=True)  # moves the moving statistics away from their initial values
    path = tf.train.Checkpoint(model=fused).save(os.path.join(tmp_path, 'ckpt'))
    tf.train.Checkpoint(model=plain).restore(path).assert_consumed()
    np.testing.assert_allclose(plain(x, training=False)['logits'],
                               fused(x, training=False)['logits'], rtol=1e-5, atol=1e-6)


def test_off_never_builds(monkeypatch):
    monkeypatch.setattr(fused_ops, 'load', lambda: pytest.fail('load() was called'))
    assert fused_ops.resolve('off') is False


def test_auto_falls_back_with_a_note_and_on_fails_with_one_line(monkeypatch, capsys):
    def broken():
        raise fused_ops.BuildError('g++ not found (install a C++17 compiler)')

    monkeypatch.setattr(fused_ops, 'load', broken)
    assert fused_ops.resolve('auto') is False
    note = capsys.readouterr().err
    assert 'g++ not found' in note and note.count('\n') == 1
    with pytest.raises(DC3Error, match=r'--fused_bn_act on: g\+\+ not found') as failed:
        fused_ops.resolve('on')
    assert '\n' not in str(failed.value)


def test_synchronised_batch_norm_keeps_tensorflows_kernels(monkeypatch):
    monkeypatch.setattr(fused_ops, 'load', lambda: pytest.fail('load() was called'))
    assert fused_ops.resolve('auto', synchronized_replicas=True) is False
    with pytest.raises(DC3Error, match='sync_bn'):
        fused_ops.resolve('on', synchronized_replicas=True)


def test_auto_uses_the_op_where_it_builds(ops):
    assert fused_ops.resolve('auto') is True


def test_an_unknown_mode_is_refused():
    from libml import models
    with pytest.raises(DC3Error, match='auto, on, off'):
        models.ModelConfig(fused_bn_act='yes')


@pytest.mark.parametrize('mode', ['on', 'off'])
def test_the_flag_decides_what_the_training_step_runs(ops, tiny_data_dir, tmp_path, mode):
    import mean_teacher
    from libml import data
    from tests.conftest import make_method

    def method_with(fused_bn_act):
        return make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path,
                           hparams={'consistency_weight': 50.0, 'warmup_pos': 0.4},
                           model={'fused_bn_act': fused_bn_act})

    method = method_with(mode)
    batch = next(iter(data.train_inputs(method.dataset, method.input_config(0))))
    graph = method._train_step.get_concrete_function(batch).graph
    types = {op.type for op in graph.get_operations()}
    assert ('BatchNormLeakyRelu' in types) == (mode == 'on')
    assert ('BatchNormLeakyReluGrad' in types) == (mode == 'on')
    other = method_with('off' if mode == 'on' else 'on')
    assert method.run_dir() == other.run_dir()  # the same run folder: it may resume either way


def test_prebuilding_prints_the_library_or_one_error_line(ops, tmp_path, monkeypatch, capsys):
    fused_ops.main()  # the op is built already (the ops fixture): prints where it is
    path = capsys.readouterr().out.rsplit(' (', 1)[0]
    assert os.path.isfile(path) and path.endswith('.so')
    blocker = tmp_path / 'file'
    blocker.write_text('')
    monkeypatch.setenv('DC3_KERNEL_DIR', str(blocker / 'kernels'))
    with pytest.raises(SystemExit) as failed:
        fused_ops.main()
    assert str(failed.value).startswith('error: cannot write to') and '\n' not in str(failed.value)

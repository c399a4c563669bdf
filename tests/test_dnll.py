"""DNLL: negative-label selection and loss against NumPy, the two sub-networks' roles, DC3, CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dnll
from libml import data, dc3
from libml.dnll import PEER_HEAD, negative_loss, select_negatives, sub_network_names
from libml.models import CLASS_HEAD
from tests.conftest import ROOT, make_method


def numpy_negatives(probs, num_negatives, threshold):
    """Independent reference: a stable ascending sort, then the threshold."""
    count = min(num_negatives, probs.shape[1] - 1)
    mask = np.zeros_like(probs)
    for row, p in enumerate(probs):
        for c in np.argsort(p, kind='stable')[:count]:
            mask[row, c] = float(p[c] < threshold)
    return mask


@pytest.mark.parametrize('num_negatives,threshold', [(1, 0.2), (3, 0.1), (3, 1.0), (9, 0.5),
                                                     (50, 1.0)])
def test_selection_matches_numpy(num_negatives, threshold):
    probs = np.random.default_rng(num_negatives).dirichlet(np.full(10, 0.5), size=32)
    got = select_negatives(tf.constant(probs, tf.float32), num_negatives, threshold).numpy()
    expected = numpy_negatives(probs.astype(np.float32), num_negatives, threshold)
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (32, 10) and set(np.unique(got)) <= {0.0, 1.0}
    # Never more than k - 1: the most likely class is never called negative.
    assert got.sum(axis=1).max() <= min(num_negatives, 9)
    assert (got[np.arange(32), probs.argmax(axis=1)] == 0).all()


def test_selection_breaks_ties_by_lower_class_index():
    probs = tf.constant([[0.1, 0.1, 0.1, 0.7], [0.4, 0.2, 0.2, 0.2], [0.25] * 4])
    got = select_negatives(probs, 2, 0.3).numpy()
    np.testing.assert_array_equal(got, [[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]])


def test_negative_loss_matches_numpy():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(6), size=16)
    probs[0] = [1.0, 0, 0, 0, 0, 0]  # exact 0 / 1: the clip keeps the loss finite
    mask = (rng.uniform(size=(16, 6)) < 0.4).astype(np.float64)
    mask[0] = [1, 1, 0, 0, 0, 0]
    got = negative_loss(tf.constant(probs, tf.float32), tf.constant(mask, tf.float32)).numpy()
    # In float32, as the network's probabilities: 1 - (1 - 1e-6) is 1.013e-6 there.
    clipped = np.clip(probs.astype(np.float32), np.float32(1e-6), np.float32(1 - 1e-6))
    expected = -np.sum(mask * np.log((np.float32(1) - clipped).astype(np.float64)), axis=1)
    assert got.shape == (16,)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Through a real (tiny) pair of networks
# ---------------------------------------------------------------------------------------------

# threshold 1: every one of the lowest classes is a negative, even for an untrained network.
HPARAMS = {'consistency_weight': 50.0, 'warmup_pos': 0.4, 'negative_weight': 1.0,
           'num_negatives': 2, 'negative_threshold': 1.0}
VANILLA = dc3.DC3Config(combined_output=0, wou=0, wol=0)


def first_batch(method):
    return next(iter(data.train_inputs(method.dataset, method.input_config(0))))


def sub_networks(model):
    return [model.get_layer(name) for name in sub_network_names(model.name)]


def gradient_sizes(tape, target, networks):
    """Sum of |gradient| of ``target`` over each network's trainable variables."""
    sizes = []
    for network in networks:
        grads = tape.gradient(target, network.trainable_variables)
        sizes.append(sum(float(np.abs(g.numpy()).sum()) for g in grads if g is not None))
    return sizes


def test_pair_is_one_trainable_model_with_a_matching_ema(tiny_data_dir, tmp_path):
    method = make_method(dnll.DNLL, tiny_data_dir, tmp_path, VANILLA, HPARAMS)
    assert type(method) is dnll.DNLL
    assert set(method.model.output.keys()) == {'embedding', CLASS_HEAD, PEER_HEAD}
    net_a, net_b = sub_networks(method.model)
    ids = lambda variables: [id(v) for v in variables]
    assert sorted(ids(method.model.trainable_variables)) == sorted(
        ids(net_a.trainable_variables) + ids(net_b.trainable_variables))
    assert not set(ids(net_a.variables)) & set(ids(net_b.variables))
    # Two different initialisations, or mutual learning would start from twins.
    first_a, first_b = net_a.trainable_variables[0], net_b.trainable_variables[0]
    assert not np.allclose(first_a.numpy(), first_b.numpy())
    # The EMA pair: same structure, variable for variable, and it starts as a copy.
    assert len(method.ema_model.variables) == len(method.model.variables)
    for ema_var, var in zip(method.ema_model.variables, method.model.variables):
        assert ema_var.shape == var.shape and ema_var.trainable == var.trainable
        np.testing.assert_array_equal(ema_var.numpy(), var.numpy())
    positions = {id(v): i for i, v in enumerate(method.ema_model.variables)}
    ema_b = sub_networks(method.ema_model)[1]
    model_positions = {id(v): i for i, v in enumerate(method.model.variables)}
    assert [positions[id(v)] for v in ema_b.variables] == [model_positions[id(v)]
                                                           for v in net_b.variables]

    # One tape reaches every trainable variable of both sub-networks.
    batch = first_batch(method)
    with tf.GradientTape() as tape:
        total, _ = method.loss(batch)
    grads = tape.gradient(total, method.model.trainable_variables)
    assert all(g is not None for g in grads)

    # Both sub-networks are in the shared checkpoint.
    path = method.checkpoint.write(str(tmp_path / 'ckpt'))
    saved = net_b.trainable_variables[0].numpy().copy()
    net_b.trainable_variables[0].assign(saved + 1.0)
    method.checkpoint.read(path).expect_partial()
    np.testing.assert_array_equal(net_b.trainable_variables[0].numpy(), saved)


@pytest.mark.parametrize('step', [0, 1, 2, 3])
def test_roles_swap_every_step(step, tiny_data_dir, tmp_path):
    """Even steps: A names the negatives, only B learns from them; odd steps the reverse."""
    method = make_method(dnll.DNLL, tiny_data_dir, tmp_path, VANILLA, HPARAMS, wd=0.0)
    method.optimizer.iterations.assign(step)
    batch = first_batch(method)
    with tf.GradientTape(persistent=True) as tape:
        outputs = method.forward(batch)
        terms = method.method_losses(batch, outputs, progress=0.5)
        negative = terms.monitors['dnll/negative_loss']
    size_a, size_b = gradient_sizes(tape, negative, sub_networks(method.model))
    learner_size, producer_size = (size_b, size_a) if step % 2 == 0 else (size_a, size_b)
    assert learner_size > 0 and producer_size == 0
    assert float(terms.monitors['dnll/a_names_negatives']) == float(step % 2 == 0)
    assert float(terms.monitors['dnll/negatives_per_image']) == pytest.approx(2.0)
    unlabeled = batch['unlabeled'][0].shape[0]
    assert terms.ssl.shape == (unlabeled,) and terms.labeled_xe.shape == (8,)


def test_composes_with_dc3(tiny_data_dir, tmp_path):
    method = make_method(dnll.DNLL, tiny_data_dir, tmp_path, dc3.DC3Config(), HPARAMS, wd=0.0)
    assert isinstance(method, dc3.DC3Mixin) and method.method_name == 'DNLL'
    assert set(method.heads()) == {CLASS_HEAD, dc3.OVERCLUSTER_HEAD, dc3.AMBIGUITY_HEAD}
    assert set(method.model.output.keys()) == {'embedding', CLASS_HEAD, dc3.OVERCLUSTER_HEAD,
                                               dc3.AMBIGUITY_HEAD, PEER_HEAD}
    net_a, net_b = sub_networks(method.model)
    heads = [net_a.get_layer(head) for head in (CLASS_HEAD, dc3.OVERCLUSTER_HEAD,
                                                dc3.AMBIGUITY_HEAD)]
    heads.append(net_b.get_layer(CLASS_HEAD))
    batch = first_batch(method)
    with tf.GradientTape() as tape:
        total, monitors = method.loss(batch)
    variables = [v for head in heads for v in (head.kernel, head.bias)]
    grads = tape.gradient(total, variables)
    for variable, grad in zip(variables, grads):  # no weight decay: from the losses alone
        assert grad is not None and np.abs(grad.numpy()).sum() > 0, variable.path
    assert {'dc3/loss_ambiguity', 'losses/ssl_scaled', 'dnll/negative_loss'} <= set(monitors)


# ---------------------------------------------------------------------------------------------
# The command line (each subprocess costs a TensorFlow import, so only two)
# ---------------------------------------------------------------------------------------------

def run_script(tiny_data_dir, train_dir, *extra):
    command = [sys.executable, 'dnll.py', '--dataset', 'tiny.1@-1-10', '--data_dir', tiny_data_dir,
               '--train_dir', str(train_dir), '--filters', '4', '--scales', '2', '--repeat', '1',
               '--batch', '8', '--train_kimg', '0.03125', '--report_kimg', '0.03125',
               '--save_kimg', '0.03125', '--eval_batch', '64', *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})


def test_script_trains_with_dc3_and_writes_a_report(tiny_data_dir, tmp_path):
    result = run_script(tiny_data_dir, tmp_path, '--num_negatives', '2')
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = result.stdout.strip().splitlines()[-1]
    assert os.path.basename(run_dir).startswith('DNLL_co4_')
    with open(os.path.join(run_dir, 'args.json')) as f:
        args = json.load(f)
    assert args['method'] == 'DNLL' and args['num_negatives'] == 2
    assert args['negative_threshold'] == 0.05 and args['combined_output'] == 4
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        history = [json.loads(line) for line in f]
    assert history[-1]['step'] == 4  # 32 images / batch 8
    assert np.isfinite(history[-1]['splits']['val']['ema']['accuracy'])
    assert os.path.exists(os.path.join(run_dir, 'reports', 'img0000000032', 'val.csv'))


def test_bad_flag_gives_one_error_line(tiny_data_dir, tmp_path):
    result = run_script(tiny_data_dir, tmp_path, '--num_negatives', '0')
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and '--num_negatives must be >= 1' in errors[0], result.stderr[-1500:]
    assert 'Traceback' not in result.stderr
    assert not any(os.scandir(tmp_path))

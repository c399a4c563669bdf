"""DC3 as a whole: gradients through a real network (the loss of every method against the
original code is in test_original_losses.py)."""
import numpy as np
import pytest
import tensorflow as tf

import fully_supervised
import mean_teacher
from libml import data, dc3
from libml import method as method_lib
from libml.models import CLASS_HEAD
from tests.conftest import make_method


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ceinv(p, q):
    return -np.sum(np.clip(p, 1e-7, 1 - 1e-7) * np.log(1 - np.clip(q, 1e-7, 1 - 1e-7)), axis=1)


def two_image_batch(rng, k=3, factor=5):
    """Batches of two labeled and two unlabeled images whose CE^-1 partners are forced: the two
    labeled images have different labels and the two unlabeled ones different pseudo-labels
    (the first confident, the second not)."""
    labeled = {CLASS_HEAD: rng.normal(size=(2, k)),
               dc3.OVERCLUSTER_HEAD: rng.normal(size=(2, k * factor)),
               dc3.AMBIGUITY_HEAD: rng.normal(size=(2, 1))}
    views = [{CLASS_HEAD: np.array([[9.0, 0.0, 0.0], [0.0, 1.0, 0.5]]),
              dc3.OVERCLUSTER_HEAD: rng.normal(size=(2, k * factor)) * 2,
              dc3.AMBIGUITY_HEAD: np.array([[0.3], [-0.8]])} for _ in range(2)]
    as_tf = lambda d: {name: tf.constant(v, tf.float32) for name, v in d.items()}
    outputs = method_lib.Outputs(labeled=as_tf(labeled), unlabeled=[as_tf(v) for v in views])
    return {'label': tf.constant([0, 2])}, outputs, labeled, views


def loss_host(cfg):
    """A DC3 method object with nothing but its config: enough for ``combine_losses``."""
    host = object.__new__(dc3.with_dc3(method_lib.SSLMethod))
    host.dc3 = cfg
    return host


def test_ceinv_only_variant_has_no_certainty_scaling():
    rng = np.random.default_rng(2)
    batch, outputs, labeled, views = two_image_batch(rng)
    outputs.labeled.pop(dc3.AMBIGUITY_HEAD)
    for v in outputs.unlabeled:
        v.pop(dc3.AMBIGUITY_HEAD)
    cfg = dc3.DC3Config(combined_output=0, wou=10, wol=10)
    terms = method_lib.LossTerms(labeled_xe=tf.constant([0.5, 1.0]), ssl=tf.constant([0.2, 0.4]),
                            ssl_weight=1.0)
    got, _ = loss_host(cfg).combine_losses(batch, outputs, terms)
    po_l, po_u = softmax(labeled[dc3.OVERCLUSTER_HEAD]), softmax(views[0][dc3.OVERCLUSTER_HEAD])
    confident = (softmax(views[0][CLASS_HEAD]).max(axis=1) >= 0.95).astype(float)
    expected = (0.75 + 0.3 + 10 * ceinv(po_l, po_l[[1, 0]]).mean()
                + 10 * np.mean(ceinv(po_u, po_u[[1, 0]]) * confident))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def gradients(method, seed=0):
    batch = next(iter(data.train_inputs(method.dataset, method.input_config(seed))))
    with tf.GradientTape() as tape:
        total, _ = method.loss(batch)
    variables = method.model.trainable_variables
    return {v.path: g for v, g in zip(variables, tape.gradient(total, variables))}


def head_gradient(grads, head):
    return np.abs(grads[f'{head}/kernel'].numpy()).sum()


@pytest.mark.parametrize('method_cls', [mean_teacher.MeanTeacher,
                                        fully_supervised.FullySupervised])
def test_every_head_gets_a_gradient_with_dc3(method_cls, tiny_data_dir, tmp_path):
    method = make_method(method_cls, tiny_data_dir, tmp_path, dc3.DC3Config(),
                         hparams={'consistency_weight': 50.0, 'warmup_pos': 0.4}
                         if method_cls is mean_teacher.MeanTeacher else {}, wd=0.0)
    assert set(method.heads()) == {CLASS_HEAD, dc3.OVERCLUSTER_HEAD, dc3.AMBIGUITY_HEAD}
    grads = gradients(method)
    for head in (CLASS_HEAD, dc3.OVERCLUSTER_HEAD, dc3.AMBIGUITY_HEAD):
        assert head_gradient(grads, head) > 0, head  # no weight decay: from the losses alone
        assert np.abs(grads[f'{head}/bias'].numpy()).sum() > 0, head


@pytest.mark.parametrize('cfg', [dc3.DC3Config(), dc3.DC3Config(combined_output=0, wou=0, wol=0)],
                         ids=['dc3', 'vanilla'])
def test_mean_teachers_student_never_sees_the_teachers_view(cfg, tiny_data_dir, tmp_path):
    """As in the original code the student's pass holds the labeled images and the second view
    only: no gradient reaches the first view's pixels (the teacher's output is a stopped target),
    while the second view's do get one. Were the first view in the student's pass, its batch-norm
    statistics alone would give it a gradient."""
    method = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path, cfg,
                         hparams={'consistency_weight': 50.0, 'warmup_pos': 0.0}, wd=0.0)
    batch = next(iter(data.train_inputs(method.dataset, method.input_config(0))))
    first, second = (tf.Variable(v) for v in batch['unlabeled'])
    with tf.GradientTape() as tape:
        total, _ = method.loss(dict(batch, unlabeled=[first, second]))
    grad_first, grad_second = tape.gradient(total, [first, second])
    assert grad_first is None or not np.any(grad_first.numpy())
    assert np.abs(grad_second.numpy()).sum() > 0


@pytest.mark.parametrize('prob_gradient', [0, 1])
def test_scaling_terms_pass_gradient_to_ambiguity_head_only_with_prob_gradient(
        prob_gradient, tiny_data_dir, tmp_path):
    # With wf = 0 and no weight decay the only path from the loss to the ambiguity head is
    # through the p_a scaling weights.
    cfg = dc3.DC3Config(wf=0.0, prob_gradient=prob_gradient)
    method = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path, cfg,
                         hparams={'consistency_weight': 50.0, 'warmup_pos': 0.0}, wd=0.0)
    grad = head_gradient(gradients(method), dc3.AMBIGUITY_HEAD)
    assert (grad > 0) == bool(prob_gradient)


def test_vanilla_flags_give_exactly_the_vanilla_network(tiny_data_dir, tmp_path):
    method = make_method(mean_teacher.MeanTeacher, tiny_data_dir, tmp_path,
                         dc3.DC3Config(combined_output=0, wou=0, wol=0),
                         hparams={'consistency_weight': 50.0, 'warmup_pos': 0.4})
    assert type(method) is mean_teacher.MeanTeacher
    assert set(method.model.output.keys()) == {'embedding', CLASS_HEAD}

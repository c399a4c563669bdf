"""Each method's DC3 step against a NumPy transcription of the original code (Emprime/dc3).

The transcription follows ``libml/overclustering_training.py`` (``get_ops``, ``get_loss_scales``,
``inverse_ce``, ``be``, ``ce``) and the five method files (``mean_teacher.py``, ``pi_model.py``,
``pseudo_label.py``, ``fixmatch.py``, ``ce.py``) as read, with the spec's deliberate fixes only:
labeled CE^-1 partners come from the labeled batch, and partners are drawn by one rule in both
implementations (here a deterministic one, patched in, so the two can be compared). Where our
default deliberately differs (the labeled CE^-1 scaled by 1 - p_a, the supervised baseline's
scaling), the transcription takes the option as an argument and the test runs both settings.

The NumPy side computes in float64; its gradients are central finite differences in which every
quantity the original wraps in ``tf.stop_gradient`` (or takes from the EMA network) is read from
a frozen copy of the inputs. The TensorFlow side is our real ``loss`` (method + DC3, no weight
decay) on the same head outputs, differentiated by a GradientTape.
"""
import numpy as np
import pytest
import tensorflow as tf

import fixmatch
import fully_supervised
import mean_teacher
import pi_model
import pseudo_label
from libml import dc3
from libml.method import Outputs
from libml.models import CLASS_HEAD
from tests.conftest import make_method

OVER, AMB = dc3.OVERCLUSTER_HEAD, dc3.AMBIGUITY_HEAD
K, FACTOR, B = 4, 5, 6
LABELS = np.array([0, 1, 2, 3, 0, 1])
WOU, WOL, WF, WS, PRIOR = 10.0, 10.0, 0.1, 0.1, 0.6


# --- the original's functions, in NumPy -----------------------------------------------------

def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def sparse_xe(labels, logits):
    return -np.log(softmax(logits)[np.arange(len(labels)), labels])


def inverse_ce(y_true, y_pred):  # Keras' epsilon
    y, x = np.clip(y_true, 1e-7, 1 - 1e-7), np.clip(y_pred, 1e-7, 1 - 1e-7)
    return -np.sum(y * np.log(1 - x), axis=1)


def ce(p, q, eps=1e-6):
    p, q = np.clip(p, eps, 1 - eps), np.clip(q, eps, 1 - eps)
    return -np.sum(p * np.log(q), axis=1)


def be(p, q, eps=1e-6):
    p, q = np.clip(p, eps, 1 - eps), np.clip(q, eps, 1 - eps)
    return -(p * np.log(q) + (1 - p) * np.log(1 - q))


def partners(labels):
    """Both sides' partner rule: the next image (cyclically) with another label, else the next."""
    n = len(labels)
    out = []
    for i in range(n):
        others = [(i + d) % n for d in range(1, n) if labels[(i + d) % n] != labels[i]]
        out.append(others[0] if others else (i + 1) % n)
    return np.array(out)


def tf_partners(labels, by_label=True, seed=None):
    del by_label, seed
    return tf.constant(partners(labels.numpy()), tf.int32)


def get_ops(loss_tensor, x_over, u_class_frozen, u_over, u_amb, u_amb_frozen, u2_over, labels,
            confidence, certain_l):
    """``get_ops`` with combined_output 4, ceinv_labels 1, the default flags (wcf 0, one head);
    ``certain_l`` scales the labeled CE^-1 (ours; all ones for the original)."""
    certain_u, fuzzy_u = 1 - sigmoid(u_amb_frozen), sigmoid(u_amb_frozen)
    px = softmax(x_over)
    loss_xeil = np.mean(inverse_ce(px, px[partners(labels)]) * certain_l)
    pseudo = softmax(u_class_frozen)
    mask = (pseudo.max(axis=1) >= confidence).astype(float)
    pu = softmax(u_over)
    loss_xeiu = np.mean(inverse_ce(pu, pu[partners(pseudo.argmax(axis=1))]) * mask * certain_u)
    b = len(u_amb)
    prob_fuzzy, prob_frozen = sigmoid(u_amb), sigmoid(u_amb_frozen)
    expected_num_fuzzy = min(b - 1, int(b * PRIOR))
    cut_off = np.sort(prob_frozen)[b - expected_num_fuzzy]
    pseudo_fuzzy = (prob_frozen >= cut_off).astype(float)
    loss_fuzziness = np.mean(be(pseudo_fuzzy, prob_fuzzy))
    loss_similarity = np.mean(ce(softmax(u_over), softmax(u2_over)) * fuzzy_u)
    return (loss_tensor + WOU * loss_xeiu + WOL * loss_xeil + WF * loss_fuzziness
            + WS * loss_similarity)


# --- the five methods, as their original files compute the loss ------------------------------
# x: the live head outputs, x0: the same values frozen (stop_gradient / EMA network).
# 'labeled', 'u1', 'u2' (the two unlabeled views), 'teacher' (the EMA network on u1).

def original_consistency(x, x0, teacher, weight, class_weights, certain_l):
    """``mean_teacher.py`` and ``pi_model.py``: the student is the second view; the teacher is
    the EMA network on the first (Mean Teacher) or ``tf.stop_gradient`` of the same network on
    it (Pi-model)."""
    student = x['u2']
    certain_u = 1 - sigmoid(x0['u2'][AMB][:, 0])
    loss_consistency = np.mean(np.mean(
        (softmax(teacher[CLASS_HEAD]) - softmax(student[CLASS_HEAD])) ** 2, axis=-1) * certain_u)
    loss = np.mean(class_weights[LABELS] * sparse_xe(LABELS, x['labeled'][CLASS_HEAD]))
    return get_ops(loss + loss_consistency * 1.0 * weight, x['labeled'][OVER],
                   x0['u2'][CLASS_HEAD], student[OVER], student[AMB][:, 0], x0['u2'][AMB][:, 0],
                   teacher[OVER], LABELS, 0.95, certain_l)


def original_mean_teacher(x, x0, class_weights, certain_l):
    return original_consistency(x, x0, x0['teacher'], 50.0, class_weights, certain_l)


def original_pi_model(x, x0, class_weights, certain_l):
    return original_consistency(x, x0, x0['u1'], 10.0, class_weights, certain_l)


def original_pseudo_label(x, x0, class_weights, certain_l):
    y = x['u1']
    certain_u = 1 - sigmoid(x0['u1'][AMB][:, 0])
    probs = softmax(x0['u1'][CLASS_HEAD])
    loss_pl = sparse_xe(probs.argmax(axis=1), y[CLASS_HEAD])
    greater_than_thresh = (probs > 0.95).any(axis=1).astype(float)
    loss_pl = np.mean(loss_pl * greater_than_thresh * certain_u)
    loss = np.mean(class_weights[LABELS] * sparse_xe(LABELS, x['labeled'][CLASS_HEAD]))
    return get_ops(loss + loss_pl * 1.0 * 1.0, x['labeled'][OVER], x0['u1'][CLASS_HEAD],
                   y[OVER], y[AMB][:, 0], x0['u1'][AMB][:, 0], y[OVER], LABELS, 0.95, certain_l)


def original_fixmatch(x, x0, class_weights, certain_l, confidence=0.9):
    weak, strong = x['u1'], x['u2']
    certain_u = 1 - sigmoid(x0['u1'][AMB][:, 0])
    pseudo = softmax(x0['u1'][CLASS_HEAD])
    loss_xeu = sparse_xe(pseudo.argmax(axis=1), strong[CLASS_HEAD])
    pseudo_mask = (pseudo.max(axis=1) >= confidence).astype(float)
    loss_xeu = np.mean(loss_xeu * pseudo_mask * certain_u)
    loss_xe = np.mean(class_weights[LABELS] * sparse_xe(LABELS, x['labeled'][CLASS_HEAD]))
    return get_ops(loss_xe + 1.0 * loss_xeu, x['labeled'][OVER], x0['u1'][CLASS_HEAD],
                   weak[OVER], weak[AMB][:, 0], x0['u1'][AMB][:, 0], strong[OVER], LABELS,
                   confidence, certain_l)


def original_ce(x, x0, class_weights, certain_l, scale='labeled'):
    y2, y1 = x['u2'], x0['u1']  # logits_y1 = tf.stop_gradient(classifier(y_1))
    certain_u = 1 - sigmoid(x0['u2'][AMB][:, 0])
    # tf.losses.sparse_softmax_cross_entropy with weights reduces to a scalar, so the original
    # multiplies the weighted mean by the unlabeled images' mean certainty ('unlabeled'); the
    # spec scales each labeled image by its own ('labeled').
    per_image = class_weights[LABELS] * sparse_xe(LABELS, x['labeled'][CLASS_HEAD])
    if scale == 'unlabeled':
        loss = np.mean(per_image) * np.mean(certain_u)
    else:
        loss = np.mean(per_image * (1 - sigmoid(x0['labeled'][AMB][:, 0])))
    return get_ops(loss, x['labeled'][OVER], x0['u2'][CLASS_HEAD], y2[OVER], y2[AMB][:, 0],
                   x0['u2'][AMB][:, 0], y1[OVER], LABELS, 0.95, certain_l)


# --- the comparison ----------------------------------------------------------------------------

CASES = {
    'MeanTeacher': (mean_teacher.MeanTeacher, original_mean_teacher,
                    {'consistency_weight': 50.0, 'warmup_pos': 0.0}),
    'PiModel': (pi_model.PiModel, original_pi_model,
                {'consistency_weight': 10.0, 'warmup_pos': 0.0}),
    'PseudoLabel': (pseudo_label.PseudoLabel, original_pseudo_label,
                    {'consistency_weight': 1.0, 'threshold': 0.95, 'warmup_pos': 0.0}),
    'FixMatch': (fixmatch.FixMatch, original_fixmatch, {'wu': 1.0, 'confidence': 0.9}),
    'FullySupervised': (fully_supervised.FullySupervised, original_ce, {}),
}


def head_outputs(rng):
    """Random head outputs of the labeled batch, both views and the teacher; the first three
    unlabeled images are confident (so CE^-1's and the methods' masks are mixed)."""
    def heads():
        return {CLASS_HEAD: rng.normal(size=(B, K)) * 1.5,
                OVER: rng.normal(size=(B, K * FACTOR)) * 2,
                AMB: rng.normal(size=(B, 1)) * 1.5}
    out = {name: heads() for name in ('labeled', 'u1', 'u2', 'teacher')}
    for name in ('u1', 'u2', 'teacher'):
        out[name][CLASS_HEAD][:3] = np.eye(K)[[1, 2, 1]] * 8.0
    # A pseudo-label at 0.9 < max p < 0.95, so FixMatch's own confidence (0.9) and the 0.95 of
    # the other methods differ on it.
    out['u1'][CLASS_HEAD][3] = [3.7, 0.0, 0.0, 0.0]
    return out


def finite_difference_gradients(fn, x0, eps=1e-6):
    grads = {}
    for name, heads in x0.items():
        grads[name] = {}
        for head, value in heads.items():
            grad = np.zeros_like(value)
            for index in np.ndindex(value.shape):
                plus = {n: {h: v.copy() for h, v in hs.items()} for n, hs in x0.items()}
                minus = {n: {h: v.copy() for h, v in hs.items()} for n, hs in x0.items()}
                plus[name][head][index] += eps
                minus[name][head][index] -= eps
                grad[index] = (fn(plus, x0) - fn(minus, x0)) / (2 * eps)
            grads[name][head] = grad
    return grads


def our_loss_and_gradients(method, values):
    variables = {n: {h: tf.Variable(v, dtype=tf.float32) for h, v in hs.items()}
                 for n, hs in values.items()}
    views = ['u1', 'u2'][:method.unlabeled_views]

    def forward(batch, training=True):
        del batch, training
        return Outputs(labeled=dict(variables['labeled']),
                             unlabeled=[dict(variables[v]) for v in views],
                             extra={'teacher': dict(variables['teacher'])})

    method.forward = forward
    flat = [(n, h, v) for n, hs in variables.items() for h, v in hs.items()]
    with tf.GradientTape() as tape:
        total, _ = method.loss({'label': tf.constant(LABELS, tf.int32)})
    grads = tape.gradient(total, [v for _, _, v in flat])
    out = {n: {} for n in variables}
    for (n, h, v), g in zip(flat, grads):
        out[n][h] = np.zeros(v.shape) if g is None else g.numpy()
    return float(total.numpy()), out


@pytest.mark.parametrize('scale_labeled_ceinv', [1, 0])
@pytest.mark.parametrize('name', list(CASES))
def test_default_step_matches_the_original_loss_and_gradients(
        name, scale_labeled_ceinv, tiny_data_dir, tmp_path, monkeypatch):
    method_cls, original, hparams = CASES[name]
    monkeypatch.setattr(dc3, 'choose_partners', tf_partners)
    cfg = dc3.DC3Config(scale_labeled_ceinv=scale_labeled_ceinv)
    assert (cfg.wou, cfg.wol, cfg.wf, cfg.ws, cfg.prior_fuzzy_distribution) == \
        (WOU, WOL, WF, WS, PRIOR)
    method = make_method(method_cls, tiny_data_dir, tmp_path, cfg, hparams=hparams, wd=0.0)
    assert method.class_weights is not None  # --use_weighted_xe 1, the original's default
    class_weights = np.array(method.class_weights)
    values = head_outputs(np.random.default_rng(len(name) + 10 * scale_labeled_ceinv))

    def numpy_loss(x, x0):
        certain_l = (1 - sigmoid(x0['labeled'][AMB][:, 0]) if scale_labeled_ceinv
                     else np.ones(B))
        return original(x, x0, class_weights, certain_l)

    got_loss, got_grads = our_loss_and_gradients(method, values)
    np.testing.assert_allclose(got_loss, numpy_loss(values, values), rtol=2e-5)
    expected_grads = finite_difference_gradients(numpy_loss, values)
    for view, heads in expected_grads.items():
        for head, expected in heads.items():
            np.testing.assert_allclose(got_grads[view][head], expected, rtol=2e-3, atol=2e-5,
                                       err_msg=f'{name}: gradient of {view}/{head}')

    # What the original stops, in words: the teacher never gets a gradient; the Pi-model's,
    # Mean Teacher's and the baseline's first view none either (the target / unused side).
    assert not np.any(got_grads['teacher'][OVER])
    if name in ('PiModel', 'MeanTeacher', 'FullySupervised'):
        assert all(not np.any(g) for g in got_grads['u1'].values())
        assert np.any(got_grads['u2'][AMB])      # L_A on the student's p_a
    else:
        assert np.any(got_grads['u1'][AMB])      # L_A on the weak / only view
        assert not np.any(got_grads['u2'][AMB])
    if name == 'FixMatch':
        assert np.any(got_grads['u2'][OVER])     # L_S reaches the strong view too


def test_supervised_baseline_with_the_original_scaling(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(dc3, 'choose_partners', tf_partners)
    cfg = dc3.DC3Config(scale_labeled_ceinv=0, supervised_certainty='unlabeled')
    method = make_method(fully_supervised.FullySupervised, tiny_data_dir, tmp_path, cfg, wd=0.0)
    values = head_outputs(np.random.default_rng(3))
    got_loss, got_grads = our_loss_and_gradients(method, values)
    class_weights = np.array(method.class_weights)
    expected = original_ce(values, values, class_weights, np.ones(B), scale='unlabeled')
    np.testing.assert_allclose(got_loss, expected, rtol=2e-5)
    grads = finite_difference_gradients(
        lambda x, x0: original_ce(x, x0, class_weights, np.ones(B), scale='unlabeled'), values)
    np.testing.assert_allclose(got_grads['labeled'][CLASS_HEAD], grads['labeled'][CLASS_HEAD],
                               rtol=2e-3, atol=2e-5)

"""Loss functions of the SSL methods. Each returns one value per sample; callers weight and reduce."""
import tensorflow as tf


def cross_entropy(labels, logits, class_weights=None):
    """Softmax cross-entropy against integer labels, optionally weighted by the label's class."""
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if class_weights is not None:
        loss *= tf.gather(tf.constant(class_weights, tf.float32), labels)
    return loss


def softmax_mse(target_logits, logits):
    """Mean squared difference of the class distributions; the target gets no gradient.

    The consistency loss of the Pi-model and Mean Teacher (averaged over classes, as in FixMatch's
    implementation of both).
    """
    target = tf.nn.softmax(tf.stop_gradient(target_logits))
    return tf.reduce_mean(tf.square(target - tf.nn.softmax(logits)), axis=-1)


def confident_pseudo_labels(logits, threshold, strict=False):
    """Hard pseudo-labels ``argmax p`` and a 0/1 mask of ``max p >= threshold`` (``>`` with
    ``strict``); no gradient."""
    probs = tf.nn.softmax(tf.stop_gradient(logits))
    top = tf.reduce_max(probs, axis=-1)
    mask = tf.cast(top > threshold if strict else top >= threshold, tf.float32)
    return tf.argmax(probs, axis=-1, output_type=tf.int32), mask


def pseudo_label_cross_entropy(pseudo_logits, logits, threshold, strict=False):
    """Cross-entropy of ``logits`` against the confident pseudo-labels of ``pseudo_logits``.

    Pseudo-Label uses one view for both; FixMatch takes the pseudo-label from the weak view and
    trains the strong one. Returns (per-sample masked loss, mask).
    """
    labels, mask = confident_pseudo_labels(pseudo_logits, threshold, strict)
    return cross_entropy(labels, logits) * mask, mask


def l2_regularization(variables):
    """``sum ||w||^2 / 2`` over convolution and dense kernels (FixMatch's weight decay term)."""
    kernels = [v for v in variables if v.path.endswith('kernel')]
    return tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])

"""Supervised-only baseline: cross-entropy on the labeled images.

Vanilla, it reads no unlabeled images. With DC3 it takes two views of each unlabeled image, as the
original code's ``ce.py`` does: the second carries ``p_a``, L_A and the unlabeled CE^-1, the first
(no gradient) is L_S's other side; the labeled cross-entropy plays the role of the SSL term and is
scaled by certainty (``--supervised_certainty``). On a dataset without unlabeled images DC3's
terms use the labeled batch alone and L_A ranks it.
"""
import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf

from libml.method import LossTerms, SSLMethod, Views


class FullySupervised(SSLMethod):
    unlabeled_views = 0
    views_with_dc3 = 2  # as the original ce.py, where the dataset has unlabeled images

    def views(self, outputs):
        if not outputs.unlabeled:
            return Views()
        view1, view2 = outputs.unlabeled
        return Views(main=view2, other={k: tf.stop_gradient(v) for k, v in view1.items()})

    def method_losses(self, batch, outputs, progress):
        return LossTerms(labeled_xe=self.labeled_cross_entropy(batch, outputs))


if __name__ == '__main__':
    import cli  # defines the flags; only when run as a script
    cli.main(FullySupervised)

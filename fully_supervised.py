"""Supervised-only baseline: cross-entropy on the labeled images.

Vanilla, it reads no unlabeled images. With DC3 it takes two views of each unlabeled image, as the
original code's ``ce.py`` does: the second carries ``p_a``, L_A and the unlabeled CE^-1, the first
(no gradient) is L_S's other side; the labeled cross-entropy plays the role of the SSL term and is
scaled by certainty (``--supervised_certainty``). On a dataset without unlabeled images DC3's
terms use the labeled batch alone and L_A ranks it.
"""
import tensorflow as tf
from absl import app

import cli
from libml import train


class FullySupervised(train.SSLMethod):

    @property
    def unlabeled_views(self):
        return 2 if self.dc3.enabled and self.dataset.has_split('unlabeled') else 0

    def views(self, outputs):
        if not outputs.unlabeled:
            return train.Views()
        view1, view2 = outputs.unlabeled
        return train.Views(main=view2, other={k: tf.stop_gradient(v) for k, v in view1.items()})

    def method_losses(self, batch, outputs, progress):
        return train.LossTerms(labeled_xe=self.labeled_cross_entropy(batch, outputs))


def main(argv):
    del argv
    cli.run(FullySupervised)


if __name__ == '__main__':
    app.run(main)

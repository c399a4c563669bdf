"""FixMatch (Sohn et al., 2020): confident weak-view predictions supervise the strong view."""
import tensorflow as tf
from absl import app, flags

import cli
from libml import losses, train
from libml.models import CLASS_HEAD

FLAGS = flags.FLAGS


class FixMatch(train.SSLMethod):
    unlabeled_views = 2   # weak, strong

    def views(self, outputs):
        # As in the original DC3 code: the weak view carries p_a and CE^-1's pseudo-labels (with
        # FixMatch's own confidence); L_S compares it with the strong view, gradient to both.
        weak, strong = outputs.unlabeled
        return train.Views(main=weak, other=strong, confidence=self.hparams['confidence'])

    def method_losses(self, batch, outputs, progress):
        weak, strong = outputs.unlabeled
        ssl, mask = losses.pseudo_label_cross_entropy(weak[CLASS_HEAD], strong[CLASS_HEAD],
                                                      self.hparams['confidence'])
        return train.LossTerms(labeled_xe=self.labeled_cross_entropy(batch, outputs), ssl=ssl,
                               ssl_weight=self.hparams['wu'],
                               monitors={'monitors/mask': tf.reduce_mean(mask)})


def main(argv):
    del argv
    cli.run(FixMatch, wu=FLAGS.wu, confidence=FLAGS.confidence)


if __name__ == '__main__':
    flags.DEFINE_float('wu', 1.0, 'Weight of the unlabeled loss.')
    flags.DEFINE_float('confidence', 0.95, 'Confidence above which a weak-view prediction is a label.')
    FLAGS.set_default('uratio', 7)
    FLAGS.set_default('augment', 'd.d.rac')
    app.run(main)

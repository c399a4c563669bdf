"""Pseudo-Label (Lee, 2013): confident predictions on unlabeled images become their targets."""
import tensorflow as tf
from absl import app, flags

import cli
from libml import losses, train
from libml.models import CLASS_HEAD

FLAGS = flags.FLAGS


class PseudoLabel(train.SSLMethod):
    unlabeled_views = 1

    def views(self, outputs):
        # As in the original DC3 code, the one view is both sides of L_S, which thereby becomes
        # the entropy of p_o (gradient through both sides).
        view = outputs.unlabeled[0]
        return train.Views(main=view, other=view)

    def method_losses(self, batch, outputs, progress):
        logits = outputs.unlabeled[0][CLASS_HEAD]
        # A prediction must exceed the threshold (the original's tf.greater), not merely reach it.
        ssl, mask = losses.pseudo_label_cross_entropy(logits, logits, self.hparams['threshold'],
                                                      strict=True)
        return train.LossTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs), ssl=ssl,
            ssl_weight=self.hparams['consistency_weight'] * train.warmup(
                progress, self.hparams['warmup_pos']),
            monitors={'monitors/mask': tf.reduce_mean(mask)})


def main(argv):
    del argv
    cli.run(PseudoLabel, consistency_weight=FLAGS.consistency_weight,
            threshold=FLAGS.threshold, warmup_pos=FLAGS.warmup_pos)


if __name__ == '__main__':
    flags.DEFINE_float('consistency_weight', 1.0, 'Weight of the pseudo-label loss.')
    flags.DEFINE_float('threshold', 0.95, 'Confidence above which a prediction becomes a label.')
    flags.DEFINE_float('warmup_pos', 0.4, 'Share of training over which that weight ramps up.')
    app.run(main)

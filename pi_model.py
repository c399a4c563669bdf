"""Pi-model (Laine & Aila, 2017): consistency between two augmentations of an unlabeled image."""
import tensorflow as tf
from absl import app, flags

import cli
from libml import losses, train
from libml.models import CLASS_HEAD

FLAGS = flags.FLAGS


class PiModel(train.SSLMethod):
    unlabeled_views = 2

    def views(self, outputs):
        # As in the original DC3 code: the second view is the student and carries p_a; the first
        # is the target, with no gradient from any loss.
        view1, view2 = outputs.unlabeled
        return train.Views(main=view2, other={k: tf.stop_gradient(v) for k, v in view1.items()})

    def method_losses(self, batch, outputs, progress):
        view1, view2 = outputs.unlabeled
        return train.LossTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs),
            ssl=losses.softmax_mse(view1[CLASS_HEAD], view2[CLASS_HEAD]),
            ssl_weight=self.hparams['consistency_weight'] * train.warmup(
                progress, self.hparams['warmup_pos']))


def main(argv):
    del argv
    cli.run(PiModel, consistency_weight=FLAGS.consistency_weight, warmup_pos=FLAGS.warmup_pos)


if __name__ == '__main__':
    flags.DEFINE_float('consistency_weight', 10.0, 'Weight of the consistency loss.')
    flags.DEFINE_float('warmup_pos', 0.4, 'Share of training over which that weight ramps up.')
    app.run(main)

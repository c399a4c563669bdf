"""Mean Teacher (Tarvainen & Valpola, 2017): the EMA of the weights teaches the student.

The teacher (the EMA network) sees the first unlabeled view, the student the second; both views
also go through the student's single forward pass, which DC3 uses. The teacher normalises with
batch statistics, as in FixMatch's implementation: in inference mode it would use moving statistics
that lag the weights and give poor targets early in training. (Its batch norms therefore also fold
the teacher batch into the EMA network's moving statistics before the EMA update.)
"""
import tensorflow as tf
from absl import app, flags

import cli
from libml import losses, train
from libml.models import CLASS_HEAD

FLAGS = flags.FLAGS


class MeanTeacher(train.SSLMethod):
    unlabeled_views = 2

    def forward(self, batch, training=True):
        outputs = super().forward(batch, training)
        outputs.extra['teacher'] = self.ema_model(batch['unlabeled'][0], training=True)
        return outputs

    def views(self, outputs):
        # As in the original DC3 code: the student's view carries p_a; L_S compares it with the
        # teacher's output, which gets no gradient.
        teacher = {name: tf.stop_gradient(value) for name, value in outputs.extra['teacher'].items()}
        return train.Views(main=outputs.unlabeled[1], other=teacher)

    def method_losses(self, batch, outputs, progress):
        return train.LossTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs),
            ssl=losses.softmax_mse(outputs.extra['teacher'][CLASS_HEAD],
                                   outputs.unlabeled[1][CLASS_HEAD]),
            ssl_weight=self.hparams['consistency_weight'] * train.warmup(
                progress, self.hparams['warmup_pos']))


def main(argv):
    del argv
    cli.run(MeanTeacher, consistency_weight=FLAGS.consistency_weight,
            warmup_pos=FLAGS.warmup_pos)


if __name__ == '__main__':
    flags.DEFINE_float('consistency_weight', 50.0, 'Weight of the consistency loss.')
    flags.DEFINE_float('warmup_pos', 0.4, 'Share of training over which that weight ramps up.')
    app.run(main)

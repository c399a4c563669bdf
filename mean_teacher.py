"""Mean Teacher (Tarvainen & Valpola, 2017): the EMA of the weights teaches the student.

The teacher (the EMA network) sees the first unlabeled view, the student the labeled images and
the second view, in one pass, as in the original code (FixMatch's and DC3's ``mean_teacher.py``):
the student never sees the first view, so ``outputs.unlabeled[0]`` is None. (Before 2026-12-04
the student's pass also carried the first view, whose outputs no loss used: a third more images
through the student's forward and backward pass.) The teacher normalises with batch statistics, as in FixMatch's implementation: in inference mode it would use moving statistics
that lag the weights and give poor targets early in training. (Its batch norms therefore also fold
the teacher batch into the EMA network's moving statistics before the EMA update.)
"""
import dataclasses

import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf

from libml import losses
from libml.hparams import field
from libml.method import LossTerms, SSLMethod, Views, warmup
from libml.models import CLASS_HEAD


@dataclasses.dataclass(frozen=True)
class MeanTeacherParams:
    consistency_weight: float = field(50.0, 'Weight of the consistency loss.')
    warmup_pos: float = field(0.4, 'Share of training over which that weight ramps up.')


class MeanTeacher(SSLMethod):
    unlabeled_views = 2
    Params = MeanTeacherParams

    def forward(self, batch, training=True):
        first, second = batch['unlabeled']
        outputs = super().forward(dict(batch, unlabeled=[second]), training)
        outputs.unlabeled.insert(0, None)  # the first view is the teacher's alone
        outputs.extra['teacher'] = self.ema_model(first, training=True)
        return outputs

    def views(self, outputs):
        # As in the original DC3 code: the student's view carries p_a; L_S compares it with the
        # teacher's output, which gets no gradient.
        teacher = {name: tf.stop_gradient(value) for name, value in outputs.extra['teacher'].items()}
        return Views(main=outputs.unlabeled[1], other=teacher)

    def method_losses(self, batch, outputs, progress):
        return LossTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs),
            ssl=losses.softmax_mse(outputs.extra['teacher'][CLASS_HEAD],
                                   outputs.unlabeled[1][CLASS_HEAD]),
            ssl_weight=self.params.consistency_weight * warmup(progress, self.params.warmup_pos))


if __name__ == '__main__':
    import cli  # defines the flags; only when run as a script
    cli.main(MeanTeacher)

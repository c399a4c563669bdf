"""Pi-model (Laine & Aila, 2017): consistency between two augmentations of an unlabeled image."""
import dataclasses

import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf

from libml import losses
from libml.hparams import field
from libml.method import LossTerms, SSLMethod, Views, warmup
from libml.models import CLASS_HEAD


@dataclasses.dataclass(frozen=True)
class PiModelParams:
    consistency_weight: float = field(10.0, 'Weight of the consistency loss.')
    warmup_pos: float = field(0.4, 'Share of training over which that weight ramps up.')


class PiModel(SSLMethod):
    unlabeled_views = 2
    Params = PiModelParams

    def views(self, outputs):
        # As in the original DC3 code: the second view is the student and carries p_a; the first
        # is the target, with no gradient from any loss.
        view1, view2 = outputs.unlabeled
        return Views(main=view2, other={k: tf.stop_gradient(v) for k, v in view1.items()})

    def method_losses(self, batch, outputs, progress):
        view1, view2 = outputs.unlabeled
        return LossTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs),
            ssl=losses.softmax_mse(view1[CLASS_HEAD], view2[CLASS_HEAD]),
            ssl_weight=self.params.consistency_weight * warmup(progress, self.params.warmup_pos))


if __name__ == '__main__':
    import cli  # defines the flags; only when run as a script
    cli.main(PiModel)

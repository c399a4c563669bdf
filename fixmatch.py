"""FixMatch (Sohn et al., 2020): confident weak-view predictions supervise the strong view."""
import dataclasses

import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf

from libml import losses
from libml.hparams import field
from libml.method import LossTerms, SSLMethod, Views
from libml.models import CLASS_HEAD


@dataclasses.dataclass(frozen=True)
class FixMatchParams:
    wu: float = field(1.0, 'Weight of the unlabeled loss.')
    confidence: float = field(0.95, 'Confidence above which a weak-view prediction is a label.')


class FixMatch(SSLMethod):
    unlabeled_views = 2   # weak, strong
    Params = FixMatchParams
    flag_defaults = {'uratio': 7, 'augment': 'd.d.rac'}

    def views(self, outputs):
        # As in the original DC3 code: the weak view carries p_a and CE^-1's pseudo-labels (with
        # FixMatch's own confidence); L_S compares it with the strong view, gradient to both.
        weak, strong = outputs.unlabeled
        return Views(main=weak, other=strong, confidence=self.params.confidence)

    def method_losses(self, batch, outputs, progress):
        weak, strong = outputs.unlabeled
        ssl, mask = losses.pseudo_label_cross_entropy(weak[CLASS_HEAD], strong[CLASS_HEAD],
                                                      self.params.confidence)
        return LossTerms(labeled_xe=self.labeled_cross_entropy(batch, outputs), ssl=ssl,
                         ssl_weight=self.params.wu,
                         monitors={'monitors/mask': tf.reduce_mean(mask)})


if __name__ == '__main__':
    import cli  # defines the flags; only when run as a script
    cli.main(FixMatch)

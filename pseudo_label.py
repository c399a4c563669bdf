"""Pseudo-Label (Lee, 2013): confident predictions on unlabeled images become their targets."""
import dataclasses

import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf

from libml import losses
from libml.hparams import field
from libml.method import LossTerms, SSLMethod, Views, warmup
from libml.models import CLASS_HEAD


@dataclasses.dataclass(frozen=True)
class PseudoLabelParams:
    consistency_weight: float = field(1.0, 'Weight of the pseudo-label loss.')
    threshold: float = field(0.95, 'Confidence above which a prediction becomes a label.')
    warmup_pos: float = field(0.4, 'Share of training over which that weight ramps up.')


class PseudoLabel(SSLMethod):
    unlabeled_views = 1
    Params = PseudoLabelParams

    def views(self, outputs):
        # As in the original DC3 code, the one view is both sides of L_S, which thereby becomes
        # the entropy of p_o (gradient through both sides).
        view = outputs.unlabeled[0]
        return Views(main=view, other=view)

    def method_losses(self, batch, outputs, progress):
        logits = outputs.unlabeled[0][CLASS_HEAD]
        # A prediction must exceed the threshold (the original's tf.greater), not merely reach it.
        ssl, mask = losses.pseudo_label_cross_entropy(logits, logits, self.params.threshold,
                                                      strict=True)
        return LossTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs), ssl=ssl,
            ssl_weight=self.params.consistency_weight * warmup(progress, self.params.warmup_pos),
            monitors={'monitors/mask': tf.reduce_mean(mask)})


if __name__ == '__main__':
    import cli  # defines the flags; only when run as a script
    cli.main(PseudoLabel)

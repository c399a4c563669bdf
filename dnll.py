"""DNLL (Xu et al., 2023): two sub-networks teach each other with pseudo-negative labels.

Sub-network A (with every head, DC3's included; evaluation reads it) and sub-network B (class head
only) live in one Keras model (``libml.dnll.build_pair``). At even optimiser steps A names a few
classes each unlabeled image most likely is not (from its first view) and B lowers its probability
on them (on the second view); at odd steps the roles swap. Each sub-network also has a Mean-Teacher
consistency to its own EMA, as in the paper's Mean-Teacher variant, and the labeled cross-entropy.
"""
import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf

from libml import losses
from libml.dnll import PEER_HEAD, DNLLConfig, build_pair, negative_loss, select_negatives
from libml.method import LossTerms, SSLMethod, warmup
from libml.models import CLASS_HEAD


class DNLL(SSLMethod):
    unlabeled_views = 2   # the teacher's and negative labels' view, the students' view
    Params = DNLLConfig

    def build_network(self, name, **build):
        return build_pair(name, **build)

    def method_losses(self, batch, outputs, progress):
        cfg = self.params
        first, second = outputs.unlabeled
        # Mean Teacher per sub-network: the EMA pair's outputs on the first view (batch
        # statistics, as mean_teacher.py) are the targets of the students' second view.
        teacher = self.ema_model(batch['unlabeled'][0], training=True)
        consistency = (losses.softmax_mse(teacher[CLASS_HEAD], second[CLASS_HEAD])
                       + losses.softmax_mse(teacher[PEER_HEAD], second[PEER_HEAD]))
        # tf.where rather than a Python branch: the step is a tensor inside tf.function, and the
        # unselected sub-network gets an exact zero gradient from this term.
        a_names = tf.equal(self.optimizer.iterations % 2, 0)
        producer = tf.where(a_names, first[CLASS_HEAD], first[PEER_HEAD])
        learner = tf.where(a_names, second[PEER_HEAD], second[CLASS_HEAD])
        mask = select_negatives(tf.nn.softmax(producer), cfg.num_negatives,
                                cfg.negative_threshold)
        negative = negative_loss(tf.nn.softmax(learner), mask)
        xe_peer = losses.cross_entropy(batch['label'], outputs.labeled[PEER_HEAD],
                                       self.class_weights)
        return LossTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs) + xe_peer,
            # Per unlabeled image, so DC3 can scale it by certainty; one ramp for both parts.
            ssl=cfg.consistency_weight * consistency + cfg.negative_weight * negative,
            ssl_weight=warmup(progress, cfg.warmup_pos),
            monitors={'dnll/negative_loss': tf.reduce_mean(negative),
                      'dnll/consistency': tf.reduce_mean(consistency),
                      'dnll/negatives_per_image': tf.reduce_mean(tf.reduce_sum(mask, axis=-1)),
                      'dnll/xe_peer': tf.reduce_mean(xe_peer),
                      'dnll/a_names_negatives': tf.cast(a_names, tf.float32)})



if __name__ == '__main__':
    import cli  # defines the flags; only when run as a script
    cli.main(DNLL)

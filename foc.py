"""FOC -- Fuzzy Overclustering (Schmarje et al., "Beyond Cats and Dogs", Sensors 2021).

An IIC-style framework of its own, not an SSL method that DC3 wraps: the network has the normal
head (k classes) and an overclustering head (k' = overcluster_factor * k clusters, default 6 * k),
and every step maximises the mutual information between two views on both heads. The pairs are
the two augmentations of each unlabeled image and, for each labeled image, another labeled image
of the same class (supervised augmentation). Labeled images also get cross-entropy on the normal
head and CE^-1 on the overclustering head against an image of another label; those supervised
terms are off during a warm-up. Unlabeled images are at most ``unlabeled_ratio`` of a batch.

DC3 is not composed in (its flags are refused); ``--uratio`` is derived from
``--unlabeled_ratio`` and ``--batch``. See libml/foc.py for the pieces.
"""
import dataclasses

import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf

from libml import dc3, foc, prediction_csv
from libml.dc3 import OVERCLUSTER_HEAD
from libml.errors import DC3Error
from libml.hparams import make_params
from libml.method import LossTerms, SSLMethod
from libml.models import CLASS_HEAD


@dataclasses.dataclass
class FOCTerms(LossTerms):
    """FOC's terms: the mutual information of each head and the labeled CE^-1, besides the CE."""
    mutual_information: dict = dataclasses.field(default_factory=dict)  # head -> scalar I
    ceinv: tf.Tensor = None             # [B_l] CE^-1 of each labeled image to its partner
    supervised_weight: tf.Tensor = 0.0  # 0 during the warm-up, then 1


class FOC(SSLMethod):
    unlabeled_views = 2
    Params = foc.FOCConfig
    composes_with_dc3 = False

    def __init__(self, dataset, labeled_size, train_config, model, **hparams):
        params = make_params(self.Params, hparams)  # a bad value fails before any network
        self.unlabeled_count = params.unlabeled_count(train_config.batch)
        self.unlabeled_views = 2 if self.unlabeled_count else 0  # r = 0: no unlabeled pipeline
        if self.unlabeled_count > train_config.batch * train_config.uratio:
            raise DC3Error(f'--unlabeled_ratio {params.unlabeled_ratio} needs '
                           f'{self.unlabeled_count} unlabeled images per step; use --uratio '
                           f'{params.uratio(train_config.batch)} or more')
        super().__init__(dataset, labeled_size, train_config, model, **hparams)

    @classmethod
    def adjust_train_config(cls, train_config, params, explicit):
        """``--uratio`` follows from ``--unlabeled_ratio`` and ``--batch``."""
        uratio = make_params(cls.Params, params).uratio(train_config.batch)
        if 'uratio' in explicit and train_config.uratio != uratio:
            raise DC3Error(f'FOC derives --uratio from --unlabeled_ratio and --batch ({uratio} '
                           f'here); drop --uratio {train_config.uratio}')
        return dataclasses.replace(train_config, uratio=uratio)

    def heads(self):
        return {CLASS_HEAD: self.num_classes,
                OVERCLUSTER_HEAD: self.params.overcluster_factor * self.num_classes}

    def inference_outputs(self, out):
        return {**super().inference_outputs(out),
                'cluster_probs': tf.nn.softmax(out[OVERCLUSTER_HEAD])}

    @property
    def num_clusters(self):
        return self.heads()[OVERCLUSTER_HEAD]

    def forward(self, batch, training=True):
        # Only the first floor(B_l r / (1 - r)) unlabeled images of each view take part.
        views = [view[:self.unlabeled_count] for view in batch['unlabeled']]
        return super().forward({**batch, 'unlabeled': views}, training)

    def method_losses(self, batch, outputs, progress):
        labels = batch['label']
        same_class = foc.same_class_partners(labels)
        mutual_information = {}
        for head in (CLASS_HEAD, OVERCLUSTER_HEAD):
            labeled = tf.nn.softmax(outputs.labeled[head])
            first, second = [labeled], [tf.gather(labeled, same_class)]
            if outputs.unlabeled:
                first.append(tf.nn.softmax(outputs.unlabeled[0][head]))
                second.append(tf.nn.softmax(outputs.unlabeled[1][head]))
            # One joint distribution over all pairs of the batch, so r sets how much the
            # unlabeled images weigh in it.
            mutual_information[head] = foc.iic_mutual_information(tf.concat(first, 0),
                                                                  tf.concat(second, 0))
        clusters = tf.nn.softmax(outputs.labeled[OVERCLUSTER_HEAD])
        other_label = dc3.choose_partners(labels)
        return FOCTerms(
            labeled_xe=self.labeled_cross_entropy(batch, outputs),
            ssl_weight=1.0,  # the mutual information is always on, with weight 1
            mutual_information=mutual_information,
            ceinv=dc3.inverse_cross_entropy(clusters, tf.gather(clusters, other_label)),
            supervised_weight=foc.supervised_weight(progress, self.params.supervised_warmup))

    def combine_losses(self, batch, outputs, terms):
        """``-(I_class + I_cluster) + w_sup (mean CE + ceinv_weight mean CE^-1)``."""
        mutual_information = tf.add_n(list(terms.mutual_information.values()))
        ceinv = tf.reduce_mean(terms.ceinv)
        supervised = tf.reduce_mean(terms.labeled_xe) + self.params.ceinv_weight * ceinv
        total = -mutual_information + terms.supervised_weight * supervised
        return total, {'foc/mi_class': terms.mutual_information[CLASS_HEAD],
                       'foc/mi_cluster': terms.mutual_information[OVERCLUSTER_HEAD],
                       'foc/ceinv': ceinv, 'foc/supervised_weight': terms.supervised_weight}

    def method_metrics(self, split, pred, labeled_pred):
        """Accuracy and macro F1 of the clusters mapped to their majority labeled class (the
        normal head's ``accuracy`` and ``macro_f1`` come from the base report)."""
        if labeled_pred is None or 'cluster_probs' not in pred:
            return foc.overcluster_metrics([], [], [])
        mapping = foc.majority_mapping(prediction_csv.cluster_ids(labeled_pred),
                                       labeled_pred['label'],
                                       self.heads()[OVERCLUSTER_HEAD])
        return foc.overcluster_metrics(prediction_csv.cluster_ids(pred), pred['label'], mapping)



if __name__ == '__main__':
    import cli  # defines the flags; only when run as a script
    cli.main(FOC)

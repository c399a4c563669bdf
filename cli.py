"""Command-line flags shared by the method scripts, turned into configs in one place.

Flags are defined here and read only by ``run`` (called from each script's ``main``); nothing under
``libml/`` reads them. Names follow FixMatch and the original DC3 code so the paper's command lines
work unchanged.
"""
from absl import flags, logging

from libml import dc3, distribute, io_utils, records, train

FLAGS = flags.FLAGS

# Data and run.
flags.DEFINE_string('dataset', 'synthetic.1@-1-10',
                    'Dataset <name>.<seed>@<labeled size or -1>-<ignored>, generated under $ML_DATA.')
flags.DEFINE_string('data_dir', None, 'Where generated datasets live (default $ML_DATA or ./data).')
flags.DEFINE_string('train_dir', 'experiments', 'Folder that receives the run folders.')
flags.DEFINE_integer('seed', 0, 'Seed of weight initialisation, data order and augmentation.')
# Network.
flags.DEFINE_enum('arch', 'resnet', ['resnet'], 'Backbone architecture.')
flags.DEFINE_integer('filters', 32, 'Width of the first ResNet stage.')
flags.DEFINE_integer('scales', 0, 'Number of ResNet stages (0: log2(image size) - 2).')
flags.DEFINE_integer('repeat', 4, 'Residual blocks per stage.')
flags.DEFINE_float('bn_momentum', 0.999, 'Batch-norm momentum; 0.999 (FixMatch) suits long runs, '
                   'use ~0.99 for runs of a few thousand steps.')
flags.DEFINE_integer('sync_bn', 0, '1: with several replicas, batch norm uses the moments of the '
                     'global batch (as one device would); 0: each replica its own.')
flags.DEFINE_enum('fused_bn_act', 'auto', ['auto', 'on', 'off'],
                  'Train batch norm + leaky ReLU as one CPU op (built with g++ on first use; '
                  '1.3x faster bf16 steps on AMX CPUs). auto: when no GPU is visible and it '
                  'builds; on: required; off: TensorFlow\'s kernels.')
# Optimisation.
flags.DEFINE_integer('batch', 64, 'Labeled images per step and replica (global batch: batch x '
                     'replicas).')
flags.DEFINE_integer('uratio', 1, 'Unlabeled images per labeled image in a step.')
flags.DEFINE_float('lr', 0.03, 'Initial learning rate (cosine decay to cos(7 pi / 16) of it).')
flags.DEFINE_float('wd', 0.0005, 'Weight decay: factor of sum(kernel^2) / 2 in the loss.')
flags.DEFINE_float('ema', 0.999, 'Decay of the exponential moving average of the weights.')
flags.DEFINE_string('augment', 'd.d.d',
                    'Augmentations labeled.unlabeled1.unlabeled2: x none, d flip+translate, '
                    'rac RandAugment+cutout.')
flags.DEFINE_integer('use_weighted_xe', 1, '1 (the original DC3 code\'s default): weight the '
                     'labeled cross-entropy by class (inverse frequency in the labeled split); 0: '
                     'unweighted.')
flags.DEFINE_integer('mixed_precision', 0, '1: bf16 on CPU, fp16 with loss scaling on GPU.')
flags.DEFINE_enum('strategy', 'default', list(distribute.STRATEGIES),
                  'default: one device; mirrored: one replica per GPU of this machine.')
# Length, reports, checkpoints.
flags.DEFINE_float('train_kimg', 1 << 16, 'Training length in thousands (1024) of labeled images.')
flags.DEFINE_float('report_kimg', 64, 'Evaluate and write predictions every this many kimg.')
flags.DEFINE_float('save_kimg', 64, 'Save a checkpoint every this many kimg.')
flags.DEFINE_integer('keep_ckpt', 50, 'Checkpoints to keep.')
flags.DEFINE_string('eval_ckpt', '', 'Only evaluate this checkpoint (path without .index).')
flags.DEFINE_enum('nan_policy', 'stop', ['stop', 'skip'],
                  'On a non-finite loss: stop with an error, or rewind to the last checkpoint.')
flags.DEFINE_integer('eval_batch', 256, 'Batch size of evaluation.')
flags.DEFINE_integer('deterministic', 0, '1: TF op determinism; with the same --seed two runs on the '
                     'same machine give identical results (slower).')
# DC3 (names of the original code).
flags.DEFINE_integer('combined_output', 4, '4: DC3 with the ambiguity head; 0: no ambiguity head.')
flags.DEFINE_float('wou', 10, 'Weight of CE^-1 on unlabeled images (0: off).')
flags.DEFINE_float('wol', 10, 'Weight of CE^-1 on labeled images (0: off).')
flags.DEFINE_float('wf', 0.1, 'Weight of the ambiguity loss L_A.')
flags.DEFINE_float('ws', 0.1, 'Weight of the overcluster consistency L_S.')
flags.DEFINE_integer('ceinv_labels', 1, '1: CE^-1 partner has another (pseudo-)label; 0: random.')
flags.DEFINE_integer('prob_gradient', 0, '1: gradients flow through the p_a loss weights.')
flags.DEFINE_integer('use_soft_prob', 1, '0: round the p_a loss weights to {0, 1}.')
flags.DEFINE_integer('use_loss_rescale', 0, '1: rescale the weights by B / sum(weights).')
flags.DEFINE_float('prior_fuzzy_distribution', 0.6, 'p_A: expected share of ambiguous images; '
                   'negative (the original code\'s -1): the dataset\'s estimate from meta.json.')
flags.DEFINE_integer('overcluster_factor', 5, 'Overclustering head size k\' = factor * k.')
flags.DEFINE_enum('ambiguity_rank', 'p_a', list(dc3.AMBIGUITY_RANKS),
                  'What L_A\'s batch ranking sorts by: p_a (the paper) or the classifier\'s '
                  'uncertainty 1 - max p_n (ours; makes p_a predict ambiguity, see README).')
flags.DEFINE_integer('scale_labeled_ceinv', 1, '1: the labeled CE^-1 is scaled by 1 - p_a (the '
                     'paper\'s Eq. 1); 0: unscaled, as in the original code.')
flags.DEFINE_enum('supervised_certainty', 'labeled', list(dc3.SUPERVISED_CERTAINTY),
                  'fully_supervised.py with DC3: scale the labeled cross-entropy by each labeled '
                  'image\'s 1 - p_a (labeled, the spec) or by the unlabeled batch\'s mean 1 - p_a '
                  '(unlabeled, the original ce.py).')


def configs():
    """Reads the shared flags once into (TrainConfig, ModelConfig, DC3Config)."""
    train_config = train.TrainConfig(
        train_dir=FLAGS.train_dir, dataset=FLAGS.dataset, batch=FLAGS.batch, uratio=FLAGS.uratio,
        lr=FLAGS.lr, wd=FLAGS.wd, ema=FLAGS.ema, train_kimg=FLAGS.train_kimg,
        report_kimg=FLAGS.report_kimg, save_kimg=FLAGS.save_kimg, keep_ckpt=FLAGS.keep_ckpt,
        seed=FLAGS.seed, augment=FLAGS.augment, use_weighted_xe=FLAGS.use_weighted_xe,
        mixed_precision=FLAGS.mixed_precision, nan_policy=FLAGS.nan_policy,
        eval_batch=FLAGS.eval_batch, deterministic=FLAGS.deterministic, strategy=FLAGS.strategy)
    model_config = train.ModelConfig(arch=FLAGS.arch, filters=FLAGS.filters, scales=FLAGS.scales,
                                     repeat=FLAGS.repeat, bn_momentum=FLAGS.bn_momentum,
                                     sync_bn=FLAGS.sync_bn, fused_bn_act=FLAGS.fused_bn_act)
    dc3_config = dc3.DC3Config(
        combined_output=FLAGS.combined_output, wou=FLAGS.wou, wol=FLAGS.wol, wf=FLAGS.wf,
        ws=FLAGS.ws, ceinv_labels=FLAGS.ceinv_labels, prob_gradient=FLAGS.prob_gradient,
        use_soft_prob=FLAGS.use_soft_prob, use_loss_rescale=FLAGS.use_loss_rescale,
        prior_fuzzy_distribution=FLAGS.prior_fuzzy_distribution,
        overcluster_factor=FLAGS.overcluster_factor, ambiguity_rank=FLAGS.ambiguity_rank,
        scale_labeled_ceinv=FLAGS.scale_labeled_ceinv,
        supervised_certainty=FLAGS.supervised_certainty)
    return train_config, model_config, dc3_config


def build(method_cls, **hparams):
    """The method (with DC3 composed in when its flags enable it), ready to train."""
    train_config, model_config, dc3_config = configs()
    name, seed, size = records.parse_dataset_name(train_config.dataset)
    data_dir = FLAGS.data_dir or records.default_data_dir()
    info = records.load_dataset_info(data_dir, name, seed)
    cls = dc3.with_dc3(method_cls) if dc3_config.enabled else method_cls
    return cls(info, size, train_config, model_config, dc3_config, **hparams)


def run(method_cls, **hparams):
    """Body of every method script's ``main``: trains, or evaluates ``--eval_ckpt``.

    A DC3Error (bad flag, missing dataset, diverged loss, ...) becomes one ``error:`` line on
    stderr and exit status 2.
    """
    def main(_):
        logging.set_verbosity(logging.WARNING)  # TF's checkpoint INFO lines drown the progress bar
        method = build(method_cls, **hparams)
        out = method.evaluate_checkpoint(FLAGS.eval_ckpt) if FLAGS.eval_ckpt else method.train()
        print(out)
    io_utils.run_cli(main)

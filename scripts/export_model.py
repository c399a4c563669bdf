#!/usr/bin/env python3
"""Exports a trained run as a SavedModel that plain TensorFlow loads, without this repository.

    python scripts/export_model.py --run_dir RUN [--ckpt N] --out DIR

The network is rebuilt from ``RUN/args.json`` and takes the EMA weights of the run's newest
checkpoint (or ``ckpt-N``). The SavedModel's ``serve`` signature takes a batch of uint8 RGB images
of any size ``[N, H, W, 3]``, resizes them bilinearly to the training size (as the importer did),
and returns for each image:

  class, class_probs      argmax and p_n (k classes)
  cluster, cluster_probs  argmax and p_o (k' clusters; p_n without an overclustering head)
  ambiguity               p_a (0 without an ambiguity head)
  is_ambiguous            p_a >= 0.5: DC3's rule, the image is clustered instead of classified
  output                  the cluster if ambiguous, else the class
  embedding               the backbone's features

``DIR/dc3_model.json`` names the classes, the image size and where the weights came from. Use it:

    model = tf.saved_model.load(DIR)
    out = model.serve(tf.constant(images_uint8))     # or: scripts/predict.py --model DIR ...

The graph uses TensorFlow's own kernels only (``--fused_bn_act off``: the same network, to float
rounding), so it loads wherever TensorFlow 2.21 runs. The folder is written under a temporary
name and renamed when complete.
"""
import os
import shutil
import sys

import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import keras
import tensorflow as tf
from absl import app, flags, logging

from libml import augment, io_utils, methods, metrics, records, run_files
from libml.errors import DC3Error

FLAGS = flags.FLAGS
flags.DEFINE_string('run_dir', None, 'Run folder (holds args.json and ckpt/).')
flags.DEFINE_integer('ckpt', None, 'Step of the checkpoint to export (default: the newest).')
flags.DEFINE_string('out', None, 'Folder to write the SavedModel to (must not exist).')
flags.DEFINE_string('data_dir', None, 'Where generated datasets live (default $ML_DATA or ./data); '
                                      'the run\'s dataset gives the class names and image size.')
METADATA_FILE = 'dc3_model.json'


def checkpoint_path(run_dir, step):
    ckpt_dir = os.path.join(run_dir, 'ckpt')
    path = (os.path.join(ckpt_dir, f'ckpt-{step}') if step is not None
            else tf.train.latest_checkpoint(ckpt_dir))
    if not path or not tf.io.gfile.exists(path + '.index'):
        raise DC3Error(f'no checkpoint {"ckpt-" + str(step) if step is not None else ""} in '
                       f'{ckpt_dir}; train the run first or pick an existing --ckpt')
    return path


def serving_function(method):
    """uint8 images of any size -> DC3's outputs, with the EMA network."""
    size = method.dataset.image_size

    def serve(images):
        x = tf.image.resize(tf.cast(images, tf.float32), [size, size], method='bilinear')
        out = method.inference(method.ema_model, augment.normalize(x))
        probs = tf.cast(out['probs'], tf.float32)
        cluster_probs = tf.cast(out.get('cluster_probs', probs), tf.float32)
        ambiguity = tf.cast(out.get('ambiguity', tf.zeros_like(probs[:, 0])), tf.float32)
        is_ambiguous = ambiguity >= metrics.AMBIGUITY_THRESHOLD
        label = tf.argmax(probs, axis=1, output_type=tf.int32)
        cluster = tf.argmax(cluster_probs, axis=1, output_type=tf.int32)
        return {'class': label, 'class_probs': probs, 'cluster': cluster,
                'cluster_probs': cluster_probs, 'ambiguity': ambiguity,
                'is_ambiguous': is_ambiguous, 'output': tf.where(is_ambiguous, cluster, label),
                'embedding': tf.cast(out['embedding'], tf.float32)}
    return serve


def export(run_dir, out_dir, data_dir, step=None):
    """Writes the SavedModel of ``run_dir`` to ``out_dir``; returns its metadata."""
    if os.path.exists(out_dir):
        raise DC3Error(f'{out_dir} exists; give a new --out (or delete it)')
    if not os.path.exists(os.path.join(run_dir, run_files.ARGS_FILE)):
        raise DC3Error(f'{run_dir} is not a run folder (no {run_files.ARGS_FILE})')
    # Exported in float32 with TensorFlow's kernels, whatever the run trained with.
    keras.mixed_precision.set_global_policy('float32')
    method, args = methods.build_from_run(run_dir, data_dir,
                                          model_overrides={'fused_bn_act': 'off'},
                                          mixed_precision=0)
    path = checkpoint_path(run_dir, step)
    try:
        method.checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise DC3Error(f'checkpoint {path} does not fit the network of {run_dir}/args.json '
                       f'({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None
    archive = keras.export.ExportArchive()
    archive.track(method.ema_model)
    archive.add_endpoint(name='serve', fn=serving_function(method), input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name='images')])
    metadata = {
        'classes': list(method.dataset.classes), 'image_size': method.dataset.image_size,
        'num_clusters': method.num_clusters, 'has_ambiguity_head': method.has_ambiguity_head,
        'has_cluster_head': method.num_clusters != method.num_classes,
        'ambiguity_threshold': metrics.AMBIGUITY_THRESHOLD, 'method': args['method'],
        'run_dir': os.path.abspath(run_dir), 'checkpoint': os.path.basename(path),
        'step': int(method.optimizer.iterations.numpy()), 'weights': 'ema'}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f'.{os.path.basename(out_dir)}.tmp-{os.getpid()}')
    try:
        archive.write_out(tmp, verbose=False)
        io_utils.write_json(os.path.join(tmp, METADATA_FILE), metadata)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metadata


def main(_):
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer's INFO lines
    if not FLAGS.run_dir or not FLAGS.out:
        raise DC3Error('give --run_dir RUN and --out DIR')
    metadata = export(FLAGS.run_dir, FLAGS.out, FLAGS.data_dir or records.default_data_dir(),
                      FLAGS.ckpt)
    print(f'exported {metadata["checkpoint"]} (EMA weights, {len(metadata["classes"])} classes, '
          f'{metadata["num_clusters"]} clusters) to {FLAGS.out}', file=sys.stderr)
    print(FLAGS.out)


if __name__ == '__main__':
    app.run(lambda argv: io_utils.run_cli(main, argv))

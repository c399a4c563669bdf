"""FixMatch's strong view (``rac``) alone: Keras' RandAugment layer per image against the
project's batched RandAugment, alternately in one process.

``before`` is how the project built the strong view up to commit 3d52a89: in the tf.data map, per
image, ``keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5)`` and cutout
(``RandomErasing``), then batching, then the weak flip + translation on the batch. ``after`` is
libml.augment.Augmenter('rac') on whole batches (same ops and magnitudes, two per image).
Both start from the same shuffled uint8 images; img/s = strong-view images delivered per second.

    python -m bench.strong_augment
    python -m bench.strong_augment --sizes 32 --batches 448 --rounds 4
"""
import argparse
import os
import sys
import time

import numpy as np

import bench


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='32,96')
    p.add_argument('--batches', default='64,448',
                   help='images per batch: 64 (uratio 1) and 448 (FixMatch uratio 7)')
    p.add_argument('--steps', type=int, default=6, help='timed batches per variant and round')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--out', default=os.path.join('bench', 'out', 'strong_augment.json'))
    return p.parse_args(argv)


def before(images, batch):
    import keras
    import tensorflow as tf
    randaugment = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=0)
    cutout = keras.layers.RandomErasing(factor=1.0, scale=(0.02, 0.25), fill_value=127.5,
                                        value_range=(0, 255), seed=0)
    weak = keras.Sequential([keras.layers.RandomFlip('horizontal', seed=0),
                             keras.layers.RandomTranslation(0.125, 0.125, fill_mode='reflect',
                                                            seed=0)])

    def per_image(x):
        x = tf.cast(x, tf.float32)
        return cutout(tf.ensure_shape(randaugment(x, training=True), x.shape), training=True)

    ds = tf.data.Dataset.from_tensor_slices(images).repeat().shuffle(4096, seed=0)
    ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
    return ds.map(lambda x: weak(x, training=True), num_parallel_calls=tf.data.AUTOTUNE)


def after(images, batch):
    import tensorflow as tf

    from libml import augment
    augmenter = augment.Augmenter('rac', seed=0)
    ds = tf.data.Dataset.from_tensor_slices(images).repeat().shuffle(4096, seed=0)
    ds = ds.batch(batch, drop_remainder=True)
    return ds.map(lambda x: augmenter(tf.cast(x, tf.float32)),
                  num_parallel_calls=tf.data.AUTOTUNE)


def speed(iterator, batch, steps):
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return batch * steps / (time.perf_counter() - start)


def main(argv=None):
    args = parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(',')]
        batches = [int(b) for b in args.batches.split(',')]
    except ValueError:
        sys.exit('strong_augment: --sizes and --batches take comma-separated integers')
    machine = bench.machine_info()
    print(f"{machine['cpu']}, {machine['cores']} cores, tensorflow "
          f"{machine['versions']['tensorflow']}, {machine['date']}", flush=True)
    start = time.time()
    rows = []
    for size in sizes:
        images = np.random.default_rng(0).integers(0, 256, (4096, size, size, 3), np.uint8)
        for batch in batches:
            # Both pipelines stay alive; each round times them in alternating order.
            iterators = {name: iter(build(images, batch).prefetch(1))
                         for name, build in (('before', before), ('after', after))}
            runs = {name: [] for name in iterators}
            for r in range(args.rounds):
                for name in (('before', 'after') if r % 2 == 0 else ('after', 'before')):
                    runs[name].append(speed(iterators[name], batch, args.steps))
            row = {'size': size, 'batch': batch, 'img_per_s_by_round': runs,
                   'img_per_s': {name: bench.median(v) for name, v in runs.items()}}
            row['after_over_before'] = row['img_per_s']['after'] / row['img_per_s']['before']
            rows.append(row)
            print(f"{size:3d} px, batch {batch:3d}: before (Keras RandAugment per image) "
                  f"{row['img_per_s']['before']:7.0f} img/s, after (batched) "
                  f"{row['img_per_s']['after']:7.0f} img/s, after/before "
                  f"{row['after_over_before']:.1f}  [{time.time() - start:.0f} s]", flush=True)
    bench.write_results('strong_augment', 'strong_augment', rows, args, machine, start)


if __name__ == '__main__':
    main()

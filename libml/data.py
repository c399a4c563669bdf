"""tf.data input pipelines: decode once, cache, shuffle, repeat, augment in parallel, prefetch."""
import dataclasses

import tensorflow as tf

from libml import augment, records

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 1 << 16


@dataclasses.dataclass(frozen=True)
class InputConfig:
    batch: int                  # labeled images per step
    uratio: int                 # unlabeled images per labeled image
    unlabeled_views: int        # 0 (supervised), 1 or 2 augmented views per unlabeled image
    augment: tuple              # (labeled, unlabeled view 1, unlabeled view 2) augmentation names
    labeled_size: int = -1      # use only the first N labeled images (-1 = all)
    seed: int = 0


def split_dataset(info, split):
    """The decoded split, cached in memory after the first pass (images stay uint8)."""
    # A file cut at a record boundary would otherwise be read without complaint.
    records.verify_split(info.directory, split)
    ds = tf.data.TFRecordDataset(info.split_path(split), num_parallel_reads=AUTOTUNE)
    shape = [info.image_size, info.image_size, 3]

    def parse(serialized):
        x = records.parse_example(serialized, info.num_classes)
        return {**x, 'image': tf.ensure_shape(x['image'], shape)}

    return ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)


def _augmented_batches(ds, batch, view_names, seed):
    """Yields batches of one augmented image tensor per view from ``ds`` shuffled anew every
    epoch: each image comes once per epoch (a split larger than ``SHUFFLE_BUFFER`` is shuffled
    within windows of that size; its records are stored in a seeded random order).

    Shuffling before repeating matters. Shuffling the repeated stream instead, with a buffer
    holding many epochs (65536 elements = 41 epochs of 1600 labeled images), draws nearly with
    replacement: over a 15-epoch run some images are seen twice as often as others, and on
    CIFAR-10N the supervised training lost ~3 points of validation accuracy that way
    (BENCHMARKS.md, section 14, part 7; README, Differences). FixMatch's memoised pipeline and
    USB's sampler both visit every image about once per epoch.
    """
    augmenters = [augment.Augmenter(name, seed=None if seed is None else seed + i)
                  for i, name in enumerate(view_names)]
    ds = ds.cache().shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch, drop_remainder=True)

    def per_batch(x):
        images = tf.cast(x['image'], tf.float32)
        return tuple(augment.normalize(a(images)) for a in augmenters), x['label']

    return ds.map(per_batch, num_parallel_calls=AUTOTUNE)


def train_inputs(info, config):
    """Batches ``{'image': [B,H,W,3], 'label': [B], 'unlabeled': (view, ...)}`` forever.

    Each unlabeled view is a tensor ``[B * uratio, H, W, 3]``; the views of one batch are different
    augmentations of the same images, in the same order.
    """
    labeled = split_dataset(info, 'train')
    if config.labeled_size > 0:
        labeled = labeled.take(config.labeled_size)  # records are stored in a seeded random order
    labeled = _augmented_batches(labeled, config.batch, config.augment[:1], config.seed)
    labeled = labeled.map(lambda views, label: {'image': views[0], 'label': label})
    if config.unlabeled_views == 0:
        ds = labeled.map(lambda x: {**x, 'unlabeled': ()})
    else:
        unlabeled = _augmented_batches(
            split_dataset(info, 'unlabeled'), config.batch * config.uratio,
            config.augment[1:1 + config.unlabeled_views],
            None if config.seed is None else config.seed + 1000)
        ds = tf.data.Dataset.zip(labeled, unlabeled).map(
            lambda x, u: {**x, 'unlabeled': u[0]})
    return ds.prefetch(AUTOTUNE)


def eval_inputs(info, split, batch):
    """One ordered pass over a split, normalised, without augmentation."""
    ds = split_dataset(info, split).cache()
    return ds.map(lambda x: {**x, 'image': augment.normalize(x['image'])},
                  num_parallel_calls=AUTOTUNE).batch(batch).prefetch(AUTOTUNE)

"""Image augmentations built from Keras 3 preprocessing layers.

FixMatch's augmentations, named as in its ``--augment`` flag (``labeled.unlabeled1.unlabeled2``):
  ``x``    none;
  ``d``    weak: random horizontal flip + translation by up to 1/8 of the size (reflect padding);
  ``rac``  strong: weak, then RandAugment (2 random ops) and cutout. RandAugment stands in for
           FixMatch's CTAugment, whose learned magnitudes need a feedback loop we do not reproduce.
Images are float32 in [0, 255] going in and out; normalisation to [-1, 1] happens afterwards.
"""
import keras
import tensorflow as tf

from libml.errors import DC3Error

AUGMENTATIONS = ('x', 'd', 'rac')


def parse_augment(spec, num_parts=3):
    """``'d.d.rac'`` -> ``('d', 'd', 'rac')``, validated."""
    parts = tuple(spec.split('.'))
    if len(parts) != num_parts or any(p not in AUGMENTATIONS for p in parts):
        raise DC3Error(f'--augment {spec!r} must be {num_parts} dot-separated names from '
                       f'{AUGMENTATIONS} (labeled.unlabeled_view1.unlabeled_view2), e.g. d.d.rac')
    return parts


class Augmenter:
    """Applies one named augmentation. Weak ops run on whole batches (per-image random parameters);
    RandAugment runs per image, because on a batch Keras picks the same ops for every image."""

    def __init__(self, name, seed=None):
        self.name = name
        self.weak = keras.Sequential([
            keras.layers.RandomFlip('horizontal', seed=seed),
            keras.layers.RandomTranslation(0.125, 0.125, fill_mode='reflect', seed=seed),
        ])
        if name == 'rac':
            self.randaugment = keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                                        factor=0.5, seed=seed)
            # Cutout: one erased box of up to a quarter of the image, filled with mid-grey.
            self.cutout = keras.layers.RandomErasing(factor=1.0, scale=(0.02, 0.25),
                                                     fill_value=127.5, value_range=(0, 255),
                                                     seed=seed)

    @property
    def per_image(self):
        return self.name == 'rac'

    def image(self, image):
        """Per-image part (before batching)."""
        if self.name != 'rac':
            return image
        # RandAugment loses the static shape, which RandomErasing needs.
        augmented = tf.ensure_shape(self.randaugment(image, training=True), image.shape)
        return self.cutout(augmented, training=True)

    def batch(self, images):
        """Batched part (after batching)."""
        if self.name == 'x':
            return images
        return self.weak(images, training=True)


def normalize(images):
    """[0, 255] -> [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0

"""Image augmentations built from Keras 3 preprocessing layers, applied to whole batches.

FixMatch's augmentations, named as in its ``--augment`` flag (``labeled.unlabeled1.unlabeled2``):
  ``x``    none;
  ``d``    weak: random horizontal flip + a shift by a whole number of pixels, up to 1/8 of the
           size (FixMatch's pad-by-reflection-then-crop; no interpolation);
  ``rac``  strong: RandAugment (2 random ops per image) and cutout, then the weak flip + shift.
           RandAugment stands in for FixMatch's CTAugment, whose learned magnitudes need a feedback
           loop we do not reproduce.
Images are float32 in [0, 255] going in and out; normalisation to [-1, 1] happens afterwards.

Every augmentation draws its random parameters per image, but runs on a batch. Keras' own
``RandAugment`` layer cannot do that: on a batch it picks the same two ops for every image, and per
image it computes all eleven ops twice and keeps two (BENCHMARKS.md section 3). ``RandAugment``
below uses the same eleven Keras ops with the same magnitudes, picks two per image, and sends each
image only through the ops it picked.
"""
import zlib

import keras
import tensorflow as tf

# Augmentation is input processing, independent of the network's precision: under the
# mixed_bfloat16 policy the layers would otherwise compute in bf16, which rounds pixel values and
# runs in TensorFlow's slower bf16 CPU kernels.
AUGMENT_DTYPE = 'float32'

from libml.errors import DC3Error

AUGMENTATIONS = ('x', 'd', 'rac')


def parse_augment(spec, num_parts=3):
    """``'d.d.rac'`` -> ``('d', 'd', 'rac')``, validated."""
    parts = tuple(spec.split('.'))
    if len(parts) != num_parts or any(p not in AUGMENTATIONS for p in parts):
        raise DC3Error(f'--augment {spec!r} must be {num_parts} dot-separated names from '
                       f'{AUGMENTATIONS} (labeled.unlabeled_view1.unlabeled_view2), e.g. d.d.rac')
    return parts


def equalize(images):
    """Histogram equalisation of each channel of each image, as ``keras.layers.Equalization``
    computes it for a single image (on a batch, that layer pools the histogram over the batch).

    images: float [B, H, W, C] in [0, 255]. A channel with a single value is left as it is.
    """
    shape = tf.shape(images)
    batch, channels = shape[0], shape[3]
    # [B, C, H*W] bin of every pixel: the integer part of its value, as Keras bins 0..255.
    bins = tf.clip_by_value(tf.cast(images, tf.int32), 0, 255)
    bins = tf.reshape(tf.transpose(bins, [0, 3, 1, 2]), [batch, channels, -1])
    offsets = tf.reshape(tf.range(batch * channels), [batch, channels, 1]) * 256
    hist = tf.math.bincount(tf.reshape(bins + offsets, [-1]), minlength=batch * channels * 256,
                            maxlength=batch * channels * 256)
    hist = tf.reshape(hist, [batch, channels, 256])
    cdf = tf.cumsum(hist, axis=-1)
    cdf_min = tf.reduce_min(tf.where(cdf > 0, cdf, tf.int32.max), axis=-1, keepdims=True)
    denominator = cdf[..., -1:] - cdf_min
    denominator = tf.where(denominator == 0, 1, denominator)
    # float64 and round-half-to-even, as Keras' int32 division and round.
    lut = tf.math.divide(tf.cast((cdf - cdf_min) * 255, tf.float64),
                         tf.cast(denominator, tf.float64))
    lut = tf.cast(tf.clip_by_value(tf.round(lut), 0, 255), images.dtype)
    flat = tf.reshape(tf.transpose(images, [0, 3, 1, 2]), [batch, channels, -1])
    constant = tf.math.count_nonzero(hist, axis=-1, keepdims=True) <= 1
    out = tf.where(constant, flat, tf.gather(lut, bins, batch_dims=2))
    return tf.transpose(tf.reshape(out, [batch, channels, shape[1], shape[2]]), [0, 2, 3, 1])


def derived_seed(seed, name):
    """A seed for one random source, from the pipeline's seed and the source's name: sources
    seeded with equal integers would draw the same numbers."""
    return None if seed is None else zlib.crc32(f'{seed}/{name}'.encode()) & 0x7fffffff


def rand_augment_ops(factor=0.5, seed=None):
    """The eleven ops of ``keras.layers.RandAugment(value_range=(0, 255), factor=factor)``, built
    with the arguments that layer gives them; each takes and returns a batch.

    The geometric ones (shear, translation, rotation) interpolate bilinearly, as that layer does.
    CTAugment's and USB's PIL ops sample the nearest pixel instead; that variant scored 1.6 points
    lower on FixMatch (validation accuracy of the live weights with re-estimated batch-norm
    statistics, CIFAR-10N seed 1, BENCHMARKS.md section 14), so the strong view keeps Keras'
    sampling. The weak shift moves whole pixels (``RandomShift``)."""
    factor = (0, factor)
    value_range = (0, 255)

    def kw(i):
        return {'seed': derived_seed(seed, f'randaugment/op{i}'), 'dtype': AUGMENT_DTYPE}

    layers = [
        keras.layers.RandomShear(x_factor=factor, y_factor=factor, interpolation='bilinear', **kw(0)),
        keras.layers.RandomTranslation(factor, factor, interpolation='bilinear', **kw(1)),
        keras.layers.RandomRotation(factor, interpolation='bilinear', **kw(2)),
        keras.layers.RandomBrightness(factor, value_range=value_range, **kw(3)),
        keras.layers.RandomColorDegeneration(factor, value_range=value_range, **kw(4)),
        keras.layers.RandomContrast(factor, value_range=value_range, **kw(5)),
        keras.layers.RandomSharpness(factor, value_range=value_range, **kw(6)),
        keras.layers.RandomPosterization(factor=max(1, int(8 * factor[1])),
                                         value_range=value_range, **kw(7)),
        keras.layers.Solarization(addition_factor=factor, threshold_factor=factor,
                                  value_range=value_range, **kw(8)),
        keras.layers.AutoContrast(value_range=value_range, dtype=AUGMENT_DTYPE),
    ]
    return [lambda images, layer=layer: layer(images, training=True) for layer in layers] + [
        equalize]


class RandAugment:
    """``num_ops`` ops per image, each drawn uniformly (with replacement) from ``ops``, applied in
    turn; each op sees only the images that drew it, in one batch."""

    def __init__(self, num_ops=2, ops=None, seed=None):
        self.num_ops = num_ops
        self.ops = ops if ops is not None else rand_augment_ops(seed=seed)
        self.choice_seed = keras.random.SeedGenerator(derived_seed(seed, 'randaugment/choice'))

    def __call__(self, images):
        choices = keras.random.randint((self.num_ops, tf.shape(images)[0]), 0, len(self.ops),
                                       seed=self.choice_seed)
        return self.apply(images, choices)

    def apply(self, images, choices):
        """images [B, H, W, C]; choices [num_ops, B]: the op index of each step and image."""
        positions = tf.range(tf.shape(images)[0])
        for step in range(self.num_ops):
            parts = tf.dynamic_partition(images, choices[step], len(self.ops))
            where = tf.dynamic_partition(positions, choices[step], len(self.ops))
            images = tf.dynamic_stitch(where, [_unless_empty(op, part)
                                               for op, part in zip(self.ops, parts)])
        return images


def _unless_empty(op, images):
    """op(images), or images when there are none (some Keras ops fail on an empty batch)."""
    return tf.cond(tf.shape(images)[0] > 0, lambda: op(images), lambda: images)


class RandomShift:
    """FixMatch's weak translation: pad each image by reflection (``tf.pad``'s REFLECT, edge pixel
    not repeated) with 1/8 of its height and width, then crop the original size at an offset
    drawn uniformly per image and axis from the whole numbers 0..2 * pad. Pixels are moved, never
    resampled; Keras' ``RandomTranslation`` draws fractional shifts and interpolates, which blurs
    every training image (and the evaluation images are not blurred)."""

    def __init__(self, seed=None):
        self.seed = keras.random.SeedGenerator(derived_seed(seed, 'shift'))

    def __call__(self, images):
        height, width = images.shape[1], images.shape[2]
        pad_y, pad_x = height // 8, width // 8
        padded = tf.pad(images, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode='REFLECT')
        batch = tf.shape(images)[0]
        dy = keras.random.randint((batch, 1), 0, 2 * pad_y + 1, dtype='int32', seed=self.seed)
        dx = keras.random.randint((batch, 1), 0, 2 * pad_x + 1, dtype='int32', seed=self.seed)
        rows = tf.gather(padded, dy + tf.range(height)[None], axis=1, batch_dims=1)
        return tf.gather(rows, dx + tf.range(width)[None], axis=2, batch_dims=1)


class Augmenter:
    """Applies one named augmentation to a batch, with random parameters per image."""

    def __init__(self, name, seed=None):
        self.name = name
        # A list, not keras.Sequential: a Sequential built under a mixed policy casts its inputs
        # to bf16 before the layers see them.
        flip = keras.layers.RandomFlip('horizontal', seed=seed, dtype=AUGMENT_DTYPE)
        self.weak = [lambda images: flip(images, training=True), RandomShift(seed=seed)]
        if name == 'rac':
            self.randaugment = RandAugment(num_ops=2, seed=seed)
            # Cutout: one erased box of up to a quarter of the image, filled with mid-grey.
            self.cutout = keras.layers.RandomErasing(factor=1.0, scale=(0.02, 0.25),
                                                     fill_value=127.5, value_range=(0, 255),
                                                     seed=seed, dtype=AUGMENT_DTYPE)

    def __call__(self, images):
        if self.name == 'x':
            return images
        if self.name == 'rac':
            shape = images.shape
            images = self.cutout(tf.ensure_shape(self.randaugment(images), shape), training=True)
        for op in self.weak:
            images = op(images)
        return images


def normalize(images):
    """[0, 255] -> [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0

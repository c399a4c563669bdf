"""Image augmentations on whole batches, with random parameters per image.

FixMatch's augmentations, named as in its ``--augment`` flag (``labeled.unlabeled1.unlabeled2``):
  ``x``    none;
  ``d``    weak: random horizontal flip + a shift by a whole number of pixels, up to 1/8 of the
           size (FixMatch's pad-by-reflection-then-crop; no interpolation);
  ``rac``  strong: the weak flip + shift, then FixMatch's RandAugment (two of fourteen ops per
           image, each applied with probability 0.5 at a level drawn from 1..9, with the
           magnitudes of FixMatch's ``third_party/auto_augment``), then a cutout of half the
           image's side. It stands in for FixMatch's CTAugment, whose learned magnitudes need a
           feedback loop we do not reproduce. The ops follow PIL's definitions (the library
           FixMatch's run through), except that rotation and shear resample bilinearly where PIL
           takes the nearest pixel (README, Differences, row 26).
Images are float32 in [0, 255] going in and out; normalisation to [-1, 1] happens afterwards.

Keras' ``RandAugment`` layer picks the same ops for every image of a batch, and its magnitudes
(``factor`` 0.5) are not FixMatch's: rotations of 0-180 degrees one way, shifts of up to half the
image one way, 1-3-bit posterisation (our strong view until 2026-12-04; README, Differences,
row 27). ``RandAugment`` below sends each image only through the ops it drew.
"""
import math
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


# FixMatch's RandAugment (its ``rac``: AugmentPoolRAMC in FixMatch's libml/augment.py, with the
# ops and magnitudes of third_party/auto_augment/augmentations.py): per image, two ops drawn with
# replacement from these fourteen, each applied with probability 0.5 at a level drawn from 1..9;
# then cutout. Levels map to magnitudes as there (integer division where the original truncates).
RA_LEVELS = (1, 10)   # np.random.randint(1, 10): 1..9
RA_PROBABILITY = 0.5  # each drawn op is applied with this probability
FILL = 127.5          # what the geometric ops uncover and cutout covers: 0 in [-1, 1], mid-grey


def _per_image(values):
    """[B] -> [B, 1, 1, 1] float32, to scale or shift each image by its own value."""
    return tf.reshape(tf.cast(values, tf.float32), [-1, 1, 1, 1])


def enhance_factor(level):
    """The factor of PIL's ImageEnhance ops at ``level``: 0.28 (level 1) to 1.72 (level 9)."""
    return tf.cast(level, tf.float32) * 1.8 / 10 + 0.1


def _blend(degenerate, images, factor):
    """PIL's ``ImageEnhance``: ``degenerate + factor * (images - degenerate)``, clipped."""
    return tf.clip_by_value(degenerate + _per_image(factor) * (images - degenerate), 0.0, 255.0)


def grayscale(images):
    """PIL's ``convert('L')``: ITU-R 601-2 luma, [B, H, W, 1]."""
    return tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def brightness(images, level, sign):
    return _blend(tf.zeros_like(images), images, enhance_factor(level))


def color(images, level, sign):
    return _blend(grayscale(images), images, enhance_factor(level))


def contrast(images, level, sign):
    # PIL blends with a flat image of the luma's mean, rounded to an integer.
    mean = tf.floor(tf.reduce_mean(grayscale(images), axis=[1, 2, 3], keepdims=True) + 0.5)
    return _blend(mean, images, enhance_factor(level))


def sharpness(images, level, sign):
    # PIL blends with the image filtered by its SMOOTH kernel; the one-pixel border stays as it is.
    kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, images.shape[-1], 1])
    smooth = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], 'VALID')
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    height, width = images.shape[1], images.shape[2]
    inner = tf.pad(tf.ones([height - 2, width - 2], tf.bool), [[1, 1], [1, 1]])
    return _blend(tf.where(inner[None, :, :, None], smooth, images), images, enhance_factor(level))


def solarize(images, level, sign):
    """Pixels at or above 256 - floor(25.6 * level) (231 at level 1, 26 at level 9) invert."""
    threshold = _per_image(256 - (level * 256) // 10)
    return tf.where(images >= threshold, 255.0 - images, images)


def posterize(images, level, sign):
    """Keeps the top 4 - level * 0.4 bits (4 bits at levels 1-2, down to 1 at levels 8-9)."""
    step = _per_image(2 ** (8 - (4 - (level * 4) // 10)))
    return tf.floor(images / step) * step


def autocontrast(images, level, sign):
    """Each channel of each image stretched to 0..255 (PIL's ``autocontrast``, no cut-off); a
    channel with one value stays as it is."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    span = high - low
    stretched = (images - low) * 255.0 / tf.where(span > 0, span, 1.0)
    return tf.where(span > 0, stretched, images)


def affine(images, transforms):
    """Resamples each image bilinearly at the input positions ``transforms`` [B, 8] (a0..a2,
    b0..b2, c0, c1: output (x, y) reads input ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k),
    k = c0 x + c1 y + 1, in pixel indices, as PIL's ``transform`` reads its coefficients);
    positions outside the image read ``FILL``."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3], fill_value=FILL, interpolation='BILINEAR',
        fill_mode='CONSTANT')


def _affine_rows(batch, *columns):
    """[batch, 8] transforms from six per-image columns (scalars broadcast), no projection."""
    full = [tf.broadcast_to(tf.cast(c, tf.float32), [batch]) for c in columns]
    return tf.stack(full + [tf.zeros([batch])] * 2, axis=1)


def rotation_transforms(degrees, height, width):
    """[B, 8] transforms rotating each image by ``degrees`` [B] about its centre."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    return _affine_rows(tf.shape(radians)[0], cos, -sin, cx - cos * cx + sin * cy,
                        sin, cos, cy - sin * cx - cos * cy)


def rotate(images, level, sign):
    """3 * level degrees (3 to 27), either way."""
    degrees = sign * tf.cast(3 * level, tf.float32)
    return affine(images, rotation_transforms(degrees, images.shape[1], images.shape[2]))


def shear_x(images, level, sign):
    """Row y slides by ``v * (y + 0.5)`` pixels (PIL measures from the top edge, not the first
    pixel's centre), v = level * 0.03 (0.03 to 0.27), either way."""
    v = sign * tf.cast(level, tf.float32) * 0.03
    return affine(images, _affine_rows(tf.shape(v)[0], 1.0, v, 0.5 * v, 0.0, 1.0, 0.0))


def shear_y(images, level, sign):
    v = sign * tf.cast(level, tf.float32) * 0.03
    return affine(images, _affine_rows(tf.shape(v)[0], 1.0, 0.0, 0.0, v, 1.0, 0.5 * v))


def translate_x(images, level, sign):
    """``level`` pixels of a 32-pixel image (1 to 9; scaled with the width), either way."""
    shift = sign * tf.cast(level, tf.float32) * (images.shape[2] / 32.0)
    return affine(images, _affine_rows(tf.shape(shift)[0], 1.0, 0.0, shift, 0.0, 1.0, 0.0))


def translate_y(images, level, sign):
    shift = sign * tf.cast(level, tf.float32) * (images.shape[1] / 32.0)
    return affine(images, _affine_rows(tf.shape(shift)[0], 1.0, 0.0, 0.0, 0.0, 1.0, shift))


def identity(images, level, sign):
    return images


def _equalize(images, level, sign):
    return equalize(images)


# FixMatch's RANDOM_POLICY_OPS, in its order; each op(images [B, H, W, C] in [0, 255],
# level [B] int32 in 1..9, sign [B] float32 of +-1) -> images.
RAND_AUGMENT_OPS = (identity, autocontrast, _equalize, rotate, solarize, color, contrast,
                    brightness, sharpness, shear_x, translate_x, translate_y, posterize, shear_y)


class RandAugment:
    """``num_ops`` ops per image, each drawn uniformly (with replacement) from ``ops`` and applied
    with ``probability`` at its own level and sign, in turn; each op sees only the images that
    drew it, in one batch."""

    def __init__(self, num_ops=2, ops=RAND_AUGMENT_OPS, probability=RA_PROBABILITY, seed=None):
        self.num_ops, self.ops, self.probability = num_ops, tuple(ops), probability
        self.seed = keras.random.SeedGenerator(derived_seed(seed, 'randaugment'))

    def __call__(self, images):
        shape = (self.num_ops, tf.shape(images)[0])
        choices = keras.random.randint(shape, 0, len(self.ops), seed=self.seed)
        applied = keras.random.uniform(shape, seed=self.seed) < self.probability
        levels = keras.random.randint(shape, *RA_LEVELS, seed=self.seed)
        signs = tf.where(keras.random.uniform(shape, seed=self.seed) < 0.5, -1.0, 1.0)
        return self.apply(images, tf.where(applied, choices, len(self.ops)), levels, signs)

    def apply(self, images, choices, levels, signs):
        """images [B, H, W, C]; choices, levels, signs [num_ops, B]: the op index (``len(ops)``:
        none), its level and sign for each step and image."""
        positions = tf.range(tf.shape(images)[0])
        parts = len(self.ops) + 1  # the last part: images that skip this step
        for step in range(self.num_ops):
            split = [tf.dynamic_partition(x, choices[step], parts)
                     for x in (images, levels[step], signs[step], positions)]
            outputs = [_unless_empty(op, *args) for op, *args in zip(self.ops, *split[:3])]
            images = tf.dynamic_stitch(split[3], outputs + [split[0][-1]])
        return images


def _unless_empty(op, images, level, sign):
    """op(images, level, sign), or images when there are none."""
    return tf.cond(tf.shape(images)[0] > 0, lambda: op(images, level, sign), lambda: images)


class Cutout:
    """FixMatch's cutout (``cutout_numpy``, 16 pixels at 32): a square of half the image's side
    centred on a pixel drawn uniformly per image, cut off at the borders, filled with ``FILL``."""

    def __init__(self, seed=None):
        self.seed = keras.random.SeedGenerator(derived_seed(seed, 'cutout'))

    def __call__(self, images):
        height, width = images.shape[1], images.shape[2]
        half = min(height, width) // 4  # rows centre - half .. centre + half - 1
        batch = tf.shape(images)[0]
        cy = keras.random.randint((batch, 1), 0, height, dtype='int32', seed=self.seed)
        cx = keras.random.randint((batch, 1), 0, width, dtype='int32', seed=self.seed)
        rows = (tf.range(height)[None] >= cy - half) & (tf.range(height)[None] < cy + half)
        cols = (tf.range(width)[None] >= cx - half) & (tf.range(width)[None] < cx + half)
        box = rows[:, :, None] & cols[:, None, :]
        return tf.where(box[..., None], FILL, images)


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
        self.ops = [lambda images: flip(images, training=True), RandomShift(seed=seed)]
        if name == 'rac':  # FixMatch's order: the weak flip + shift, RandAugment, cutout
            self.ops += [RandAugment(num_ops=2, seed=seed), Cutout(seed=seed)]

    def __call__(self, images):
        if self.name == 'x':
            return images
        for op in self.ops:
            images = op(images)
        return images


def normalize(images):
    """[0, 255] -> [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0

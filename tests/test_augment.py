"""The batched augmentations (libml/augment.py): per-image randomness on whole batches.

The strong view is FixMatch's RandAugment: its ops are checked against PIL (the library FixMatch's
ops call) at every level, the draws (op, whether it applies, level, sign) against their
distributions, and each image against the ops it drew. The weak shift is checked against NumPy's
padded crops; the histogram equalisation per image against Keras' for one image.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from libml import augment

NUM_OPS = len(augment.RAND_AUGMENT_OPS)  # 14, FixMatch's RANDOM_POLICY_OPS
SKIP = NUM_OPS                           # the choice of an image that skips a step
LEVELS = np.arange(1, 10, dtype=np.int32)


def fake_ops(count=NUM_OPS):
    # op k: x -> 16 x + k, so two steps give 256 x + 16 k1 + k2: both choices can be read back.
    return [lambda x, level, sign, k=k: 16.0 * x + k for k in range(count)]


def test_equalize_is_per_image_as_keras_equalizes_one_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 7, 3)).astype(np.float32)
    images[0, ..., 1] = 7.0                                   # one value: left unchanged
    images[1] = np.where(images[1] > 128, 200.0, 3.0)          # two values
    images[2] = 100.0 + 0.2 * images[2]                        # low contrast, fractional values
    layer = keras.layers.Equalization(value_range=(0, 255))
    expected = np.concatenate([layer(images[i:i + 1]).numpy() for i in range(len(images))])
    got = augment.equalize(tf.constant(images)).numpy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[0, ..., 1], images[0, ..., 1])
    # and not what the layer does to the batch as a whole (one pooled histogram)
    assert not np.array_equal(layer(images).numpy(), expected)


def test_each_image_goes_through_the_ops_it_drew_in_order():
    rand_augment = augment.RandAugment(num_ops=2, ops=fake_ops())
    x = np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1)
    choices = np.array([[0, 3, 13, SKIP, 7, 1], [5, SKIP, 0, 13, 7, 2]], dtype=np.int32)
    ones = np.ones((2, 6), np.int32)
    got = rand_augment.apply(tf.constant(x), tf.constant(choices), tf.constant(ones),
                             tf.constant(ones.astype(np.float32))).numpy()[:, 0, 0, 0]
    expected = x[:, 0, 0, 0].copy()
    for step in range(2):
        applied = choices[step] != SKIP
        expected = np.where(applied, 16 * expected + choices[step], expected)
    np.testing.assert_array_equal(got, expected)


def test_each_op_gets_the_level_and_sign_of_its_images():
    record = [lambda x, level, sign: x + tf.reshape(tf.cast(level, tf.float32) * sign,
                                                    [-1, 1, 1, 1])]
    rand_augment = augment.RandAugment(num_ops=1, ops=record)
    levels, signs = np.array([[3, 9, 1, 5]], np.int32), np.array([[1, -1, -1, 1]], np.float32)
    choices = np.array([[0, 0, 1, 0]], np.int32)  # 1 = len(ops): image 2 skips the step
    got = rand_augment.apply(tf.zeros([4, 1, 1, 1]), tf.constant(choices), tf.constant(levels),
                             tf.constant(signs)).numpy()[:, 0, 0, 0]
    np.testing.assert_array_equal(got, [3, -9, 0, 5])


def test_draws_follow_fixmatch_op_uniform_applied_half_the_time_level_1_to_9_either_sign():
    # op k writes 1000 + 100 k + 10 level + (sign > 0); an image that skips keeps its 0.
    ops = [lambda x, level, sign, k=k: x + tf.reshape(
        1000.0 + 100 * k + 10 * tf.cast(level, tf.float32) + tf.cast(sign > 0, tf.float32),
        [-1, 1, 1, 1]) for k in range(NUM_OPS)]
    out = augment.RandAugment(num_ops=1, ops=ops, seed=0)(tf.zeros([14000, 1, 1, 1]))
    out = out.numpy()[:, 0, 0, 0].astype(int)
    applied = out > 0
    assert 0.47 < applied.mean() < 0.53                            # probability 0.5
    code = out[applied] - 1000
    ops_drawn, levels, positive = code // 100, code % 100 // 10, code % 10
    assert set(ops_drawn) == set(range(NUM_OPS)) and set(levels) == set(range(1, 10))
    assert np.bincount(ops_drawn).min() > 400 and np.bincount(ops_drawn).max() < 600  # 500
    assert np.bincount(levels)[1:].min() > 680 and np.bincount(levels)[1:].max() < 880  # 778
    assert 0.47 < positive.mean() < 0.53


def test_two_steps_draw_their_ops_independently():
    rand_augment = augment.RandAugment(num_ops=2, ops=fake_ops(), probability=1.0, seed=0)
    out = rand_augment(tf.zeros([2800, 1, 1, 1])).numpy().astype(int)[:, 0, 0, 0]
    first, second = out // 16, out % 16
    for drawn in (first, second):
        counts = np.bincount(drawn, minlength=NUM_OPS)
        assert len(counts) == NUM_OPS  # nothing outside the op list
        assert counts.min() > 130 and counts.max() < 270  # 200 expected each
    assert 0.04 < np.mean(first == second) < 0.11  # 1/14 if the steps draw independently


def test_seeded_rand_augment_repeats_and_other_seeds_differ():
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (16, 8, 8, 3)), tf.float32)

    def run(seed):
        return augment.RandAugment(seed=seed)(images).numpy()

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


@pytest.mark.parametrize('batch', [0, 1, 5])
def test_every_real_op_takes_any_part_size_and_keeps_the_value_range(batch):
    rng = np.random.default_rng(2)
    images = tf.constant(rng.uniform(0, 255, (batch, 8, 8, 3)), tf.float32)
    levels = tf.constant(rng.integers(1, 10, (1, batch)), tf.int32)
    signs = tf.constant(rng.choice([-1.0, 1.0], (1, batch)), tf.float32)
    rand_augment = augment.RandAugment(num_ops=1, seed=3)
    for k in range(NUM_OPS):  # every image through op k (the others get none)
        out = rand_augment.apply(images, tf.fill([1, batch], k), levels, signs).numpy()
        assert out.shape == (batch, 8, 8, 3)
        if batch:
            assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3


def pil_images(count=9, height=12, width=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3)).astype(np.uint8)


def run_op(op, images, levels, signs=None):
    signs = np.ones(len(levels), np.float32) if signs is None else signs
    return op(tf.constant(images.astype(np.float32)), tf.constant(levels, tf.int32),
              tf.constant(signs, tf.float32)).numpy()


def pil_op(images, levels, f):
    return np.stack([np.asarray(f(Image.fromarray(x), int(level))).astype(np.float32)
                     for x, level in zip(images, levels)])


def enhance(level):  # FixMatch's _enhancer_impl: float_parameter(level, 1.8) + 0.1
    return level * 1.8 / 10 + 0.1


@pytest.mark.parametrize('name,pil', [
    ('brightness', lambda x, level: ImageEnhance.Brightness(x).enhance(enhance(level))),
    ('color', lambda x, level: ImageEnhance.Color(x).enhance(enhance(level))),
    ('contrast', lambda x, level: ImageEnhance.Contrast(x).enhance(enhance(level))),
    ('sharpness', lambda x, level: ImageEnhance.Sharpness(x).enhance(enhance(level))),
    ('autocontrast', lambda x, level: ImageOps.autocontrast(x)),
    ('solarize', lambda x, level: ImageOps.solarize(x, 256 - int(level * 256 / 10))),
    ('posterize', lambda x, level: ImageOps.posterize(x, 4 - int(level * 4 / 10))),
])
def test_photometric_ops_match_pil_at_every_level(name, pil):
    images = pil_images()
    images[0, ..., 2] = 77  # a flat channel (autocontrast leaves it)
    got = run_op(getattr(augment, name), images, LEVELS)
    # PIL rounds to 8 bits after each of its steps; ours stays in float32
    np.testing.assert_allclose(got, pil_op(images, LEVELS, pil), atol=1.5)


@pytest.mark.parametrize('sign', [1.0, -1.0])
@pytest.mark.parametrize('name,pil', [
    ('rotate', lambda x, v: x.rotate(3 * v, resample=Image.BILINEAR, fillcolor=(127,) * 3)),
    ('shear_x', lambda x, v: x.transform(x.size, Image.AFFINE, (1, 0.03 * v, 0, 0, 1, 0),
                                         resample=Image.BILINEAR, fillcolor=(127,) * 3)),
    ('shear_y', lambda x, v: x.transform(x.size, Image.AFFINE, (1, 0, 0, 0.03 * v, 1, 0),
                                         resample=Image.BILINEAR, fillcolor=(127,) * 3)),
])
def test_geometric_ops_match_pil_bilinear_away_from_the_border(name, pil, sign):
    # FixMatch's level -> magnitude: rotate int_parameter(level, 30) degrees, shear
    # float_parameter(level, 0.3), each with a random sign. Where PIL fills near the border
    # its rule differs from TensorFlow's; inside, both sample the same positions.
    images = pil_images(height=16, width=16)
    got = run_op(getattr(augment, name), images, LEVELS, np.full(9, sign, np.float32))
    expected = pil_op(images, LEVELS, lambda x, level: pil(x, sign * level))
    np.testing.assert_allclose(got[:, 5:-5, 5:-5], expected[:, 5:-5, 5:-5], atol=1.01)


def test_translations_move_whole_pixels_at_32_pixels_and_fill_with_grey():
    images = pil_images(height=32, width=32).astype(np.float32)
    signs = np.array([1, -1] * 4 + [1], np.float32)
    for name, axis in (('translate_x', 2), ('translate_y', 1)):
        got = run_op(getattr(augment, name), images, LEVELS, signs)
        for i, (level, sign) in enumerate(zip(LEVELS, signs)):
            shift = int(level * sign)  # output pixel p reads input pixel p + shift
            expected = np.full_like(images[i], augment.FILL)
            source = [slice(None)] * 3
            target = [slice(None)] * 3
            source[axis - 1] = slice(max(shift, 0), 32 + min(shift, 0))
            target[axis - 1] = slice(max(-shift, 0), 32 - max(shift, 0))
            expected[tuple(target)] = images[i][tuple(source)]
            np.testing.assert_allclose(got[i], expected, atol=1e-3)


def test_cutout_is_a_grey_square_of_half_the_side_centred_uniformly_and_cut_at_borders():
    images = np.zeros((4000, 32, 32, 1), np.float32)
    out = augment.Cutout(seed=0)(tf.constant(images)).numpy()[..., 0]
    grey = out == augment.FILL
    assert np.isin(out, [0.0, augment.FILL]).all()
    starts = []
    for box in grey:
        rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
        assert box.sum() == len(rows) * len(cols)  # a rectangle
        for extent in (rows, cols):  # [centre - 8, centre + 8) cut at 0 and 32
            assert extent.size == min(32, extent[0] + 16) - extent[0] or extent[0] == 0
            assert extent.size <= 16
        starts.append(rows[0])
    # the centre is uniform on 0..31, so a box starts at row 0 for centres 0..8 (9 / 32)
    starts = np.array(starts)
    assert 0.24 < np.mean(starts == 0) < 0.32
    assert 0.02 < np.mean(starts == 10) < 0.045  # centre 18 alone: 1 / 32


def test_strong_augmenter_changes_every_image_differently():
    base = np.random.default_rng(3).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    images = tf.constant(np.repeat(base, 32, axis=0))
    out = augment.Augmenter('rac', seed=4)(images).numpy()
    assert out.shape == images.shape
    assert (np.abs(out - base).max(axis=(1, 2, 3)) > 1).all()
    distinct = {out[i].tobytes() for i in range(len(out))}
    assert len(distinct) == len(out)


def test_strong_augmenter_runs_in_a_graph_when_most_ops_draw_no_image():
    augmenter = tf.function(augment.Augmenter('rac', seed=5))  # as tf.data runs it
    images = tf.constant(np.random.default_rng(4).uniform(0, 255, (3, 8, 8, 3)), tf.float32)
    for _ in range(4):  # 3 images, 11 ops: most parts are empty on every call
        out = augmenter(images).numpy()
        assert out.shape == (3, 8, 8, 3) and np.isfinite(out).all()


@pytest.mark.parametrize('name', ['d', 'rac'])
def test_augmentation_ignores_the_networks_mixed_precision_policy(name):
    # train.set_precision sets the global policy before the input pipeline is built; the
    # augmentations must still compute in float32 (bf16 rounds pixel values).
    images = tf.constant(np.random.default_rng(6).uniform(0, 255, (8, 16, 16, 3)), tf.float32)
    expected = augment.Augmenter(name, seed=7)(images).numpy()
    try:
        keras.mixed_precision.set_global_policy('mixed_bfloat16')
        out = augment.Augmenter(name, seed=7)(images)
        out_in_graph = tf.function(augment.Augmenter(name, seed=7))(images)
    finally:
        keras.mixed_precision.set_global_policy('float32')
    assert out.dtype == tf.float32 and out_in_graph.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-3)
    np.testing.assert_allclose(out_in_graph.numpy(), expected, atol=1e-3)


def shifts_of(image, pad):
    """Every crop FixMatch's weak shift can make of one image: {(dy, dx): crop}, in NumPy."""
    size = image.shape[0]
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode='reflect')
    return {(dy, dx): padded[dy:dy + size, dx:dx + size]
            for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}


def test_weak_shift_moves_whole_pixels_with_reflection_uniformly_per_image():
    # 600 distinct random images of 16 px: the shift pads by 2 and crops at offsets 0..4.
    images = np.random.default_rng(8).integers(0, 256, (600, 16, 16, 3)).astype(np.float32)
    out = tf.function(augment.RandomShift(seed=3))(tf.constant(images)).numpy()
    offsets = []
    for image, shifted in zip(images, out):
        matches = [o for o, crop in shifts_of(image, 2).items() if np.array_equal(crop, shifted)]
        assert len(matches) == 1, 'not a whole-pixel reflect-padded crop of its own image'
        offsets.append(matches[0])
    counts = np.zeros((5, 5))
    for dy, dx in offsets:
        counts[dy, dx] += 1
    # Each axis uniform over 0..4 (120 expected per value) and the two axes drawn independently.
    for axis_counts in (counts.sum(1), counts.sum(0)):
        assert axis_counts.min() > 80 and axis_counts.max() < 160, axis_counts
    assert counts.min() > 5


def test_weak_augmentation_keeps_pixel_values_and_differs_per_image():
    image = np.random.default_rng(9).integers(0, 256, (16, 16, 3)).astype(np.float32)
    out = augment.Augmenter('d', seed=2)(tf.constant(np.stack([image] * 64))).numpy()
    flipped = image[:, ::-1]
    crops = list(shifts_of(image, 2).values()) + list(shifts_of(flipped, 2).values())
    assert all(any(np.array_equal(o, c) for c in crops) for o in out)  # no interpolation
    assert len({o.tobytes() for o in out}) > 20


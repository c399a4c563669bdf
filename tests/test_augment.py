"""The batched strong augmentation (libml/augment.py): per-image randomness on whole batches.

Keras' RandAugment layer picks one pair of ops per batch, so the project applies its ops itself;
these tests check that each image gets its own ops, in order, that the histogram equalisation is
per image as Keras computes it for one image, and that the real ops survive any part size.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from libml import augment

NUM_OPS = 11


def fake_ops(count=NUM_OPS):
    # op k: x -> 16 x + k, so two steps give 256 x + 16 k1 + k2: both choices can be read back.
    return [lambda x, k=k: 16.0 * x + k for k in range(count)]


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
    choices = np.array([[0, 3, 10, 3, 7, 1], [5, 5, 0, 10, 7, 2]], dtype=np.int32)
    got = rand_augment.apply(tf.constant(x), tf.constant(choices)).numpy()
    expected = 256 * x[:, 0, 0, 0] + 16 * choices[0] + choices[1]
    np.testing.assert_array_equal(got[:, 0, 0, 0], expected)


def test_ops_are_drawn_per_image_uniformly_and_independently_per_step():
    rand_augment = augment.RandAugment(num_ops=2, ops=fake_ops(), seed=0)
    out = rand_augment(tf.zeros([2200, 1, 1, 1])).numpy().astype(int)[:, 0, 0, 0]
    first, second = out // 16, out % 16
    for drawn in (first, second):
        counts = np.bincount(drawn, minlength=NUM_OPS)
        assert len(counts) == NUM_OPS  # nothing outside the op list
        assert counts.min() > 100 and counts.max() < 300  # 200 expected each
    assert 0.05 < np.mean(first == second) < 0.15  # 1/11 if the steps draw independently


def test_seeded_rand_augment_repeats_and_other_seeds_differ():
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (16, 8, 8, 3)), tf.float32)

    def run(seed):
        return augment.RandAugment(seed=seed)(images).numpy()

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


@pytest.mark.parametrize('batch', [0, 1, 5])
def test_every_real_op_takes_any_part_size_and_keeps_the_value_range(batch):
    images = tf.constant(np.random.default_rng(2).uniform(0, 255, (batch, 8, 8, 3)), tf.float32)
    rand_augment = augment.RandAugment(num_ops=1, seed=3)
    for k in range(NUM_OPS):  # every image through op k (the others get none)
        out = rand_augment.apply(images, tf.fill([1, batch], k)).numpy()
        assert out.shape == (batch, 8, 8, 3)
        if batch:
            assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3


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


"""The training streams visit every image once per epoch, in a new order each epoch.

A stream that draws (nearly) with replacement trains measurably worse at short budgets
(BENCHMARKS.md, section 14, part 7), so this is checked on the real pipeline: images whose
pixels all equal their index go through ``data.train_inputs`` without augmentation and are read
back from the batches.
"""
import numpy as np

from libml import data, records

LABELED, UNLABELED, BATCH = 12, 20, 4


def write_indexed_dataset(data_dir):
    def split(n, offset):
        images = np.repeat(np.arange(offset, offset + n, dtype=np.uint8), 8 * 8 * 3)
        labels = np.arange(n) % 2
        return images.reshape(n, 8, 8, 3), labels, np.eye(2)[labels]
    return records.write_arrays(data_dir, 'indexed', 1, ('a', 'b'), {
        'train': split(LABELED, 0), 'unlabeled': split(UNLABELED, 100), 'val': split(4, 200)})


def indices(images):
    """Normalised images back to the index every pixel holds."""
    return np.rint((images.numpy()[:, 0, 0, 0] + 1.0) * 127.5).astype(int)


def test_every_image_once_per_epoch_and_a_new_order_each_epoch(tmp_path):
    info = write_indexed_dataset(str(tmp_path))
    config = data.InputConfig(batch=BATCH, uratio=1, unlabeled_views=1, augment=('x', 'x'),
                              seed=3)
    epochs = 4
    steps = epochs * UNLABELED // BATCH  # 4 unlabeled epochs = 6.67 labeled ones
    labeled, unlabeled = [], []
    for batch in data.train_inputs(info, config).take(steps):
        labeled.extend(indices(batch['image']))
        unlabeled.extend(indices(batch['unlabeled'][0]))
    for stream, n, offset in ((labeled, LABELED, 0), (unlabeled, UNLABELED, 100)):
        blocks = [stream[e * n:(e + 1) * n] for e in range(len(stream) // n)]
        assert len(blocks) >= epochs
        for block in blocks:  # each epoch is a permutation of the whole split
            assert sorted(block) == list(range(offset, offset + n)), block
        assert len({tuple(block) for block in blocks}) == len(blocks)  # reshuffled every epoch

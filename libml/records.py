"""The on-disk dataset format: one TFRecord file per split plus ``meta.json``, per dataset and seed.

Layout under ``$ML_DATA`` (default ``./data``)::

    <name>.<seed>/train.tfrecord       labeled split (hard label sampled from the soft label)
    <name>.<seed>/unlabeled.tfrecord   unlabeled split (labels stored for evaluation only)
    <name>.<seed>/val.tfrecord         validation split (soft labels used for the metrics)
    <name>.<seed>/test.tfrecord        optional test split
    <name>.<seed>/meta.json            classes, image size, counts, class weights, ambiguity

Each record holds the PNG-encoded image, the hard label, the soft label (k floats summing to 1), the
image's path relative to the dataset root, its split and its index within the split. The method
scripts name a dataset FixMatch-style, ``<name>.<seed>@<size>-<anything>`` (see ``parse_dataset_name``).
"""
import dataclasses
import hashlib
import os
import re
import struct

import numpy as np
import tensorflow as tf

from libml import io_utils
from libml.errors import DC3Error

SPLITS = ('train', 'unlabeled', 'val', 'test')
FORMAT_VERSION = 1
META_FILE = 'meta.json'


def default_data_dir():
    """``$ML_DATA`` if set, else ``./data`` (relative to the working directory)."""
    return os.environ.get('ML_DATA', 'data')


def dataset_dir(data_dir, name, seed):
    return os.path.join(data_dir, f'{name}.{seed}')


def split_file(split):
    return f'{split}.tfrecord'


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------

def serialize_example(png_bytes, label, soft_label, path, split, index):
    """One record; ``soft_label`` is a length-k sequence of floats. Serialised deterministically
    (the feature map in key order): the same images give the same bytes, so re-importing
    unchanged data keeps the dataset's fingerprint and its runs resume."""
    feature = {
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes])),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        'soft_label': tf.train.Feature(
            float_list=tf.train.FloatList(value=[float(v) for v in soft_label])),
        'path': tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode('utf-8')])),
        'split': tf.train.Feature(bytes_list=tf.train.BytesList(value=[split.encode('utf-8')])),
        'index': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(index)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def feature_spec(num_classes):
    return {
        'image': tf.io.FixedLenFeature([], tf.string),
        'label': tf.io.FixedLenFeature([], tf.int64),
        'soft_label': tf.io.FixedLenFeature([num_classes], tf.float32),
        'path': tf.io.FixedLenFeature([], tf.string),
        'split': tf.io.FixedLenFeature([], tf.string),
        'index': tf.io.FixedLenFeature([], tf.int64),
    }


def parse_example(serialized, num_classes):
    """Parses one serialized record into a dict with a decoded uint8 ``image`` of shape [H, W, 3]."""
    x = tf.io.parse_single_example(serialized, feature_spec(num_classes))
    x['image'] = tf.io.decode_png(x['image'], channels=3)
    x['label'] = tf.cast(x['label'], tf.int32)
    x['index'] = tf.cast(x['index'], tf.int32)
    return x


def read_split_numpy(directory, split, num_classes):
    """Reads a whole split eagerly into NumPy arrays (for tests, exports and small datasets)."""
    verify_split(directory, split)
    path = os.path.join(directory, split_file(split))
    ds = tf.data.TFRecordDataset(path).map(lambda s: parse_example(s, num_classes))
    columns = {k: [] for k in ('image', 'label', 'soft_label', 'path', 'split', 'index')}
    for x in ds.as_numpy_iterator():
        for k in columns:
            v = x[k]
            columns[k].append(v.decode('utf-8') if isinstance(v, bytes) else v)
    return {k: np.array(v) for k, v in columns.items()}


# ---------------------------------------------------------------------------------------------
# Checking a split file against meta.json (truncation, replacement)
# ---------------------------------------------------------------------------------------------

def file_digest(path):
    """(size in bytes, sha256 hex digest) of a file, as recorded per split in meta.json."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return os.path.getsize(path), digest.hexdigest()


def count_records(path):
    """Number of records in a TFRecord file, from its length headers alone (nothing is decoded).

    Returns None if the file ends inside a record.
    """
    size = os.path.getsize(path)
    count, position = 0, 0
    with open(path, 'rb') as f:
        while position < size:
            header = f.read(12)             # uint64 length + uint32 CRC of the length
            if len(header) < 12:
                return None
            length = struct.unpack('<Q', header[:8])[0]
            position += 12 + length + 4     # data + uint32 CRC of the data
            if position > size:
                return None
            f.seek(position)
            count += 1
    return count


def _reimport_hint(meta, directory):
    name, seed = meta.get('name'), meta.get('seed')
    if meta.get('created_by') == 'scripts/create_datasets.py' and meta.get('source'):
        return (f're-run the import: scripts/create_datasets.py --input {meta["source"]} '
                f'--name {name} --seeds {seed}')
    return f're-run the import that wrote {directory} (e.g. generate_datasets.sh)'


def _read_meta(directory):
    return io_utils.read_json(os.path.join(directory, META_FILE), 'dataset metadata')


def verify_split(directory, split, meta=None, checksum=False):
    """Checks that a split's TFRecord file is the one the import wrote; raises a one-line DC3Error.

    Cheap by default: the file size against the size meta.json recorded at import. With
    ``checksum`` the sha256 is compared too. Datasets imported before sizes were recorded are
    checked by counting their records (length headers only) against the count in meta.json.
    """
    meta = _read_meta(directory) if meta is None else meta
    entry = meta.get('splits', {}).get(split)
    if entry is None:
        raise DC3Error(f'{directory} has no {split!r} split in its {META_FILE}; '
                       f'{_reimport_hint(meta, directory)}')
    path = os.path.join(directory, entry.get('file') or split_file(split))
    fix = _reimport_hint(meta, directory)
    if not os.path.isfile(path):
        raise DC3Error(f'{path} is missing; {fix}')
    if 'bytes' in entry:
        size = os.path.getsize(path)
        if size != entry['bytes']:
            raise DC3Error(f'{path} has {size} bytes but {META_FILE} recorded {entry["bytes"]} at '
                           f'import (truncated or replaced); {fix}')
        if checksum and entry.get('sha256') and file_digest(path)[1] != entry['sha256']:
            raise DC3Error(f'{path} does not match the sha256 recorded in {META_FILE} at import '
                           f'(corrupted or replaced); {fix}')
        return
    count = count_records(path)
    if count is None:
        raise DC3Error(f'{path} ends inside a record (truncated); {fix}')
    if count != entry.get('count'):
        raise DC3Error(f'{path} holds {count} records but {META_FILE} says {entry.get("count")} '
                       f'(truncated or replaced); {fix}')


def dataset_fingerprint(directory, meta=None):
    """16 hex digits naming the exact TFRecords of a dataset (their sha256, or count and size
    for datasets imported before checksums were recorded); changes when it is re-imported."""
    meta = _read_meta(directory) if meta is None else meta
    parts = {}
    for split, entry in sorted(meta.get('splits', {}).items()):
        path = os.path.join(directory, entry.get('file') or split_file(split))
        size = entry.get('bytes', os.path.getsize(path) if os.path.exists(path) else None)
        parts[split] = entry.get('sha256') or f'{entry.get("count")}:{size}'
    return hashlib.sha1(repr(sorted(parts.items())).encode()).hexdigest()[:16]


def verify_dataset(directory, meta=None, checksum=False):
    """``verify_split`` for every split listed in meta.json."""
    meta = _read_meta(directory) if meta is None else meta
    for split in meta.get('splits', {}):
        verify_split(directory, split, meta, checksum)


# ---------------------------------------------------------------------------------------------
# Metadata and dataset names
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the training code needs to know about a generated dataset (from ``meta.json``)."""
    name: str
    seed: int
    directory: str
    classes: tuple
    image_size: int
    split_counts: dict          # split -> number of images
    class_weights: tuple        # per class, from the labeled split
    prior_ambiguity: float      # share of ambiguous images in the training pool

    @property
    def num_classes(self):
        return len(self.classes)

    def has_split(self, split):
        return self.split_counts.get(split, 0) > 0

    def split_path(self, split):
        return os.path.join(self.directory, split_file(split))


_NAME_RE = re.compile(r'^(?P<name>[A-Za-z0-9_\-]+)\.(?P<seed>\d+)(@(?P<size>-?\d+)(-.*)?)?$')


def parse_dataset_name(spec):
    """``'plankton.1@-1-10'`` -> ``('plankton', 1, -1)``: name, seed, labeled size (-1 = all).

    The part after the size (FixMatch's validation size) is accepted and ignored.
    """
    m = _NAME_RE.match(spec)
    if not m:
        raise DC3Error(f'dataset name {spec!r} is not of the form <name>.<seed>@<size>-<valid>, '
                       'e.g. cifar10n.1@-1-10')
    size = int(m.group('size')) if m.group('size') is not None else -1
    if size == 0 or size < -1:
        raise DC3Error(f'dataset name {spec!r}: labeled size must be -1 (all) or positive')
    return m.group('name'), int(m.group('seed')), size


def load_dataset_info(data_dir, name, seed):
    """Reads ``meta.json`` of a generated dataset, with a clear error if it was never generated."""
    directory = dataset_dir(data_dir, name, seed)
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.exists(meta_path) and not os.path.exists(directory):
        io_utils.recover(directory)     # an import killed while swapping folders left a backup
    if not os.path.exists(meta_path):
        raise DC3Error(f'dataset {name!r} with seed {seed} was never generated: {meta_path} is '
                       f'missing; run scripts/create_datasets.py (or generate_datasets.sh) with '
                       f'--name {name} --seeds {seed}, or set ML_DATA to where it was written')
    meta = io_utils.read_json(meta_path, 'dataset metadata')
    if meta.get('format_version') != FORMAT_VERSION:
        raise DC3Error(f'{meta_path} has format version {meta.get("format_version")}, expected '
                       f'{FORMAT_VERSION}; regenerate the dataset')
    counts = {s: v['count'] for s, v in meta['splits'].items()}
    for split in ('train', 'val'):
        if counts.get(split, 0) == 0:
            raise DC3Error(f'dataset {name}.{seed} has an empty {split!r} split; regenerate it '
                           'with a source that has images for it')
    return DatasetInfo(name=name, seed=seed, directory=directory, classes=tuple(meta['classes']),
                       image_size=int(meta['image_size']), split_counts=counts,
                       class_weights=tuple(meta['class_weights']),
                       prior_ambiguity=float(meta.get('ambiguous_fraction', {}).get('pool', 0.0)))


def class_weights_from_counts(counts):
    """Inverse-frequency class weights ``n / (k * n_c)``, normalised to mean 1 over present classes.

    A class absent from the labeled split gets weight 0 (it never appears as a target there).
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.tolist()


def split_entry(directory, split, count):
    """The meta.json fields by which ``verify_split`` recognises a split file."""
    size, sha256 = file_digest(os.path.join(directory, split_file(split)))
    return {'count': int(count), 'file': split_file(split), 'bytes': size, 'sha256': sha256}


def dataset_meta(name, seed, classes, image_size, split_entries, train_counts, ambiguous_fraction,
                 **details):
    """The content of meta.json. Its core, what ``load_dataset_info`` and ``verify_split`` read,
    is made here for both writers (the importer and ``write_arrays``); ``details`` are a writer's
    own fields (the importer's provenance and statistics). ``split_entries``: split -> a dict with
    the split's ``count`` (and ``split_entry``'s fields once its file is written)."""
    return {**details, 'format_version': FORMAT_VERSION, 'name': name, 'seed': int(seed),
            'classes': list(classes), 'image_size': int(image_size), 'channels': 3,
            'splits': split_entries, 'class_weights': class_weights_from_counts(train_counts),
            'ambiguous_fraction': dict(ambiguous_fraction)}


def write_arrays(data_dir, name, seed, classes, splits, source='arrays'):
    """Writes in-memory images as a dataset (for tests and benchmarks; real data goes through
    scripts/create_datasets.py). ``splits``: split -> (uint8 images [n, H, W, 3], hard labels,
    soft labels [n, k]). Returns the dataset's ``DatasetInfo``."""
    import io
    from PIL import Image
    directory = dataset_dir(data_dir, name, seed)
    os.makedirs(directory, exist_ok=True)
    for split, (images, labels, soft) in splits.items():
        with tf.io.TFRecordWriter(os.path.join(directory, split_file(split))) as writer:
            for i, (image, label, soft_label) in enumerate(zip(images, labels, soft)):
                png = io.BytesIO()
                Image.fromarray(np.asarray(image, np.uint8)).save(png, 'PNG')
                writer.write(serialize_example(png.getvalue(), label, soft_label,
                                               f'{split}/{i}.png', split, i))
    pool = np.concatenate([np.asarray(splits[s][2]) for s in ('train', 'unlabeled') if s in splits])
    meta = dataset_meta(
        name, seed, classes, np.asarray(splits['train'][0]).shape[1],
        {s: split_entry(directory, s, len(v[1])) for s, v in splits.items()},
        np.bincount(np.asarray(splits['train'][1]), minlength=len(classes)),
        {'pool': float(np.mean(pool.max(axis=1) < 1 - 1e-6))}, source=source)
    io_utils.write_json(os.path.join(directory, META_FILE), meta)
    return load_dataset_info(data_dir, name, seed)

"""Tests of the dataset importer (scripts/create_datasets.py) and the synthetic generator.

Every fixture is a few dozen 8 px images built in tmp_path; expected values are computed here from
the fixture itself (vote counts, pixel arrays), never copied from the importer's output.
"""
import collections
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from libml import records
from libml.errors import DC3Error
from scripts import create_datasets
from scripts import make_synthetic

REPO = Path(__file__).resolve().parents[1]
CIFAR10N = Path(__file__).resolve().parents[2] / 'shared/data/CIFAR10N'
SIZE = 8


# ---------------------------------------------------------------------------------------------
# Fixture builders
# ---------------------------------------------------------------------------------------------

def save_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_dcic(root, name='Toy', per_fold=4, labels=('bird', 'cat', 'dog'), annotators=3, seed=0):
    """A DCIC folder of random 8 px images with random votes; returns (folder, pixels, votes)."""
    rng = np.random.default_rng(seed)
    folder = root / name
    pixels, votes = {}, {}
    sets = [{'name': f'ann{j}', 'dataset_name': name, 'user_mail': f'{j}@x.invalid',
             'annotation_time': 1.5, 'annotations': []} for j in range(annotators)]
    for fold in range(1, 6):
        for i in range(per_fold):
            relative = f'fold{fold}/im_{fold}_{i}.png'
            pixels[relative] = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            save_image(folder / relative, pixels[relative])
            chosen = [labels[v] for v in rng.integers(0, len(labels), annotators)]
            votes[relative] = collections.Counter(chosen)
            for annotation_set, label in zip(sets, chosen):
                annotation_set['annotations'].append(
                    {'image_path': f'{name}/{relative}', 'class_label': label,
                     'created_at': '01-01-2021-00-00-00'})
    write_annotations(folder, sets)
    # Bookkeeping files next to the images must be ignored, not taken for broken images.
    (folder / 'fold1' / '.DS_Store').write_bytes(b'\x00\x01junk')
    (folder / 'fold2' / 'README.md').write_text('not an image')
    return folder, pixels, votes


def write_annotations(folder, sets):
    (folder / 'annotations.json').write_text(json.dumps(sets))


def load_annotations(folder):
    return json.loads((folder / 'annotations.json').read_text())


def soft_from_votes(counter, classes):
    return np.array([counter[c] for c in classes], dtype=np.float64) / sum(counter.values())


def config(input_dir, data_dir, **overrides):
    return create_datasets.ImportConfig(input_dir=str(input_dir), data_dir=str(data_dir),
                                        image_size=SIZE, progress=False, **overrides)


def read_output(directory):
    """(meta, {split: columns}) of one written dataset folder."""
    meta = json.loads((Path(directory) / 'meta.json').read_text())
    k = len(meta['classes'])
    return meta, {split: records.read_split_numpy(str(directory), split, k)
                  for split in meta['splits']}


def fold_of(path):
    return path.split('/')[0]


def check_consistent(meta, data):
    """Meta counts and per-class counts match the records; indices and split fields are right."""
    for split, columns in data.items():
        n = len(columns['label'])
        assert meta['splits'][split]['count'] == n
        assert list(columns['index']) == list(range(n))
        assert all(s == split for s in columns['split'])
        counts = collections.Counter(meta['classes'][label] for label in columns['label'])
        assert meta['splits'][split]['per_class'] == {c: counts[c] for c in meta['classes']}
        np.testing.assert_allclose(columns['soft_label'].sum(axis=1), 1, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

def test_dcic_round_trip(tmp_path):
    folder, pixels, votes = make_dcic(tmp_path / 'raw')
    data_dir = tmp_path / 'data'
    [directory] = create_datasets.import_dataset(
        config(folder, data_dir, keep_test=True, labeled_fraction=0.25, seeds=(1,)))
    assert Path(directory) == data_dir / 'toy.1'
    meta, data = read_output(directory)
    classes = sorted({label for counter in votes.values() for label in counter})
    assert meta['classes'] == classes
    assert meta['layout'] == 'dcic' and meta['image_size'] == SIZE and meta['channels'] == 3
    check_consistent(meta, data)

    seen = []
    for split, columns in data.items():
        for path, image, soft, label in zip(columns['path'], columns['image'],
                                            columns['soft_label'], columns['label']):
            expected_soft = soft_from_votes(votes[path], classes)
            np.testing.assert_array_equal(image, pixels[path])
            np.testing.assert_allclose(soft, expected_soft, atol=1e-6)
            if split == 'train':
                assert expected_soft[label] > 0      # a sampled label must be possible
            else:
                assert label == np.flatnonzero(expected_soft == expected_soft.max())[0]
            seen.append(path)
    assert sorted(seen) == sorted(pixels)           # every image exactly once

    # Slice 1: validation fold 2, test fold 3, training pool folds 1, 4, 5.
    assert {fold_of(p) for p in data['val']['path']} == {'fold2'}
    assert {fold_of(p) for p in data['test']['path']} == {'fold3'}
    pool = list(data['train']['path']) + list(data['unlabeled']['path'])
    assert {fold_of(p) for p in pool} == {'fold1', 'fold4', 'fold5'}
    assert len(data['train']['path']) == round(0.25 * len(pool))

    # meta.json statistics against the vote counts.
    def ambiguous_share(paths):
        return np.mean([max(votes[p].values()) < sum(votes[p].values()) for p in paths])

    assert meta['ambiguous_fraction']['pool'] == pytest.approx(ambiguous_share(pool))
    assert meta['ambiguous_fraction']['val'] == pytest.approx(
        ambiguous_share(data['val']['path']))
    val_ambiguity = [1 - max(votes[p].values()) / sum(votes[p].values())
                     for p in data['val']['path']]
    assert meta['splits']['val']['mean_ambiguity'] == pytest.approx(np.mean(val_ambiguity))
    assert meta['skipped_files'] == []
    assert meta['source'] == str(folder)

    info = records.load_dataset_info(str(data_dir), 'toy', 1)
    assert info.classes == tuple(classes)
    assert info.split_counts == {s: len(c['label']) for s, c in data.items()}
    assert info.prior_ambiguity == pytest.approx(ambiguous_share(pool))
    train_counts = np.bincount(data['train']['label'], minlength=len(classes))
    present = train_counts > 0
    expected_weights = np.where(present, train_counts.sum() / np.maximum(train_counts, 1)
                                / present.sum(), 0.0)
    np.testing.assert_allclose(info.class_weights, expected_weights)


def build_dc3(root):
    """A DC3 folder with soft labels for some images; returns (folder, pixels, expected soft)."""
    rng = np.random.default_rng(5)
    folder = root / 'Pets'
    files = ['train/cat/c0.png', 'train/cat/c1.png', 'train/cat/c2.png', 'train/dog/d0.png',
             'train/dog/d1.png', 'val/cat/v0.png', 'val/dog/v1.png', 'unlabeled/cat/u0.png',
             'unlabeled/loose.png', 'unlabeled/loose2.png', 'test/emu/t0.png',
             'test/dog/t1.png', 'train/emu/e0.png']
    pixels = {}
    for relative in files:
        pixels[relative] = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        save_image(folder / relative, pixels[relative])
    classes = ['cat', 'dog', 'emu']
    # Columns deliberately in another order than the sorted classes.
    (folder / 'soft_labels.csv').write_text(
        'image_path,dog,emu,cat\n'
        'train/cat/c0.png,1,0,3\n'
        'unlabeled/loose2.png,0,2,2\n'
        'val/dog/v1.png,0.2,0.2,0.6\n')
    expected = {}
    for relative in files:
        parts = relative.split('/')
        soft = np.zeros(3)
        if len(parts) == 3:
            soft[classes.index(parts[1])] = 1
        else:
            soft[:] = 1 / 3
        expected[relative] = soft
    expected['train/cat/c0.png'] = np.array([0.75, 0.25, 0])
    expected['unlabeled/loose2.png'] = np.array([0.5, 0, 0.5])
    expected['val/dog/v1.png'] = np.array([0.6, 0.2, 0.2])
    return folder, pixels, expected


def test_dc3_round_trip(tmp_path):
    folder, pixels, expected = build_dc3(tmp_path / 'raw')
    data_dir = tmp_path / 'data'
    [directory] = create_datasets.import_dataset(config(folder, data_dir, seeds=(4,)))
    meta, data = read_output(directory)
    assert meta['layout'] == 'dc3' and meta['name'] == 'pets' and meta['seed'] == 4
    assert meta['classes'] == ['cat', 'dog', 'emu']
    assert set(data) == {'train', 'unlabeled', 'val', 'test'}
    check_consistent(meta, data)
    for split, columns in data.items():
        for path, image, soft, label in zip(columns['path'], columns['image'],
                                            columns['soft_label'], columns['label']):
            assert path.split('/')[0] == split
            np.testing.assert_array_equal(image, pixels[path])
            np.testing.assert_allclose(soft, expected[path], atol=1e-6)
            if split != 'train':
                assert label == np.flatnonzero(expected[path] == expected[path].max())[0]
    unlabeled = dict(zip(data['unlabeled']['path'], data['unlabeled']['label']))
    assert unlabeled['unlabeled/loose2.png'] == 0       # tie between cat and emu -> lowest index
    assert unlabeled['unlabeled/loose.png'] == 0        # no label at all -> uniform soft, label 0
    assert meta['splits']['unlabeled']['unknown_label_count'] == 1
    # The image without any label does not count as ambiguous: 1 of the 3 known is (loose2).
    assert meta['splits']['unlabeled']['ambiguous_fraction'] == pytest.approx(1 / 2)
    assert meta['ambiguous_fraction']['pool'] == pytest.approx(2 / 8)
    assert meta['splits']['test']['per_class'] == {'cat': 0, 'dog': 1, 'emu': 1}
    records.load_dataset_info(str(data_dir), 'pets', 4)


def test_class_weights_from_labeled_split(tmp_path):
    """Inverse frequency n / (k_present * n_c) over the labeled split only (val does not count);
    a class missing from the labeled split gets weight 0."""
    np.testing.assert_allclose(records.class_weights_from_counts([6, 2, 0]),
                               [8 / (2 * 6), 8 / (2 * 2), 0.0])
    folder = tmp_path / 'raw' / 'W'
    rng = np.random.default_rng(1)
    layout = {'train/a': 6, 'train/b': 2, 'val/a': 1, 'val/b': 3}
    for sub, count in layout.items():
        for i in range(count):
            save_image(folder / sub / f'{i}.png', rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8))
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    meta, _ = read_output(directory)
    assert meta['classes'] == ['a', 'b']
    np.testing.assert_allclose(meta['class_weights'], [8 / (2 * 6), 8 / (2 * 2)])


def test_image_modes_and_mixed_sizes(tmp_path):
    folder = tmp_path / 'raw' / 'Modes'
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    rgba = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    deep = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    tall = rng.integers(0, 256, (13, 5, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    save_image(folder / 'train/a/gray.png', gray)
    save_image(folder / 'train/a/rgba.png', rgba)
    paletted = Image.frombytes('P', (SIZE, SIZE), indices.tobytes())
    paletted.putpalette(palette.flatten().tolist())
    paletted.save(folder / 'train/a/palette.png')
    save_image(folder / 'train/a/deep.png', deep)
    save_image(folder / 'train/a/tall.png', tall)
    (folder / 'val/a').mkdir(parents=True)
    Image.fromarray(big).save(folder / 'val/a/big.jpg', quality=95)

    def resized(array):
        return np.asarray(Image.fromarray(array).resize((SIZE, SIZE), Image.Resampling.BILINEAR))

    expected = {
        'train/a/gray.png': np.repeat(gray[..., None], 3, axis=2),
        'train/a/rgba.png': rgba[..., :3],
        'train/a/palette.png': palette[indices],
        'train/a/deep.png': np.repeat(np.round(deep / 257.0).astype(np.uint8)[..., None], 3, 2),
        'train/a/tall.png': resized(tall),
        'val/a/big.jpg': resized(np.asarray(Image.open(folder / 'val/a/big.jpg'))),
    }
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    _, data = read_output(directory)
    for columns in data.values():
        for path, image in zip(columns['path'], columns['image']):
            assert image.shape == (SIZE, SIZE, 3)
            np.testing.assert_array_equal(image, expected.pop(path), err_msg=path)
    assert not expected


# ---------------------------------------------------------------------------------------------
# DCIC protocol, seeds and label sampling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('slice_index, val_fold, test_fold', [(1, 2, 3), (3, 4, 5), (5, 1, 2)])
def test_dcic_fold_roles(slice_index, val_fold, test_fold):
    val, test, pool = create_datasets.dcic_fold_roles(slice_index, keep_test=True)
    assert (val, test) == (f'fold{val_fold}', f'fold{test_fold}')
    assert set(pool) == {f'fold{i}' for i in range(1, 6)} - {val, test}
    val, test, pool = create_datasets.dcic_fold_roles(slice_index, keep_test=False)
    assert val == f'fold{val_fold}' and test is None
    assert set(pool) == {f'fold{i}' for i in range(1, 6)} - {val}


@pytest.mark.parametrize('keep_test', [False, True])
def test_dcic_slice3_assignment(tmp_path, keep_test):
    folder, pixels, _ = make_dcic(tmp_path / 'raw')
    [directory] = create_datasets.import_dataset(
        config(folder, tmp_path / 'data', slice_index=3, keep_test=keep_test,
               labeled_fraction=0.5))
    meta, data = read_output(directory)
    assert meta['slice'] == 3 and meta['keep_test'] == keep_test
    assert {fold_of(p) for p in data['val']['path']} == {'fold4'}
    pool = list(data['train']['path']) + list(data['unlabeled']['path'])
    expected_pool = {p for p in pixels if fold_of(p) not in ({'fold4', 'fold5'} if keep_test
                                                              else {'fold4'})}
    assert sorted(pool) == sorted(expected_pool)
    assert len(data['train']['path']) == len(pool) // 2
    if keep_test:
        assert {fold_of(p) for p in data['test']['path']} == {'fold5'}
    else:
        assert 'test' not in data and not (Path(directory) / 'test.tfrecord').exists()


def test_split_reproducible_per_seed(tmp_path):
    folder, _, _ = make_dcic(tmp_path / 'raw', per_fold=10)
    first = create_datasets.import_dataset(config(folder, tmp_path / 'a', seeds=(1, 2)))
    again = create_datasets.import_dataset(config(folder, tmp_path / 'b', seeds=(1,)))
    _, one = read_output(first[0])
    _, two = read_output(first[1])
    _, one_again = read_output(again[0])
    for split in ('train', 'unlabeled', 'val'):
        assert list(one[split]['path']) == list(one_again[split]['path'])
        np.testing.assert_array_equal(one[split]['label'], one_again[split]['label'])
    assert set(one['train']['path']) != set(two['train']['path'])
    assert set(one['val']['path']) == set(two['val']['path'])     # folds do not depend on seed
    # Record order is a seeded shuffle too: not the sorted listing, and another seed reorders.
    assert list(one['val']['path']) != sorted(one['val']['path'])
    assert list(one['val']['path']) != list(two['val']['path'])


def test_reimporting_unchanged_images_keeps_the_fingerprint(tmp_path):
    """A run resumes only on the data it trained on (its fingerprint: the sha256 of the split
    files), and the importer rewrites every dataset it is run on (``make demo`` twice). The same
    images must give the same bytes in a new process, whose hash seed may order protobuf's
    feature map differently."""
    folder, _, _ = make_dcic(tmp_path / 'raw', per_fold=2)
    fingerprints = []
    for hash_seed in ('1', '2'):
        out = tmp_path / f'data{hash_seed}'
        done = subprocess.run(
            [sys.executable, os.path.join('scripts', 'create_datasets.py'), '--input',
             str(folder), '--name', 'toy', '--image_size', '8', '--data_dir', str(out)],
            cwd=REPO, env={**os.environ, 'PYTHONHASHSEED': hash_seed,
                           'TF_CPP_MIN_LOG_LEVEL': '2'},
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-1000:]
        fingerprints.append(records.dataset_fingerprint(records.dataset_dir(str(out), 'toy', 1)))
    assert fingerprints[0] == fingerprints[1]


def test_sample_hard_labels_distribution():
    rng = np.random.default_rng(0)
    n = 20000
    labels = create_datasets.sample_hard_labels(np.tile([0.3, 0.7], (n, 1)), rng)
    assert abs(labels.mean() - 0.7) < 4 * np.sqrt(0.21 / n)
    # Zero-probability classes are never drawn, wherever they sit.
    labels = create_datasets.sample_hard_labels(np.tile([0, 0.5, 0, 0.5, 0], (n, 1)), rng)
    assert set(labels) == {1, 3}
    labels = create_datasets.sample_hard_labels(np.tile([0, 0, 1.0], (50, 1)), rng)
    assert set(labels) == {2}


def test_train_labels_sampled_from_soft_label(tmp_path):
    """Many copies of one image with soft (0.3, 0.7): the labeled split draws class 1 ~70 %."""
    folder = tmp_path / 'raw' / 'Copies'
    image = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    n = 120
    rows = ['image_path,no,yes']
    for i in range(n):
        save_image(folder / f'train/no/{i}.png', image)
        rows.append(f'train/no/{i}.png,3,7')
    save_image(folder / 'train/yes/y.png', image)   # so that 'yes' is a class of train/ too
    save_image(folder / 'val/yes/v.png', image)
    save_image(folder / 'val/no/v.png', image)
    rows.append('val/no/v.png,0.3,0.7')
    (folder / 'soft_labels.csv').write_text('\n'.join(rows) + '\n')
    directories = create_datasets.import_dataset(config(folder, tmp_path / 'data', seeds=(1, 2)))
    drawn = []
    for directory in directories:
        _, data = read_output(directory)
        labels = {path: label for path, label in zip(data['train']['path'], data['train']['label'])
                  if path.startswith('train/no/')}
        assert abs(np.mean(list(labels.values())) - 0.7) < 4 * np.sqrt(0.21 / n)
        assert dict(zip(data['val']['path'], data['val']['label']))['val/no/v.png'] == 1
        drawn.append([labels[p] for p in sorted(labels)])
    assert drawn[0] != drawn[1]                     # each seed is another simulated annotator


# ---------------------------------------------------------------------------------------------
# Errors: one line, nothing written
# ---------------------------------------------------------------------------------------------

def assert_one_line_naming(message, fragments):
    fragments = (fragments,) if isinstance(fragments, str) else fragments
    assert '\n' not in message and all(f in message for f in fragments), message


def _truncate(path):
    path.write_bytes(path.read_bytes()[:40])


def _drop_key(key, set_index=1):
    def mutate(folder):
        sets = load_annotations(folder)
        if key == 'annotations':
            del sets[set_index]['annotations']
        else:
            del sets[set_index]['annotations'][2][key]
        write_annotations(folder, sets)
    return mutate


def _empty_folder(path):
    for child in path.iterdir():
        child.unlink()


def _add_annotation(image_path, label='cat'):
    def mutate(folder):
        sets = load_annotations(folder)
        sets[0]['annotations'].append({'image_path': image_path, 'class_label': label,
                                       'created_at': ''})
        write_annotations(folder, sets)
    return mutate


DCIC_BREAKAGES = {
    'no fold folders': (lambda f: [os.rename(f / f'fold{i}', f / f'part{i}') for i in range(1, 6)],
                        'no fold folders'),
    'missing fold': (lambda f: [os.rename(f / 'fold5', f / 'extra')], 'fold5'),
    'empty fold': (lambda f: _empty_folder(f / 'fold3'), "'fold3'"),
    'truncated image': (lambda f: _truncate(f / 'fold4/im_4_1.png'), 'fold4/im_4_1.png'),
    'non-image file': (lambda f: (f / 'fold1/notes.txt').write_text('hello'), 'fold1/notes.txt'),
    'annotations not json': (lambda f: (f / 'annotations.json').write_text('[{"name": '),
                             'not valid JSON'),
    'annotations not a list': (lambda f: (f / 'annotations.json').write_text('{"a": 1}'),
                               'list of annotation sets'),
    'set lacks annotations': (_drop_key('annotations'), ('"annotations"', "'ann1'")),
    'annotation lacks class_label': (_drop_key('class_label'), ('"class_label"', "'ann1'")),
    'annotation lacks image_path': (_drop_key('image_path'), '"image_path"'),
    'class_label not a string': (_add_annotation('Toy/fold1/im_1_0.png', label=3), 'class_label'),
    'annotation names missing image': (_add_annotation('Toy/fold2/ghost.png'), 'ghost.png'),
    'unannotated image': (lambda f: save_image(f / 'fold5/lonely.png',
                                               np.zeros((SIZE, SIZE, 3), np.uint8)),
                          ('1 image(s) have no annotation', 'fold5/lonely.png')),
}


def _dc3_tree(root):
    folder = root / 'Bad'
    for relative in ('train/a/0.png', 'train/b/1.png', 'val/a/2.png'):
        save_image(folder / relative, np.zeros((SIZE, SIZE, 3), np.uint8))
    return folder


DC3_BREAKAGES = {
    'empty class folder': (lambda f: (f / 'val/zebra').mkdir(), "'val/zebra'"),
    'unknown csv class': (lambda f: (f / 'soft_labels.csv').write_text(
        'image_path,a,b,zebra\ntrain/a/0.png,1,0,0\n'), ('soft_labels.csv', "['zebra']")),
    'csv names missing image': (lambda f: (f / 'soft_labels.csv').write_text(
        'image_path,a,b\ntrain/a/nope.png,1,0\n'), 'nope.png'),
    'csv negative value': (lambda f: (f / 'soft_labels.csv').write_text(
        'image_path,a,b\ntrain/a/0.png,-1,2\n'), 'line 2'),
    'class differs between splits': (lambda f: save_image(
        f / 'val/zebra/3.png', np.zeros((SIZE, SIZE, 3), np.uint8)), ("['zebra']", 'val/')),
    'empty train': (lambda f: os.rename(f / 'train', f / 'training'), "'train' split is empty"),
    'empty val': (lambda f: os.rename(f / 'val', f / 'validation'), "'val' split is empty"),
    'image outside class folder': (lambda f: save_image(
        f / 'train/stray.png', np.zeros((SIZE, SIZE, 3), np.uint8)), 'train/stray.png'),
}


BAD_INPUTS = ([('dcic', case) for case in sorted(DCIC_BREAKAGES)]
              + [('dc3', case) for case in sorted(DC3_BREAKAGES)])


@pytest.mark.parametrize('layout, case', BAD_INPUTS)
def test_bad_input(tmp_path, layout, case):
    if layout == 'dcic':
        folder = make_dcic(tmp_path / 'raw')[0]
        breakage, fragment = DCIC_BREAKAGES[case]
    else:
        folder = _dc3_tree(tmp_path / 'raw')
        breakage, fragment = DC3_BREAKAGES[case]
    breakage(folder)
    data_dir = tmp_path / 'data'
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, data_dir))
    assert_one_line_naming(str(error.value), fragment)
    assert not data_dir.exists()


@pytest.mark.parametrize('overrides, fragment', [
    ({'image_size': 4}, '--image_size'),
    ({'slice_index': 0}, '--slice'),
    ({'slice_index': 6}, '--slice'),
    ({'labeled_fraction': 0.0}, '--labeled_fraction'),
    ({'labeled_fraction': 1.0}, '--labeled_fraction'),
    ({'labeled_fraction': 0.01}, 'labeled train split is empty'),   # 16-image pool -> 0 labeled
    ({'name': 'Has.Dot'}, '--name'),
    ({'input_dir': 'does/not/exist'}, 'does not exist'),
])
def test_bad_options(tmp_path, overrides, fragment):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    data_dir = tmp_path / 'data'
    options = dict(input_dir=str(folder), data_dir=str(data_dir), image_size=SIZE,
                   progress=False)
    options.update(overrides)
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(create_datasets.ImportConfig(**options))
    assert_one_line_naming(str(error.value), fragment)
    assert not data_dir.exists()


def test_parse_seeds():
    assert create_datasets.parse_seeds('3, 1,3') == (3, 1)
    for bad in ('', '1,,2', 'a', '-1'):
        with pytest.raises(DC3Error):
            create_datasets.parse_seeds(bad)


def test_skip_corrupt_skips_and_counts(tmp_path, capsys):
    folder, pixels, _ = make_dcic(tmp_path / 'raw')
    _truncate(folder / 'fold1/im_1_0.png')                           # annotated but unreadable
    (folder / 'fold4/notes.txt').write_text('not an image')           # unannotated non-image
    save_image(folder / 'fold5/extra.png', np.zeros((SIZE, SIZE, 3), np.uint8))  # unannotated
    skipped = ['fold1/im_1_0.png', 'fold4/notes.txt', 'fold5/extra.png']
    with pytest.raises(DC3Error):
        create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    [directory] = create_datasets.import_dataset(
        config(folder, tmp_path / 'data', skip_corrupt=True))
    meta, data = read_output(directory)
    check_consistent(meta, data)
    assert meta['skipped_files'] == sorted(skipped)
    written = [p for columns in data.values() for p in columns['path']]
    assert sorted(written) == sorted(set(pixels) - set(skipped))
    assert 'skipped 3 ' in capsys.readouterr().out


def test_null_class_labels_are_skipped_and_counted(tmp_path, capsys):
    """DCIC ignores annotations whose class_label is null; so does the importer."""
    folder, _, votes = make_dcic(tmp_path / 'raw')
    sets = load_annotations(folder)
    for image in ('Toy/fold2/im_2_1.png', 'Toy/fold4/im_4_3.png', 'Toy/fold4/im_4_3.png'):
        sets[1]['annotations'].append({'image_path': image, 'class_label': None,
                                       'created_at': '01-01-2021-00-00-00'})
    write_annotations(folder, sets)
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data',
                                                        keep_test=True))
    meta, data = read_output(directory)
    check_consistent(meta, data)
    assert meta['skipped_null_annotations'] == 3
    assert meta['dcic_dataset_name'] == 'Toy' and meta['dcic_test_fold'] == 'fold3'
    classes = meta['classes']
    assert None not in classes
    for columns in data.values():
        for path, soft in zip(columns['path'], columns['soft_label']):
            np.testing.assert_allclose(soft, soft_from_votes(votes[path], classes), atol=1e-6)
    assert 'skipped 3 annotation(s)' in capsys.readouterr().out
    # An image left with only null annotations is unannotated.
    sets = load_annotations(folder)
    for annotation_set in sets:
        for annotation in annotation_set['annotations']:
            if annotation['image_path'] == 'Toy/fold5/im_5_0.png':
                annotation['class_label'] = None
    write_annotations(folder, sets)
    with pytest.raises(DC3Error, match='fold5/im_5_0.png'):
        create_datasets.import_dataset(config(folder, tmp_path / 'data2'))


def test_failure_keeps_previous_output(tmp_path, monkeypatch):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    data_dir = tmp_path / 'data'
    [directory] = create_datasets.import_dataset(config(folder, data_dir))
    before = {p.name: p.read_bytes() for p in Path(directory).iterdir()}

    # A bad input is caught before writing.
    (folder / 'fold2/broken.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    _add_annotation('Toy/fold2/broken.png')(folder)
    with pytest.raises(DC3Error):
        create_datasets.import_dataset(config(folder, data_dir))
    assert {p.name: p.read_bytes() for p in Path(directory).iterdir()} == before

    # A crash half-way through writing leaves the old copy and no temporary folder either.
    (folder / 'fold2/broken.png').unlink()
    sets = load_annotations(folder)
    sets[0]['annotations'] = [a for a in sets[0]['annotations'] if 'broken' not in a['image_path']]
    write_annotations(folder, sets)
    calls = []
    original = records.serialize_example

    def failing(*args):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError('disk went away')
        return original(*args)

    monkeypatch.setattr(create_datasets.records, 'serialize_example', failing)
    with pytest.raises(RuntimeError):
        create_datasets.import_dataset(config(folder, data_dir))
    assert os.listdir(data_dir) == ['toy.1']
    assert {p.name: p.read_bytes() for p in Path(directory).iterdir()} == before


# ---------------------------------------------------------------------------------------------
# Command line (each subprocess pays the TensorFlow import, so only two)
# ---------------------------------------------------------------------------------------------

def _run(script, *args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    env.pop('ML_DATA', None)
    return subprocess.run([sys.executable, str(REPO / 'scripts' / script), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_error_is_one_line_exit_2(tmp_path):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    _truncate(folder / 'fold3/im_3_2.png')
    data_dir = tmp_path / 'data'
    result = _run('create_datasets.py', f'--input={folder}', f'--data_dir={data_dir}',
                  '--image_size=8')
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and 'fold3/im_3_2.png' in errors[0], result.stderr
    assert 'Traceback' not in result.stderr
    assert not data_dir.exists()


def test_cli_flags_reach_the_importer(tmp_path):
    folder, pixels, _ = make_dcic(tmp_path / 'raw')
    result = _run('create_datasets.py', f'--input={folder}', '--name=toyset', '--seeds=1,2',
                  '--slice=3', '--keep_test=1', '--labeled_fraction=0.5', '--image_size=8',
                  '--data_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for seed in (1, 2):
        meta, data = read_output(tmp_path / 'out' / f'toyset.{seed}')
        assert (meta['seed'], meta['slice'], meta['keep_test']) == (seed, 3, True)
        assert {fold_of(p) for p in data['test']['path']} == {'fold5'}
        assert len(data['train']['path']) == len(data['unlabeled']['path'])


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------

def _synthetic(out, **overrides):
    options = dict(out=str(out), num_images=40, image_size=SIZE, seed=3)
    options.update(overrides)
    return Path(make_synthetic.write_dataset(make_synthetic.SyntheticConfig(**options)))


def _tree_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def test_make_synthetic_is_deterministic(tmp_path):
    first = _tree_bytes(_synthetic(tmp_path / 'a'))
    assert first == _tree_bytes(_synthetic(tmp_path / 'b'))
    other = _tree_bytes(_synthetic(tmp_path / 'c', seed=4))
    by_name = {os.path.basename(k): v for k, v in other.items()}
    assert by_name.keys() == {os.path.basename(k) for k in first}
    assert any(by_name[os.path.basename(k)] != v for k, v in first.items() if k.endswith('.png'))
    assert sum(k.startswith(f'fold{i}/') for k in first for i in range(1, 6)) == 40
    assert not [p for p in os.listdir(tmp_path / 'a') if p != 'Synthetic']   # no temp left


def test_synthetic_truth_matches_votes(tmp_path):
    n, annotators = 500, 5
    folder = _synthetic(tmp_path, num_images=n, annotators=annotators, ambiguous_fraction=0.4)
    with open(folder / 'truth.csv', newline='') as f:
        truth = list(csv.DictReader(f))
    names = make_synthetic.class_names(4)
    votes = collections.defaultdict(collections.Counter)
    for annotation_set in load_annotations(folder):
        for annotation in annotation_set['annotations']:
            votes[annotation['image_path'].split('/', 1)[1]][annotation['class_label']] += 1
    alpha = np.array([float(row['alpha']) for row in truth])
    ambiguous = alpha > 0
    assert ambiguous.sum() == round(0.4 * n)
    assert alpha[ambiguous].min() >= 0.25 and alpha[ambiguous].max() <= 0.5
    share_b = np.array([votes[row['image_path']][row['class_b']] / annotators for row in truth])
    # Per image the share of b votes is Binomial(annotators, alpha) / annotators.
    spread = np.sqrt(np.mean(alpha * (1 - alpha)) / annotators / ambiguous.sum())
    assert abs(np.mean(share_b[ambiguous] - alpha[ambiguous])) < 4 * spread
    for row, a in zip(truth, alpha):
        soft = np.array([float(row[c]) for c in names])
        assert soft.sum() == pytest.approx(1, abs=1e-5)
        assert soft[names.index(row['class_a'])] == pytest.approx(1 - a, abs=1e-5)
        if a > 0:
            assert soft[names.index(row['class_b'])] == pytest.approx(a, abs=1e-5)
        if a == 0:     # certain: every annotator names class a
            assert votes[row['image_path']] == {row['class_a']: annotators}


def test_synthetic_classes_are_learnable_and_flip_invariant(tmp_path):
    """Class signal exists (nearest centroid beats chance by far) and survives a flip."""
    folder = _synthetic(tmp_path, num_images=400, image_size=16, ambiguous_fraction=0.0)
    with open(folder / 'truth.csv', newline='') as f:
        truth = list(csv.DictReader(f))
    features = np.stack([np.asarray(Image.open(folder / row['image_path']), np.float64)
                         .mean(axis=(0, 1)) for row in truth])
    labels = np.array([int(row['class_a'].split('_')[1]) for row in truth])
    train, test = np.arange(200), np.arange(200, 400)
    centroids = np.stack([features[train][labels[train] == c].mean(0) for c in range(4)])
    predicted = np.argmin(((features[test, None] - centroids) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == labels[test]) > 0.6
    prototype = make_synthetic.make_prototypes(4, np.random.default_rng(0))[1]
    image = make_synthetic.render(prototype, 16, centre=(0.0, 0.0), phase=0.3)
    np.testing.assert_allclose(image[:, ::-1], image, atol=1e-12)


def test_synthetic_annotations_are_anonymised_for_dcic(tmp_path):
    folder = _synthetic(tmp_path, num_images=20, annotators=3)
    sets = load_annotations(folder)
    assert len(sets) == 3
    for annotation_set in sets:
        # The checks DCIC's AnnotationJson.from_file makes before it loads a set.
        assert annotation_set.get('user_mail', 'INVALID') == 'INVALID'
        assert 'INVALID' in annotation_set.get('name', 'INVALID')
        # DCIC has its own dataset called Synthetic; DCIC file names are split on '-'.
        assert annotation_set['dataset_name'] not in ('Synthetic', '')
        assert '-' not in annotation_set['dataset_name']
        assert all(a['image_path'].startswith(annotation_set['dataset_name'] + '/')
                   for a in annotation_set['annotations'])
    assert folder.name == 'Synthetic'        # the raw folder, and so the name 'synthetic', stay
    for bad in ('Synthetic', 'my-set', ''):
        with pytest.raises(DC3Error, match='--dataset_name'):
            _synthetic(tmp_path / bad.replace('-', '_'), dataset_name=bad)


def test_synthetic_imports(tmp_path):
    folder = _synthetic(tmp_path / 'raw', num_images=50)
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    meta, data = read_output(directory)
    assert meta['name'] == 'synthetic' and meta['classes'] == make_synthetic.class_names(4)
    assert meta['dcic_dataset_name'] == make_synthetic.SyntheticConfig().dataset_name
    assert meta['skipped_null_annotations'] == 0
    check_consistent(meta, data)
    assert sum(len(c['path']) for c in data.values()) == 50


# ---------------------------------------------------------------------------------------------
# The shared CIFAR10N data (paper protocol sizes)
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not CIFAR10N.is_dir(), reason=f'{CIFAR10N} not present')
def test_cifar10n_protocol_sizes():
    """Reads the real folder and annotations; assigns splits without encoding the 10k images."""
    options = config(CIFAR10N, '/nonexistent-unused')
    source = create_datasets.scan_source(options)
    splits = create_datasets.assign_splits(source, options, seed=1)
    counts = {split: len(indices) for split, indices in splits.items()}
    assert counts == {'train': 1600, 'unlabeled': 6400, 'val': 2000}
    assert {fold_of(source.paths[i]) for i in splits['val']} == {'fold2'}
    # SOURCE.md of the data: 4056 of the 10000 images have disagreeing labels.
    assert np.sum(source.soft.max(axis=1) < 1 - 1e-6) == 4056
    votes = collections.Counter()
    for annotation_set in load_annotations(CIFAR10N):
        for annotation in annotation_set['annotations']:
            if annotation['image_path'].endswith('/cifar10_train_00001.png'):
                votes[annotation['class_label']] += 1
    index = source.paths.index('fold5/cifar10_train_00001.png')
    np.testing.assert_allclose(source.soft[index], soft_from_votes(votes, source.classes))

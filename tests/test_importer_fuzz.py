"""Property test: random folder trees and malformed label files never crash the importer.

Whatever hypothesis builds, ``import_dataset`` either writes consistent datasets (meta.json counts
equal the record counts, soft labels sum to 1, nothing else in the output folder) or raises a
one-line DC3Error and leaves no output at all. Any other exception fails the test.
"""
import copy
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings, strategies as st
from PIL import Image

from libml import records
from libml.errors import DC3Error
from scripts import create_datasets


def _png(shape, mode_value=7):
    buffer = io.BytesIO()
    Image.fromarray(np.full(shape, mode_value, dtype=np.uint8)).save(buffer, format='PNG')
    return buffer.getvalue()


GOOD = _png((8, 8, 3))
FILE_CONTENTS = {
    'rgb': GOOD,
    'gray_odd_size': _png((5, 11)),
    'rgba': _png((9, 9, 4)),
    'truncated': GOOD[:len(GOOD) // 2],
    'text': b'plain text, not an image',
    'empty': b'',
}
GOOD_KINDS = ['rgb', 'gray_odd_size', 'rgba']
BAD_KINDS = ['truncated', 'text', 'empty']
IMAGE_NAMES = ['a.png', 'b.png', 'c.jpg', 'd.png']
# Hidden, README-like or label-file names must be ignored or rejected cleanly, never crash.
OTHER_NAMES = ['.DS_Store', 'README.md', 'annotations.json', 'soft_labels.csv', 'x']
LABELS = st.sampled_from(['cat', 'dog', 'emu'])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=5))
ANY_JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                        max_leaves=8)
GARBAGE_TEXT = st.one_of(ANY_JSON.map(json.dumps), st.text(max_size=20),
                         st.binary(max_size=20).map(lambda b: b.decode('latin-1')))


@st.composite
def files_in_folder(draw, clean):
    """[(name, content kind)]; a clean folder holds 1..3 readable images and nothing else."""
    empty = not clean and draw(st.integers(0, 7)) == 0
    names = draw(st.lists(st.sampled_from(IMAGE_NAMES if clean else IMAGE_NAMES + OTHER_NAMES),
                          unique=True, min_size=0 if empty else 1, max_size=0 if empty else 3))
    kinds = st.sampled_from(GOOD_KINDS if clean else GOOD_KINDS + BAD_KINDS)
    return [(name, draw(kinds)) for name in names]


def _write_files(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, kind in files:
        (folder / name).write_bytes(FILE_CONTENTS[kind])


@st.composite
def broken_annotation_sets(draw, sets, existing):
    """Applies a few random corruptions to (a copy of) well-formed annotation sets."""
    sets = copy.deepcopy(sets)
    for _ in range(draw(st.integers(1, 3))):
        target = sets[draw(st.integers(0, len(sets) - 1))]
        if not isinstance(target, dict):
            continue
        annotations = target.get('annotations')
        which = draw(st.sampled_from(['drop set key', 'annotations not a list', 'drop key',
                                      'odd value', 'unknown image', 'other prefix',
                                      'remove one', 'junk set']))
        if which == 'drop set key':
            target.pop(draw(st.sampled_from(['annotations', 'name'])), None)
        elif which == 'annotations not a list':
            target['annotations'] = draw(JSON_SCALARS)
        elif which == 'junk set':
            sets.append(draw(ANY_JSON))
        elif isinstance(annotations, list) and annotations:
            annotation = annotations[draw(st.integers(0, len(annotations) - 1))]
            key = draw(st.sampled_from(['image_path', 'class_label']))
            if which == 'drop key':
                annotation.pop(key, None)
            elif which == 'odd value':
                annotation[key] = draw(JSON_SCALARS)
            elif which == 'unknown image':
                annotation['image_path'] = draw(st.sampled_from(
                    ['Fuzz/fold9/a.png', 'fold1/a.png', 'Fuzz/../Fuzz/fold1/zz.png', '/', '']))
            elif which == 'other prefix':
                annotation['image_path'] = 'Other/' + draw(st.sampled_from(existing or ['x']))
            elif which == 'remove one':
                annotations.remove(annotation)
    return sets


@st.composite
def dcic_trees(draw, root):
    """fold1..fold5 plus annotations.json: clean, or with broken files, folders and JSON."""
    folder = root / 'Fuzz'
    folder.mkdir(parents=True)
    # Folders and annotations are broken independently, so both kinds of error get reached.
    clean, clean_labels = draw(st.booleans()), draw(st.booleans())
    existing = []
    for fold in range(1, 6):
        if not clean and draw(st.integers(0, 7)) == 0:
            continue                                               # a missing fold folder
        files = draw(files_in_folder(clean))
        _write_files(folder / f'fold{fold}', files)
        existing += [f'fold{fold}/{name}' for name, _ in files]
        if not clean and draw(st.integers(0, 9)) == 0:
            _write_files(folder / f'fold{fold}' / 'nested', [('n.png', 'rgb')])
    sets = [{'name': f'set{j}', 'dataset_name': 'Fuzz', 'user_mail': 'x@y.invalid',
             'annotation_time': 1.0,
             'annotations': [{'image_path': f'Fuzz/{path}', 'class_label': draw(LABELS),
                              'created_at': '01-01-2021-00-00-00'} for path in existing]}
            for j in range(draw(st.integers(1, 3)))]
    if clean_labels:
        content = json.dumps(sets)
    else:
        content = draw(st.one_of(broken_annotation_sets(sets, existing).map(json.dumps),
                                 st.just(json.dumps(sets)), GARBAGE_TEXT))
    if clean_labels or draw(st.integers(0, 9)):
        (folder / 'annotations.json').write_text(content, encoding='utf-8')
    return folder


@st.composite
def dc3_trees(draw, root):
    """split/class/image folders plus an optional soft_labels.csv: clean or broken."""
    folder = root / 'Fuzz'
    folder.mkdir(parents=True)
    clean = draw(st.booleans())
    splits = ['train', 'val'] + draw(st.lists(st.sampled_from(['unlabeled', 'test']),
                                              unique=True))
    if not clean:
        splits = draw(st.lists(st.sampled_from(['train', 'val', 'unlabeled', 'test', 'other']),
                               unique=True, max_size=4))
    existing, classes = [], set()
    for split in splits:
        for class_name in draw(st.lists(LABELS, unique=True, min_size=int(clean), max_size=2)):
            files = draw(files_in_folder(clean))
            _write_files(folder / split / class_name, files)
            existing += [f'{split}/{class_name}/{name}' for name, _ in files]
            classes.add(class_name)
        if (split == 'unlabeled' or not clean) and draw(st.booleans()):
            files = draw(files_in_folder(clean))
            _write_files(folder / split, files)
            existing += [f'{split}/{name}' for name, _ in files]
    if draw(st.booleans()):
        columns = draw(st.permutations(sorted(classes)))
        value = st.floats(0.1, 5).map(str)
        if not clean:
            columns = draw(st.lists(LABELS, max_size=3))
            value = st.one_of(value, st.sampled_from(['0', '-1', 'nan', 'inf', 'x', '']))
        row = st.tuples(st.sampled_from(existing or ['train/cat/a.png']),
                        st.lists(value, min_size=len(columns), max_size=len(columns) + int(
                            not clean)))
        rows = draw(st.lists(row, max_size=4, unique_by=lambda r: r[0]))
        text = '\n'.join([','.join(['image_path', *columns])]
                         + [','.join([path, *values]) for path, values in rows])
        if not clean:
            text = draw(st.one_of(st.just(text), GARBAGE_TEXT))
        (folder / 'soft_labels.csv').write_text(text)
    return folder


OPTIONS = st.fixed_dictionaries({
    'seeds': st.sampled_from([(1,), (1, 2)]),
    'skip_corrupt': st.booleans(),
    'keep_test': st.booleans(),
    # Valid values only: bad option values are covered in test_datasets.py.
    'slice_index': st.integers(1, 5),
    'labeled_fraction': st.sampled_from([0.2, 0.5, 0.9]),
})


def _check_output(data_dir, seeds):
    """Each seed folder holds exactly its splits and meta.json, all mutually consistent."""
    assert sorted(os.listdir(data_dir)) == sorted(f'fuzz.{seed}' for seed in seeds)
    for seed in seeds:
        directory = Path(data_dir) / f'fuzz.{seed}'
        meta = json.loads((directory / 'meta.json').read_text())
        k = len(meta['classes'])
        assert sorted(os.listdir(directory)) == sorted(
            ['meta.json'] + [s['file'] for s in meta['splits'].values()])
        for split, summary in meta['splits'].items():
            columns = records.read_split_numpy(str(directory), split, k)
            assert len(columns['label']) == summary['count']
            assert sum(summary['per_class'].values()) == summary['count']
            assert list(columns['index']) == list(range(summary['count']))
            if summary['count']:
                assert np.all(np.abs(columns['soft_label'].sum(axis=1) - 1) < 1e-5)
                assert columns['label'].min() >= 0 and columns['label'].max() < k
        assert all(math.isfinite(w) for w in meta['class_weights'])
        info = records.load_dataset_info(str(data_dir), 'fuzz', seed)
        assert info.has_split('train') and info.has_split('val')


@settings(max_examples=int(os.environ.get('FUZZ_EXAMPLES', 30)), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), layout=st.sampled_from(['dcic', 'dc3']), options=OPTIONS)
def test_importer_succeeds_consistently_or_raises_dc3error(data, layout, options):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trees = dcic_trees(root / 'raw') if layout == 'dcic' else dc3_trees(root / 'raw')
        folder = data.draw(trees)
        data_dir = root / 'data'
        config = create_datasets.ImportConfig(input_dir=str(folder), data_dir=str(data_dir),
                                              image_size=8, progress=False, **options)
        try:
            create_datasets.import_dataset(config)
        except DC3Error as error:
            event(f'DC3Error: {" ".join(str(error).split()[1:4])}')
            assert '\n' not in str(error)
            assert not data_dir.exists() or not os.listdir(data_dir)
            return
        event('imported')
        _check_output(data_dir, options['seeds'])

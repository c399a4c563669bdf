#!/usr/bin/env python
"""Imports a raw image dataset into the per-seed TFRecord format of ``libml.records``.

Two input layouts are read (DC3-SPEC.md, "Input layouts the importer must read"):

* ``dc3``:  ``<input>/{train,val,unlabeled,test}/<class>/<image>`` plus an optional
  ``<input>/soft_labels.csv`` (header ``image_path,<class1>,...``; rows are normalised to sum 1,
  images without a row get the one-hot label of their folder). ``unlabeled/`` may also hold images
  directly; those without a CSV row get a uniform soft label and label 0, so their metrics are
  meaningless and they are left out of the ambiguity statistics (``unknown_label_count`` in
  meta.json).
* ``dcic``: ``<input>/fold1..fold5/<image>`` plus ``<input>/annotations.json``; the soft label is
  the share of annotations per class, and DCIC slice ``v`` picks the validation (and test) fold.

The labeled split stores ONE hard label per image sampled from its soft label (a simulated single
annotation); every other split stores the argmax. All input is read and checked before anything is
written, and each ``<data_dir>/<name>.<seed>/`` appears atomically, so an error leaves no output and
an older good copy intact. Problems a user can fix are one-line ``DC3Error``s (exit status 2).

Usage (from the repository root):
    python scripts/create_datasets.py --input data/raw/Synthetic --seeds 1,2,3
    python scripts/create_datasets.py --input ../shared/data/CIFAR10N --slice 1 --keep_test 1
"""
import collections
import csv
import dataclasses
import os
import posixpath
import re


import numpy as np
import libml.tf_startup  # noqa: F401  (first: hides TensorFlow's C++ start-up lines)
import tensorflow as tf
from absl import app, flags, logging
from tqdm import tqdm

from libml import io_utils, records
from libml.images import MAX_IMAGE_PIXELS, encode_image  # noqa: F401  (MAX_IMAGE_PIXELS: tests)
from libml.errors import DC3Error

LAYOUTS = ('auto', 'dc3', 'dcic')
SPLIT_FOLDERS = ('train', 'val', 'unlabeled', 'test')
FOLDS = tuple(f'fold{i}' for i in range(1, 6))
ANNOTATIONS_FILE = 'annotations.json'
SOFT_LABELS_FILE = 'soft_labels.csv'
# Bookkeeping files that may sit next to the images and are not images.
_IGNORED_FILES = {'thumbs.db', 'desktop.ini', ANNOTATIONS_FILE, SOFT_LABELS_FILE}
_NAME_RE = re.compile(r'^[a-z0-9_\-]+$')
_SKIP_HINT = 'pass --skip_corrupt 1 to skip unreadable or unannotated images'
# A soft label whose largest entry is below 1 by more than float32 rounding is ambiguous.
_ONE_HOT_TOLERANCE = 1e-6
_RNG_STREAMS = {'pool': 1, 'labels': 2, 'order': 3}
# A label given to fewer than this share of the annotations (DCIC) or images (DC3 class folders)
# is almost always a typo; below 1000 annotations no label can fall under it.
RARE_LABEL_SHARE = 0.001


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    """What to import and how; built from the flags in ``main()`` or directly by tests."""
    input_dir: str
    data_dir: str
    name: str = ''                  # '' -> the input folder's name, lowercased
    layout: str = 'auto'
    image_size: int = 32
    seeds: tuple = (1,)
    slice_index: int = 1            # DCIC slice v in 1..5
    labeled_fraction: float = 0.2   # DCIC: share of the training pool that is labeled
    keep_test: bool = False         # DCIC: test fold as a test split instead of in the pool
    skip_corrupt: bool = False
    progress: bool = True
    classes: tuple = ()             # pinned class list in index order; () = the labels found
    follow_outside_links: bool = False  # read symlinks that lead out of the input folder


@dataclasses.dataclass
class Source:
    """Everything read from the input folder, one entry per image, sorted by path."""
    layout: str
    classes: tuple
    paths: list             # relative to the input folder, '/'-separated
    groups: list            # dc3: split folder; dcic: fold folder
    soft: np.ndarray        # [n, k] float64, rows sum to 1
    known: np.ndarray       # [n] bool; False = unlabeled image without any label (uniform soft)
    skipped: list           # relative paths left out (unreadable or unannotated)
    skipped_null_annotations: int = 0   # dcic: annotations with "class_label": null
    repeated_annotations: int = 0       # dcic: earlier labels of an image by the same annotator
    dcic_dataset_name: str = None       # dcic: "dataset_name" of the first annotation set

    def subset(self, keep):
        keep = np.asarray(keep, dtype=bool)
        return dataclasses.replace(
            self, paths=[p for p, k in zip(self.paths, keep) if k],
            groups=[g for g, k in zip(self.groups, keep) if k],
            soft=self.soft[keep], known=self.known[keep])


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _quote(value, limit=80):
    """repr() of a user-supplied value, shortened: keeps error messages on one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _one_line(text, limit=120):
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _is_ignored(name):
    """Hidden files, READMEs and the label files are never taken for images."""
    lower = name.lower()
    return name.startswith('.') or lower in _IGNORED_FILES or lower.startswith('readme')


def _rng(seed, purpose, split=None):
    """An independent generator per (seed, purpose[, split]), so one use never shifts another."""
    tags = [seed, _RNG_STREAMS[purpose]]
    if split is not None:
        tags.append(records.SPLITS.index(split))
    return np.random.default_rng(tags)


def parse_seeds(text):
    """'1,2,3' -> (1, 2, 3); duplicates dropped, order kept."""
    seeds = []
    for part in str(text).split(','):
        part = part.strip()
        if not part.isdigit():
            raise DC3Error(f'--seeds {_quote(text)} is not a comma-separated list of non-negative '
                           'integers; use e.g. --seeds 1,2,3')
        if int(part) not in seeds:
            seeds.append(int(part))
    return tuple(seeds)


def parse_classes(text):
    """'cat, dog' -> ('cat', 'dog'); '' -> () (classes taken from the labels)."""
    if not str(text).strip():
        return ()
    classes = tuple(part.strip() for part in str(text).split(','))
    if any(not c for c in classes) or len(set(classes)) != len(classes):
        raise DC3Error(f'--classes {_quote(text)} must list distinct non-empty class names '
                       'separated by commas, e.g. --classes cat,dog,emu')
    return classes


def check_labels(counts, pinned, where, unit):
    """The class list from label counts: the pinned list (every label must be in it), else the
    sorted labels, refusing near-duplicates (case / whitespace) and vanishingly rare labels."""
    if pinned:
        outside = sorted(set(counts) - set(pinned))
        if outside:
            raise DC3Error(f'{where}: label(s) {_quote(outside)} are not in --classes; correct '
                           'them, or add them to --classes if they are real classes')
        return tuple(pinned)
    groups = collections.defaultdict(list)
    for label in counts:
        groups[''.join(label.split()).casefold()].append(label)
    similar = sorted(sorted(group) for group in groups.values() if len(group) > 1)
    total = sum(counts.values())
    rare = sorted(label for label, n in counts.items() if n < RARE_LABEL_SHARE * total)
    problems = []
    if similar:
        problems.append('labels that differ only by case or whitespace: ' + '; '.join(
            ' vs '.join(repr(label) for label in group) for group in similar))
    if rare:
        problems.append(f'labels on fewer than {RARE_LABEL_SHARE:.1%} of the {total} {unit}: '
                        + ', '.join(f'{label!r} ({counts[label]})' for label in rare))
    if problems:
        raise DC3Error(f'{where}: {"; ".join(problems)}; correct them, or pin the class list with '
                       '--classes a,b,c if they are real classes')
    return tuple(sorted(counts))


def output_name(config):
    """The dataset name used in ``<name>.<seed>``: --name, else the input folder name lowercased."""
    if config.name:
        if not _NAME_RE.match(config.name):
            raise DC3Error(f'--name {_quote(config.name)} must use only lowercase letters, digits, '
                           "'_' and '-'; e.g. --name plankton")
        return config.name
    folder = os.path.basename(os.path.normpath(os.path.abspath(config.input_dir)))
    name = re.sub(r'[^a-z0-9_\-]', '_', folder.lower())
    if not name.strip('_'):
        raise DC3Error(f'cannot derive a dataset name from {_quote(config.input_dir)}; pass --name')
    return name


def check_config(config):
    """Rejects bad option values before any file is touched."""
    if config.layout not in LAYOUTS:
        raise DC3Error(f'--layout {_quote(config.layout)} is not one of {", ".join(LAYOUTS)}')
    if not isinstance(config.image_size, int) or config.image_size < 8:
        raise DC3Error(f'--image_size {config.image_size} is too small; use 8 or more (e.g. 32)')
    if config.slice_index not in range(1, 6):
        raise DC3Error(f'--slice {config.slice_index} is outside 1..5; pick a DCIC slice from 1 '
                       'to 5')
    if not 0 < config.labeled_fraction < 1:
        raise DC3Error(f'--labeled_fraction {config.labeled_fraction} must lie strictly between 0 '
                       'and 1; e.g. 0.2 for the paper protocol')
    if not config.seeds or any(not isinstance(s, int) or s < 0 for s in config.seeds):
        raise DC3Error(f'--seeds {config.seeds} must name at least one non-negative integer seed')
    output_name(config)


# ---------------------------------------------------------------------------------------------
# Reading the folder tree and the labels (no image is decoded here)
# ---------------------------------------------------------------------------------------------

def _outside_root(input_dir, relative):
    """True if ``relative`` (under the input folder) resolves, through symlinks, to outside it."""
    root = os.path.realpath(input_dir)
    real = os.path.realpath(os.path.join(input_dir, relative))
    return os.path.commonpath([root, real]) != root


def check_links(config, relatives):
    """Refuses files that symlinks lead out of the input folder, unless allowed explicitly."""
    if config.follow_outside_links:
        return
    outside = [r for r in relatives if _outside_root(config.input_dir, r)]
    if outside:
        real = os.path.realpath(os.path.join(config.input_dir, outside[0]))
        raise DC3Error(f'{len(outside)} file(s) are symlinks leading out of the input folder, e.g. '
                       f'{_quote(outside[0])} -> {_quote(real)}; copy them into the dataset '
                       'folder, or pass --follow_outside_links 1')


def _check_label_file(path):
    """A label file that exists must be a regular file (a FIFO would block the import forever)."""
    if os.path.lexists(path) and not os.path.isfile(path):
        raise DC3Error(f'{path} is not a regular file; replace it with the label file')


def _list_folder(input_dir, folder):
    """(files, sub-folders) of ``<input>/<folder>`` as sorted paths relative to the input folder."""
    files, folders = [], []
    with os.scandir(os.path.join(input_dir, folder)) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _is_ignored(entry.name):
                continue
            try:
                entry.name.encode('utf-8')
            except UnicodeEncodeError:
                raise DC3Error(f'file name {_quote(entry.name)} in {_quote(folder)} is not valid '
                               'UTF-8; rename it') from None
            relative = posixpath.join(folder, entry.name)
            (folders if entry.is_dir() else files).append(relative)
    return files, folders


def _list_images(input_dir, folder, kind):
    """The files of a class or fold folder, which must hold at least one image and no folders."""
    files, folders = _list_folder(input_dir, folder)
    if folders:
        raise DC3Error(f'unexpected folder {_quote(folders[0])}: a {kind} folder must hold images '
                       'directly; move them up or remove the folder')
    if not files:
        raise DC3Error(f'{kind} folder {_quote(folder)} in {_quote(input_dir)} is empty; add its '
                       'images or remove the folder')
    return files


def detect_layout(input_dir, layout):
    """'auto' becomes 'dcic' when annotations.json exists, else 'dc3'."""
    if layout != 'auto':
        return layout
    if os.path.exists(os.path.join(input_dir, ANNOTATIONS_FILE)):
        return 'dcic'
    has_folds = any(os.path.isdir(os.path.join(input_dir, f)) for f in FOLDS)
    has_splits = any(os.path.isdir(os.path.join(input_dir, s)) for s in SPLIT_FOLDERS)
    if has_folds and not has_splits:
        raise DC3Error(f'{_quote(input_dir)} has fold folders but no {ANNOTATIONS_FILE}; add the '
                       'DCIC annotations file next to fold1..fold5')
    return 'dc3'


def read_soft_label_csv(input_dir, classes, image_paths):
    """``soft_labels.csv`` -> {relative path: normalised soft label in class order} (or {})."""
    path = os.path.join(input_dir, SOFT_LABELS_FILE)
    _check_label_file(path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, newline='', encoding='utf-8') as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DC3Error(f'{path} is not a readable UTF-8 CSV file ({_one_line(e)}); fix or '
                       'remove it') from None
    expected_header = 'image_path,' + ','.join(classes)
    header = [c.strip() for c in rows[0]] if rows else []
    if not header or header[0] != 'image_path':
        raise DC3Error(f'{path} must start with the header line {_quote(expected_header)}')
    columns = header[1:]
    if sorted(columns) != sorted(set(columns)) or set(columns) != set(classes):
        unknown = sorted(set(columns) - set(classes))
        missing = sorted(set(classes) - set(columns))
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        raise DC3Error(f'{path}: class columns do not match the class folders (unknown: '
                       f'{_quote(unknown)}, missing: {_quote(missing)}, repeated: '
                       f'{_quote(repeated)}); use the header {_quote(expected_header)}')
    order = [columns.index(c) + 1 for c in classes]
    soft = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f'{path} line {line}'
        if len(row) != len(header):
            raise DC3Error(f'{where} has {len(row)} fields, the header has {len(header)}; fix '
                           'the row')
        image = posixpath.normpath(row[0].strip().replace('\\', '/'))
        if image not in image_paths:
            raise DC3Error(f'{where} names {_quote(row[0])}, which is not an image under the '
                           'split folders; paths are relative to the dataset folder, e.g. '
                           'train/<class>/<file>')
        if image in soft:
            raise DC3Error(f'{where} repeats {_quote(row[0])}; keep one row per image')
        try:
            values = np.array([float(row[i]) for i in order])
        except ValueError:
            raise DC3Error(f'{where} has a value that is not a number; use non-negative '
                           'numbers') from None
        total = values.sum()
        if not np.all(np.isfinite(values)) or np.any(values < 0) or not (
                np.isfinite(total) and total > 0):
            raise DC3Error(f'{where} needs finite non-negative values with a positive sum')
        soft[image] = values / total
    return soft


def scan_dc3(input_dir, pinned_classes=()):
    """Reads the ``<split>/<class>/<image>`` tree and the optional soft labels."""
    entries = []                    # (path, split folder, class folder name or None)
    class_names = set()
    names_per_split = {}
    for split in SPLIT_FOLDERS:
        if not os.path.isdir(os.path.join(input_dir, split)):
            continue
        files, folders = _list_folder(input_dir, split)
        for path in files:
            if split != 'unlabeled':
                raise DC3Error(f'{_quote(path)} is not inside a class folder; move it to '
                               f'{split}/<class>/ (only unlabeled/ may hold images directly)')
            entries.append((path, split, None))
        for folder in folders:
            images = _list_images(input_dir, folder, 'class')
            class_names.add(posixpath.basename(folder))
            names_per_split.setdefault(split, set()).add(posixpath.basename(folder))
            entries.extend((path, split, posixpath.basename(folder)) for path in images)
    if not class_names:
        raise DC3Error(f'no class folders under {_quote(input_dir)}; the DC3 layout is '
                       '<input>/{train,val,unlabeled,test}/<class>/<image> (or use --layout dcic '
                       'with fold1..fold5 and annotations.json)')
    # A class that the labeled split lacks is almost always a misspelt folder name; a class
    # missing from a small validation split is normal and allowed.
    for split, names in sorted(names_per_split.items()):
        unknown = sorted(names - names_per_split.get('train', set()))
        if split != 'train' and unknown and 'train' in names_per_split:
            raise DC3Error(f'class folder(s) {unknown} in {split}/ do not exist in train/; class '
                           'names must agree between splits: rename them to match train/')
    image_counts = collections.Counter(c for _, _, c in entries if c is not None)
    classes = check_labels(image_counts, pinned_classes, f'class folders of {_quote(input_dir)}',
                           'labeled images')
    entries.sort()
    csv_soft = read_soft_label_csv(input_dir, classes, {path for path, _, _ in entries})
    k = len(classes)
    soft = np.zeros((len(entries), k))
    known = np.ones(len(entries), dtype=bool)
    for i, (path, _, class_name) in enumerate(entries):
        if path in csv_soft:
            soft[i] = csv_soft[path]
        elif class_name is not None:
            soft[i, classes.index(class_name)] = 1.0
        else:
            soft[i] = 1.0 / k
            known[i] = False
    return Source(layout='dc3', classes=classes, paths=[e[0] for e in entries],
                  groups=[e[1] for e in entries], soft=soft, known=known, skipped=[])


def _dcic_relative(image_path):
    """'<any folder>/foldN/<file>' -> 'foldN/<file>' (the path under the input folder)."""
    # normpath folds './a', 'a//b' and 'x/../a' into one spelling, so one image is one key.
    parts = posixpath.normpath(image_path.replace('\\', '/').lstrip('/')).split('/')
    if '..' in parts or len(parts) < 2:
        return None
    return '/'.join(parts[1:])


def read_annotations(input_dir, image_paths, pinned_classes=()):
    """``annotations.json`` -> (classes, {relative path: Counter of class labels}, number of null
    annotations skipped, "dataset_name" of the first set or None, number of repeated labels).

    Each annotation set is one annotator: if it labels an image more than once (also under two
    spellings of its path), only its last label counts. Classes are ``pinned_classes`` if given,
    else the sorted labels (see ``check_labels``)."""
    path = os.path.join(input_dir, ANNOTATIONS_FILE)
    _check_label_file(path)
    if not os.path.isfile(path):
        raise DC3Error(f'{path} is missing; a DCIC dataset needs annotations.json next to '
                       'fold1..fold5')
    try:
        sets = io_utils.read_json(path, 'annotations file')
    except RecursionError:
        raise DC3Error(f'annotations file {path} is nested too deeply to be DCIC annotations; '
                       'fix or regenerate it') from None
    if not isinstance(sets, list):
        raise DC3Error(f'{path} must hold a JSON list of annotation sets, not a '
                       f'{type(sets).__name__}; fix or regenerate it')
    votes = collections.defaultdict(collections.Counter)
    labels = set()
    missing = []
    null_labels = 0
    repeated = 0
    for set_index, annotation_set in enumerate(sets):
        set_name = f'annotation set {set_index}'
        if isinstance(annotation_set, dict) and isinstance(annotation_set.get('name'), str):
            set_name += f' ({_quote(annotation_set["name"], 40)})'
        if not isinstance(annotation_set, dict) or 'annotations' not in annotation_set:
            raise DC3Error(f'{path}: {set_name} lacks the key "annotations"; every set must be an '
                           'object with a list "annotations" of {"image_path", "class_label"}')
        if not isinstance(annotation_set['annotations'], list):
            raise DC3Error(f'{path}: "annotations" of {set_name} must be a list; fix the file')
        latest = {}         # this annotator's label per image; a later one replaces an earlier one
        for number, annotation in enumerate(annotation_set['annotations']):
            if isinstance(annotation, dict) and 'class_label' in annotation and \
                    annotation['class_label'] is None:
                # DCIC's own reader ignores such entries (an annotator who skipped the image).
                null_labels += 1
                continue
            for key in ('image_path', 'class_label'):
                if not isinstance(annotation, dict) or key not in annotation:
                    raise DC3Error(f'{path}: annotation {number} of {set_name} lacks the key '
                                   f'"{key}"; add it')
                value = annotation[key]
                if not isinstance(value, str) or not value.strip():
                    raise DC3Error(f'{path}: "{key}" of annotation {number} in {set_name} must '
                                   f'be a non-empty string, not {_quote(value, 40)}')
            relative = _dcic_relative(annotation['image_path'])
            if relative in image_paths:
                repeated += relative in latest
                latest[relative] = annotation['class_label']
            else:
                labels.add(annotation['class_label'])
                missing.append(annotation['image_path'])
        for relative, label in latest.items():
            votes[relative][label] += 1
            labels.add(label)
    if missing:
        raise DC3Error(f'{path}: {len(missing)} annotation(s) name images that do not exist, e.g. '
                       f'{_quote(missing[0])}; image_path must be <dataset folder>/foldN/<file> '
                       f'of an image under {_quote(input_dir)}')
    if not labels:
        raise DC3Error(f'{path} holds no annotations; add annotation sets with labeled images')
    label_counts = collections.Counter()
    for counter in votes.values():
        label_counts.update(counter)
    classes = check_labels(label_counts, pinned_classes, path, 'annotations')
    # DCIC names the dataset after its first set; the DCIC export reuses that name.
    dataset_name = sets[0].get('dataset_name') if sets else None
    return (classes, votes, null_labels,
            dataset_name if isinstance(dataset_name, str) and dataset_name else None, repeated)


def scan_dcic(input_dir, skip_unannotated, pinned_classes=()):
    """Reads fold1..fold5 and annotations.json into soft labels (normalised vote counts)."""
    missing = [fold for fold in FOLDS if not os.path.isdir(os.path.join(input_dir, fold))]
    if len(missing) == len(FOLDS):
        raise DC3Error(f'{_quote(input_dir)} has no fold folders; the DCIC layout is '
                       '<input>/fold1..fold5/<image> plus <input>/annotations.json')
    if missing:
        raise DC3Error(f'{_quote(input_dir)} lacks {", ".join(missing)}; the DCIC layout needs '
                       'all five folders fold1..fold5')
    paths, groups = [], []
    for fold in FOLDS:
        files = _list_images(input_dir, fold, 'fold')
        paths.extend(files)
        groups.extend([fold] * len(files))
    classes, votes, null_labels, dataset_name, repeated = read_annotations(
        input_dir, set(paths), pinned_classes)
    unannotated = [p for p in paths if p not in votes]
    if unannotated and not skip_unannotated:
        raise DC3Error(f'{len(unannotated)} image(s) have no annotation in {ANNOTATIONS_FILE}, '
                       f'e.g. {_quote(unannotated[0])}; annotate or remove them, or {_SKIP_HINT}')
    soft = np.zeros((len(paths), len(classes)))
    for i, path in enumerate(paths):
        for label, count in votes[path].items():
            soft[i, classes.index(label)] = count
    annotated = soft.sum(axis=1) > 0
    soft[annotated] /= soft[annotated].sum(axis=1, keepdims=True)
    source = Source(layout='dcic', classes=classes, paths=paths, groups=groups, soft=soft,
                    known=np.ones(len(paths), dtype=bool), skipped=list(unannotated),
                    skipped_null_annotations=null_labels, dcic_dataset_name=dataset_name,
                    repeated_annotations=repeated)
    return source.subset(annotated)


def scan_source(config):
    """Lists the images and reads their soft labels for the configured layout."""
    if not os.path.isdir(config.input_dir):
        raise DC3Error(f'input folder {_quote(config.input_dir)} does not exist; pass --input '
                       '<root>/<Name>, the folder holding the dataset')
    layout = detect_layout(config.input_dir, config.layout)
    label_files = [name for name in (ANNOTATIONS_FILE, SOFT_LABELS_FILE)
                   if os.path.lexists(os.path.join(config.input_dir, name))]
    for name in label_files:
        _check_label_file(os.path.join(config.input_dir, name))
    check_links(config, label_files)        # before any label file is read
    if layout == 'dcic':
        source = scan_dcic(config.input_dir, config.skip_corrupt, config.classes)
    else:
        source = scan_dc3(config.input_dir, config.classes)
    check_links(config, source.paths)       # before any image is opened
    return source


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def encode_images(config, source):
    """PNG bytes for every image; unreadable ones are an error or, with skip_corrupt, dropped."""
    encoded, failures = [], []
    for path in tqdm(source.paths, desc='encoding images', unit='img', disable=not config.progress):
        try:
            encoded.append(encode_image(os.path.join(config.input_dir, path), config.image_size))
        except Exception as e:  # pylint: disable=broad-except
            # PIL signals unreadable input with many types (OSError, SyntaxError, ValueError, ...).
            encoded.append(None)
            failures.append((path, _one_line(f'{type(e).__name__}: {e}', 100)))
    if failures and not config.skip_corrupt:
        path, reason = failures[0]
        raise DC3Error(f'{len(failures)} file(s) cannot be read as images, e.g. {_quote(path)} '
                       f'({reason}); remove or replace them, or {_SKIP_HINT}')
    readable = np.array([png is not None for png in encoded], dtype=bool)
    source = source.subset(readable)
    source.skipped = sorted(source.skipped + [path for path, _ in failures])
    return source, [png for png in encoded if png is not None]


# ---------------------------------------------------------------------------------------------
# Splits and labels
# ---------------------------------------------------------------------------------------------

def dcic_fold_roles(slice_index, keep_test):
    """DCIC slice v -> (validation fold, test fold or None, training-pool folds)."""
    val_fold = f'fold{slice_index % 5 + 1}'
    test_fold = f'fold{(slice_index + 1) % 5 + 1}'
    pool = tuple(f for f in FOLDS if f != val_fold and not (keep_test and f == test_fold))
    return val_fold, (test_fold if keep_test else None), pool


def labeled_count(pool_size, labeled_fraction):
    """round(labeled_fraction * pool_size), halves rounded up."""
    return int(np.floor(labeled_fraction * pool_size + 0.5))


def split_pool(pool_indices, labeled_fraction, seed):
    """Seeded shuffle of the pool; the first round(fraction * n) are labeled, the rest unlabeled."""
    shuffled = _rng(seed, 'pool').permutation(np.asarray(pool_indices, dtype=np.int64))
    n_labeled = labeled_count(len(shuffled), labeled_fraction)
    return shuffled[:n_labeled], shuffled[n_labeled:]


def assign_splits(source, config, seed):
    """{split: image indices in record order}; 'test' is present only when it has images."""
    groups = np.array(source.groups, dtype=object)

    def members(group):
        return np.flatnonzero(groups == group) if len(groups) else np.zeros(0, np.int64)

    if source.layout == 'dcic':
        val_fold, test_fold, pool_folds = dcic_fold_roles(config.slice_index, config.keep_test)
        pool = np.concatenate([members(f) for f in pool_folds])
        labeled, unlabeled = split_pool(np.sort(pool), config.labeled_fraction, seed)
        splits = {'train': labeled, 'unlabeled': unlabeled, 'val': members(val_fold),
                  'test': members(test_fold) if test_fold else np.zeros(0, np.int64)}
    else:
        splits = {split: members(split) for split in ('train', 'unlabeled', 'val', 'test')}
    for split in ('train', 'val'):
        if not len(splits[split]):
            raise DC3Error(_empty_split_message(source, config, split))
    if not len(splits['test']):
        del splits['test']
    return {split: _rng(seed, 'order', split).permutation(indices)
            for split, indices in splits.items()}


def _empty_split_message(source, config, split):
    if source.layout == 'dc3':
        return (f'the {split!r} split is empty; put images in '
                f'{_quote(config.input_dir)}/{split}/<class>/')
    if split == 'val':
        val_fold = dcic_fold_roles(config.slice_index, config.keep_test)[0]
        return (f'the val split is empty: {val_fold} has no usable image for slice '
                f'{config.slice_index}; add images to it or pick another --slice')
    return (f'the labeled train split is empty: --labeled_fraction {config.labeled_fraction} of '
            'the training pool rounds to 0 images; raise --labeled_fraction or add images')


def sample_hard_labels(soft, rng):
    """One class per row drawn from that row's distribution (inverse CDF, vectorised)."""
    soft = np.asarray(soft, dtype=np.float64)
    cumulative = np.cumsum(soft, axis=1)
    cumulative /= cumulative[:, -1:]        # exact 1.0 at the end, so every row picks a class
    draws = rng.random((len(soft), 1))
    return np.argmax(draws < cumulative, axis=1)


def hard_labels(source, splits, seed):
    """{split: labels in record order}: sampled for 'train', argmax (lowest on ties) elsewhere."""
    labels = {}
    for split, indices in splits.items():
        soft = source.soft[indices]
        if split == 'train':
            labels[split] = sample_hard_labels(soft, _rng(seed, 'labels'))
        else:
            labels[split] = np.argmax(soft, axis=1) if len(soft) else np.zeros(0, np.int64)
    return labels


# ---------------------------------------------------------------------------------------------
# Metadata and writing
# ---------------------------------------------------------------------------------------------

def _ambiguous(soft):
    return soft.max(axis=1) < 1 - _ONE_HOT_TOLERANCE


def _ambiguous_share(source, indices):
    """Share of ambiguous images among those with a known label (None if there are none)."""
    indices = np.asarray(indices, dtype=np.int64)
    soft = source.soft[indices[source.known[indices]]]
    return float(_ambiguous(soft).mean()) if len(soft) else None


def split_summary(source, split, indices, labels):
    """The meta.json entry of one split."""
    known_soft = source.soft[indices[source.known[indices]]]
    counts = np.bincount(labels, minlength=len(source.classes))
    return {
        'count': int(len(indices)),
        'file': records.split_file(split),
        'per_class': {c: int(n) for c, n in zip(source.classes, counts)},
        'mean_ambiguity': float(np.mean(1 - known_soft.max(axis=1))) if len(known_soft) else None,
        'ambiguous_fraction': _ambiguous_share(source, indices),
        'unknown_label_count': int(len(indices) - len(known_soft)),
    }


def build_meta(config, name, seed, source, splits, labels):
    summaries = {s: split_summary(source, s, splits[s], labels[s]) for s in splits}
    train_counts = [summaries['train']['per_class'][c] for c in source.classes]
    # Train images always have a label, so the pool share is defined (it feeds prior_ambiguity).
    pool = np.concatenate([splits['train'], splits['unlabeled']])
    ambiguous = {'pool': _ambiguous_share(source, pool),
                 'val': _ambiguous_share(source, splits['val'])}
    if 'test' in splits:
        ambiguous['test'] = _ambiguous_share(source, splits['test'])
    dcic = source.layout == 'dcic'
    return records.dataset_meta(
        name, seed, source.classes, config.image_size, summaries, train_counts, ambiguous,
        layout=source.layout, source=config.input_dir,
        # The DCIC protocol options do not apply to the folder-defined dc3 splits.
        slice=config.slice_index if dcic else None,
        labeled_fraction=config.labeled_fraction if dcic else None,
        keep_test=bool(config.keep_test) if dcic else None,
        # With keep_test off, DCIC's test fold is trained on: the DCIC export refuses such data.
        dcic_test_fold=dcic_fold_roles(config.slice_index, True)[1] if dcic else None,
        dcic_dataset_name=source.dcic_dataset_name if dcic else None,
        skipped_null_annotations=source.skipped_null_annotations if dcic else None,
        repeated_annotations=source.repeated_annotations if dcic else None,
        skipped_files=list(source.skipped), created_by='scripts/create_datasets.py')


def write_dataset_files(folder, source, encoded, splits, labels, meta, progress=True):
    """Writes the TFRecords of one seed into ``folder`` (a staging folder), then its meta.json with
    the size and sha256 of every split file, which ``records.verify_split`` checks on reading."""
    os.makedirs(folder)
    meta = dict(meta, splits={s: dict(v) for s, v in meta['splits'].items()})
    bar = tqdm(total=sum(len(v) for v in splits.values()), unit='img', disable=not progress,
               desc=f'writing {meta["name"]}.{meta["seed"]}')
    with bar:
        for split, indices in splits.items():
            with tf.io.TFRecordWriter(os.path.join(folder, records.split_file(split))) as writer:
                for position, (i, label) in enumerate(zip(indices, labels[split])):
                    writer.write(records.serialize_example(
                        encoded[i], label, source.soft[i], source.paths[i], split, position))
                    bar.update(1)
            meta['splits'][split].update(records.split_entry(folder, split, len(indices)))
    io_utils.write_json(os.path.join(folder, records.META_FILE), meta)


def _file_error_reason(error):
    """'<reason> (<file name>)' of an OSError or a TensorFlow file error, short and on one line."""
    if isinstance(error, tf.errors.OpError):
        # TensorFlow's message is '<path>; <reason>'.
        filename, _, reason = error.message.rpartition('; ')
    else:
        filename, reason = error.filename or '', error.strerror or str(error)
    name = os.path.basename(str(filename))
    return _one_line(f'{reason} ({name})' if name else reason, 160)


def import_dataset(config):
    """Reads and checks all input, then writes one dataset folder per seed; returns the folders.

    Every seed is written to a staging folder first and all of them are swapped in together, so a
    failure part-way (a full disk, a kill) leaves every earlier dataset as it was.
    """
    check_config(config)
    name = output_name(config)
    try:
        source = scan_source(config)
        source, encoded = encode_images(config, source)
        if source.skipped:
            for path in source.skipped[:20]:
                logging.warning('skipped unreadable or unannotated image %r', path)
            print(f'skipped {len(source.skipped)} unreadable or unannotated file(s); they are '
                  'listed under skipped_files in meta.json')
        if source.skipped_null_annotations:
            print(f'skipped {source.skipped_null_annotations} annotation(s) with "class_label": '
                  'null, as DCIC does; counted in meta.json')
        if source.repeated_annotations:
            print(f'{source.repeated_annotations} image(s) were labeled again by the same '
                  'annotator; only the last label of each counts (repeated_annotations in '
                  'meta.json)')
        # Plan every seed before writing any, so a bad split leaves no output at all.
        plans = {}
        for seed in config.seeds:
            splits = assign_splits(source, config, seed)
            plans[seed] = (splits, hard_labels(source, splits, seed))
        directories = [records.dataset_dir(config.data_dir, name, seed) for seed in plans]
        if os.path.isdir(config.data_dir):
            io_utils.recover(parent=config.data_dir)    # leftovers of killed imports
        with io_utils.atomic_paths(directories) as staged:
            for (seed, (splits, labels)), folder in zip(plans.items(), staged):
                meta = build_meta(config, name, seed, source, splits, labels)
                write_dataset_files(folder, source, encoded, splits, labels, meta,
                                    config.progress)
        for directory, (splits, _) in zip(directories, plans.values()):
            print(f'wrote {directory}: ' + ', '.join(f'{s} {len(v)}' for s, v in splits.items()))
    except (OSError, tf.errors.OpError) as e:
        # A full disk (ENOSPC), a file-size limit (EFBIG), permissions: TensorFlow's writer
        # reports them as OpError, Python as OSError.
        raise DC3Error(f'file access failed: {_file_error_reason(e)}; nothing was changed in '
                       f'{_quote(config.data_dir)}; check the paths, permissions, free disk space '
                       'and file-size limit (ulimit -f)') from None
    return directories


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def define_flags():
    """Defined only when run as a script, so importing this module (tests) adds no flags."""
    flags.DEFINE_string('input', None, 'Dataset folder <root>/<Name> to import.')
    flags.DEFINE_string('name', '', 'Output dataset name (lowercase); default: the folder name, '
                        'lowercased.')
    flags.DEFINE_enum('layout', 'auto', LAYOUTS, 'Input layout; auto = dcic if annotations.json '
                      'exists, else dc3.')
    flags.DEFINE_integer('image_size', 32, 'Images are resized to image_size x image_size (RGB).')
    flags.DEFINE_string('seeds', '1', 'Comma-separated seeds; one folder <name>.<seed> each.')
    flags.DEFINE_integer('slice', 1, 'DCIC slice v in 1..5: validation fold (v mod 5)+1, test fold '
                         '((v+1) mod 5)+1.')
    flags.DEFINE_float('labeled_fraction', 0.2, 'DCIC: share of the training pool that is labeled.')
    flags.DEFINE_integer('keep_test', 0, 'DCIC: 1 = write the test fold as a test split instead of '
                         'adding it to the training pool; export_proposals.py refuses data '
                         'imported with 0, whose DCIC test fold was trained on.')
    flags.DEFINE_integer('skip_corrupt', 0, '1 = skip unreadable or unannotated images (with a '
                         'warning) instead of failing.')
    flags.DEFINE_string('data_dir', None, 'Output root; default $ML_DATA or ./data.')
    flags.DEFINE_string('classes', '', 'Comma-separated class list in index order, e.g. '
                        'cat,dog; a label outside it is an error. Default: the sorted labels, '
                        'refusing labels that differ only by case or whitespace or that are on '
                        'fewer than 0.1% of the annotations.')
    flags.DEFINE_integer('follow_outside_links', 0, '1 = read images and label files that '
                         'symlinks lead to outside the input folder (refused by default).')


def _flag_bool(name, value):
    if value not in (0, 1):
        raise DC3Error(f'--{name} {value} must be 0 or 1')
    return bool(value)


def main(argv):
    if len(argv) > 1:
        raise DC3Error(f'unexpected arguments {_quote(argv[1:])}; all options are --flags')
    if not flags.FLAGS.input:
        raise DC3Error('--input is required: the dataset folder <root>/<Name> to import')
    config = ImportConfig(
        input_dir=flags.FLAGS.input,
        data_dir=flags.FLAGS.data_dir or records.default_data_dir(),
        name=flags.FLAGS.name,
        layout=flags.FLAGS.layout,
        image_size=flags.FLAGS.image_size,
        seeds=parse_seeds(flags.FLAGS.seeds),
        slice_index=flags.FLAGS.slice,
        labeled_fraction=flags.FLAGS.labeled_fraction,
        keep_test=_flag_bool('keep_test', flags.FLAGS.keep_test),
        skip_corrupt=_flag_bool('skip_corrupt', flags.FLAGS.skip_corrupt),
        classes=parse_classes(flags.FLAGS.classes),
        follow_outside_links=_flag_bool('follow_outside_links',
                                        flags.FLAGS.follow_outside_links))
    import_dataset(config)


if __name__ == '__main__':
    define_flags()
    app.run(lambda argv: io_utils.run_cli(main, argv))

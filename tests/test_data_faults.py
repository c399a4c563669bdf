"""Faults on the data side: interrupted folder swaps, partial multi-seed imports, truncated
TFRecords, silently wrong labels, a full disk, symlinks out of the root, FIFOs, huge image headers.

Faults are injected by monkeypatching (os.rename, writers), by ``ulimit -f`` in a subprocess and by
SIGKILL of a child process at a chosen point. Expected values come from the fixtures themselves.
"""
import collections
import errno
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from libml import data, io_utils, records
from libml.errors import DC3Error
from scripts import create_datasets
from tests.test_datasets import (SIZE, config, load_annotations, make_dcic, read_output,
                                 save_image, soft_from_votes, write_annotations)

REPO = Path(__file__).resolve().parents[1]


def tree(folder):
    """{relative path: bytes} of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def assert_one_line(message, *fragments):
    assert '\n' not in message, message
    for fragment in fragments:
        assert fragment in message, message


def run_python(code, timeout=180, prefix=''):
    """Runs ``code`` in a child Python (optionally behind a shell ``prefix`` such as a ulimit)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=str(REPO))
    env.pop('ML_DATA', None)
    command = f'{prefix} exec "{sys.executable}" -c "$0"'
    return subprocess.run(['bash', '-c', command, textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def failing_rename(monkeypatch, should_fail):
    """Makes os.rename / os.replace raise ENOSPC whenever ``should_fail(src, dst)`` is true."""
    real_rename, real_replace = os.rename, os.replace

    def wrap(real):
        def rename(src, dst, *args, **kwargs):
            if should_fail(str(src), str(dst)):
                raise OSError(errno.ENOSPC, 'No space left on device (injected)', str(dst))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, 'rename', wrap(real_rename))
    monkeypatch.setattr(os, 'replace', wrap(real_replace))


# ---------------------------------------------------------------------------------------------
# 1. The folder swap in io_utils.atomic_path
# ---------------------------------------------------------------------------------------------

def _old_folder(tmp_path):
    target = tmp_path / 'dataset'
    target.mkdir()
    (target / 'a.txt').write_text('old')
    return target


def test_failed_final_rename_keeps_the_old_folder(tmp_path, monkeypatch):
    target = _old_folder(tmp_path)
    # The move of the new folder onto the target fails, as on a full disk.
    failing_rename(monkeypatch, lambda src, dst: src.endswith('/out') and dst == str(target))
    with pytest.raises(OSError):
        with io_utils.atomic_path(str(target)) as tmp:
            os.makedirs(tmp)
            (Path(tmp) / 'a.txt').write_text('new')
    assert tree(target) == {'a.txt': b'old'}
    assert os.listdir(tmp_path) == ['dataset']      # no backup or temporary left behind


def test_failure_inside_the_block_keeps_old_file_and_folder(tmp_path):
    target = _old_folder(tmp_path)
    file_target = tmp_path / 'f.json'
    io_utils.write_json(str(file_target), {'v': 1})
    for path in (target, file_target):
        with pytest.raises(RuntimeError):
            with io_utils.atomic_path(str(path)) as tmp:
                Path(tmp).write_text('half')
                raise RuntimeError('crash while writing')
    assert tree(target) == {'a.txt': b'old'}
    assert json.loads(file_target.read_text()) == {'v': 1}
    assert sorted(os.listdir(tmp_path)) == ['dataset', 'f.json']
    io_utils.write_json(str(file_target), {'v': 2})          # a file is still replaced in place
    assert json.loads(file_target.read_text()) == {'v': 2}


KILL_SCRIPT = '''
    import os, signal, sys
    from libml import io_utils
    point, target = sys.argv[1], sys.argv[2]
    die = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    if point == 'between renames':
        real = os.rename
        os.rename = lambda src, dst: die() if src.endswith('/out') else real(src, dst)
    else:                                   # after the swap, before the old copy is removed
        io_utils._remove = die
    with io_utils.atomic_path(target) as tmp:
        os.makedirs(tmp)
        open(os.path.join(tmp, 'a.txt'), 'w').write('new')
'''


@pytest.mark.parametrize('point, expected', [('between renames', 'old'),
                                             ('before removal', 'new')])
def test_kill_during_the_swap_is_repaired_by_the_next_write(tmp_path, point, expected, capfd):
    target = _old_folder(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(KILL_SCRIPT), point,
                             str(target)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr
    leftovers = [n for n in os.listdir(tmp_path) if n != 'dataset']
    assert leftovers, 'the kill should have left a backup or a temporary'
    if point == 'between renames':
        assert not target.exists()                  # the moment the old code lost everything
    # The next write of the same path restores or discards the backup before it writes.
    io_utils.recover(str(target))
    assert tree(target) == {'a.txt': expected.encode()}
    assert os.listdir(tmp_path) == ['dataset']
    notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith('note:')]
    assert len(notes) == 1 and str(tmp_path) in notes[0]


def test_leftovers_of_live_processes_are_kept(tmp_path):
    target = _old_folder(tmp_path)
    mine = tmp_path / f'.dataset.tmp-{os.getpid()}@{io_utils._host()}-abcd1234'  # live owner
    young_unknown = tmp_path / '.dataset.tmp-k3j_x9a2'      # pre-owner format, just made
    old_unknown = tmp_path / '.dataset.tmp-zz11yy22'        # pre-owner format, two days old
    for folder in (mine, young_unknown, old_unknown):
        folder.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old_unknown, (two_days_ago, two_days_ago))
    io_utils.recover(str(target))
    assert sorted(os.listdir(tmp_path)) == sorted(['dataset', mine.name, young_unknown.name])


# ---------------------------------------------------------------------------------------------
# 2. Multi-seed imports are staged; killed imports are cleaned up
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def imported(tmp_path):
    """A DCIC folder imported with seeds 1 and 2: (folder, data_dir, {seed: tree})."""
    folder, _, _ = make_dcic(tmp_path / 'raw')
    data_dir = tmp_path / 'data'
    create_datasets.import_dataset(config(folder, data_dir, seeds=(1, 2)))
    # Change the labels so that a re-import writes different bytes.
    sets = load_annotations(folder)
    for annotation in sets[0]['annotations']:
        annotation['class_label'] = 'dog'
    write_annotations(folder, sets)
    return folder, data_dir, {s: tree(data_dir / f'toy.{s}') for s in (1, 2)}


def test_failure_at_seed_2_leaves_seed_1_untouched(imported, monkeypatch):
    folder, data_dir, before = imported
    real = create_datasets.write_dataset_files
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, 'No space left on device (injected)')
        return real(*args, **kwargs)

    monkeypatch.setattr(create_datasets, 'write_dataset_files', fail_second)
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, data_dir, seeds=(1, 2)))
    assert_one_line(str(error.value), 'No space left')
    assert {s: tree(data_dir / f'toy.{s}') for s in (1, 2)} == before
    assert sorted(os.listdir(data_dir)) == ['toy.1', 'toy.2']


def test_failed_swap_of_seed_2_rolls_seed_1_back(imported, monkeypatch):
    folder, data_dir, before = imported
    seed2 = str(data_dir / 'toy.2')
    failing_rename(monkeypatch, lambda src, dst: src.endswith('/out') and dst == seed2)
    with pytest.raises(DC3Error):
        create_datasets.import_dataset(config(folder, data_dir, seeds=(1, 2)))
    assert {s: tree(data_dir / f'toy.{s}') for s in (1, 2)} == before
    assert sorted(os.listdir(data_dir)) == ['toy.1', 'toy.2']


def test_killed_import_leaves_a_temporary_that_the_next_import_removes(imported, capfd):
    folder, data_dir, before = imported
    result = run_python(f'''
        import os, signal
        from scripts import create_datasets
        real = create_datasets.write_dataset_files
        def write_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        create_datasets.write_dataset_files = write_then_die
        create_datasets.import_dataset(create_datasets.ImportConfig(
            input_dir={str(folder)!r}, data_dir={str(data_dir)!r}, image_size={SIZE},
            seeds=(1, 2), progress=False))
    ''')
    assert result.returncode == -signal.SIGKILL, result.stderr
    hidden = [n for n in os.listdir(data_dir) if n.startswith('.')]
    assert hidden, 'the killed import should have left its staging folders'
    assert {s: tree(data_dir / f'toy.{s}') for s in (1, 2)} == before
    capfd.readouterr()
    create_datasets.import_dataset(config(folder, data_dir, seeds=(3,)))
    assert sorted(os.listdir(data_dir)) == ['toy.1', 'toy.2', 'toy.3']
    notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith('note:')]
    assert len(notes) == 1 and all(name in notes[0] for name in hidden), notes


# ---------------------------------------------------------------------------------------------
# 3. Truncated or replaced TFRecord files
# ---------------------------------------------------------------------------------------------

def record_ends(path):
    """Byte offsets at which the records of a TFRecord file end (parsed here from the format)."""
    blob = Path(path).read_bytes()
    ends, position = [], 0
    while position < len(blob):
        (length,) = struct.unpack('<Q', blob[position:position + 8])
        position += 8 + 4 + length + 4
        ends.append(position)
    return ends


@pytest.fixture
def dataset(tmp_path):
    folder, _, _ = make_dcic(tmp_path / 'raw', per_fold=6)
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data',
                                                        labeled_fraction=0.5))
    return Path(directory)


def _cut_at_half(path):
    ends = record_ends(path)
    assert len(ends) >= 4
    Path(path).write_bytes(Path(path).read_bytes()[:ends[len(ends) // 2 - 1]])


def test_split_cut_at_a_record_boundary_is_refused(dataset):
    train = dataset / 'train.tfrecord'
    _cut_at_half(train)
    info = records.load_dataset_info(str(dataset.parent), 'toy', 1)
    for read in (lambda: records.read_split_numpy(str(dataset), 'train', info.num_classes),
                 lambda: data.split_dataset(info, 'train'),
                 lambda: data.eval_inputs(info, 'train', 4)):
        with pytest.raises(DC3Error) as error:
            read()
        assert_one_line(str(error.value), str(train), 'create_datasets.py', '--seeds 1')
    records.read_split_numpy(str(dataset), 'val', info.num_classes)   # intact splits still load


def test_meta_records_size_and_checksum_of_every_split(dataset):
    meta = json.loads((dataset / 'meta.json').read_text())
    for split, entry in meta['splits'].items():
        blob = (dataset / entry['file']).read_bytes()
        assert entry['bytes'] == len(blob)
        assert entry['sha256'] == hashlib.sha256(blob).hexdigest()
        assert len(record_ends(dataset / entry['file'])) == entry['count']


def test_flipped_byte_is_found_by_the_checksum(dataset):
    val = dataset / 'val.tfrecord'
    blob = bytearray(val.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    val.write_bytes(bytes(blob))
    records.verify_split(str(dataset), 'val')          # the cheap check sees the same size
    with pytest.raises(DC3Error, match='sha256'):
        records.verify_dataset(str(dataset), checksum=True)


def test_datasets_without_sizes_still_load_and_are_counted(dataset):
    meta_path = dataset / 'meta.json'
    meta = json.loads(meta_path.read_text())
    for entry in meta['splits'].values():
        del entry['bytes'], entry['sha256']
    meta_path.write_text(json.dumps(meta))
    k = len(meta['classes'])
    columns = records.read_split_numpy(str(dataset), 'train', k)
    assert len(columns['label']) == meta['splits']['train']['count']
    train = dataset / 'train.tfrecord'
    full = train.read_bytes()
    _cut_at_half(train)
    with pytest.raises(DC3Error, match='records but meta.json says'):
        records.read_split_numpy(str(dataset), 'train', k)
    train.write_bytes(full[:-3])                         # ends inside the last record
    with pytest.raises(DC3Error, match='ends inside a record'):
        records.read_split_numpy(str(dataset), 'train', k)


# ---------------------------------------------------------------------------------------------
# 4. Labels that are wrong but silent; repeated votes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('typo', ['Cat', 'cat ', ' CAT'])
def test_label_differing_by_case_or_whitespace_stops_the_import(tmp_path, typo):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    sets = load_annotations(folder)
    sets[2]['annotations'][5]['class_label'] = typo
    write_annotations(folder, sets)
    data_dir = tmp_path / 'data'
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, data_dir))
    assert_one_line(str(error.value), repr(typo), "'cat'", '--classes')
    assert not data_dir.exists()


def test_dc3_class_folders_differing_by_case_stop_the_import(tmp_path):
    folder = tmp_path / 'raw' / 'Dc3'
    for relative in ('train/cat/0.png', 'train/Cat/1.png', 'train/dog/2.png', 'val/cat/3.png'):
        save_image(folder / relative, np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    assert_one_line(str(error.value), "'Cat'", "'cat'")


def _many_votes(tmp_path, annotators=60):
    """20 images x 60 annotators = 1200 votes, so one vote is below the 0.1% share."""
    folder, _, _ = make_dcic(tmp_path / 'raw', annotators=annotators)
    sets = load_annotations(folder)
    sets[7]['annotations'][3]['class_label'] = 'emu'
    write_annotations(folder, sets)
    return folder


def test_vanishingly_rare_label_stops_the_import(tmp_path):
    folder = _many_votes(tmp_path)
    total = sum(len(s['annotations']) for s in load_annotations(folder))
    assert 1 < create_datasets.RARE_LABEL_SHARE * total
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    assert_one_line(str(error.value), "'emu' (1)", '--classes')


def test_pinned_classes_fix_order_and_admit_a_rare_real_class(tmp_path):
    folder = _many_votes(tmp_path)
    pinned = ('emu', 'dog', 'cat', 'bird')
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data',
                                                        classes=pinned))
    meta, columns = read_output(directory)
    assert meta['classes'] == list(pinned)
    votes = collections.defaultdict(collections.Counter)
    for annotation_set in load_annotations(folder):
        for annotation in annotation_set['annotations']:
            votes[annotation['image_path'].split('/', 1)[1]][annotation['class_label']] += 1
    for split in columns.values():
        for path, soft in zip(split['path'], split['soft_label']):
            np.testing.assert_allclose(soft, soft_from_votes(votes[path], pinned), atol=1e-6)


def test_label_outside_the_pinned_classes_is_one_error_line(tmp_path):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, tmp_path / 'data', classes=('cat', 'dog')))
    assert_one_line(str(error.value), "'bird'", '--classes')
    with pytest.raises(DC3Error, match='--classes'):
        create_datasets.parse_classes('cat,,dog')


@pytest.mark.parametrize('spelling', ['Toy/fold1/im_1_0.png', './Toy/fold1/im_1_0.png',
                                      'Toy//fold1/./im_1_0.png'])
def test_an_annotator_labelling_an_image_again_counts_once(tmp_path, spelling):
    folder, _, votes = make_dcic(tmp_path / 'raw')
    sets = load_annotations(folder)
    first = next(a for a in sets[0]['annotations'] if a['image_path'] == 'Toy/fold1/im_1_0.png')
    relabel = next(c for c in ('bird', 'cat', 'dog') if c != first['class_label'])
    sets[0]['annotations'].append({'image_path': spelling, 'class_label': relabel,
                                   'created_at': ''})
    write_annotations(folder, sets)
    expected = collections.Counter(votes['fold1/im_1_0.png'])
    expected[first['class_label']] -= 1            # the annotator's earlier label is replaced
    expected[relabel] += 1
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data',
                                                        keep_test=True))
    meta, columns = read_output(directory)
    assert meta['repeated_annotations'] == 1
    found = [soft for split in columns.values()
             for path, soft in zip(split['path'], split['soft_label'])
             if path == 'fold1/im_1_0.png']
    assert len(found) == 1
    np.testing.assert_allclose(found[0], soft_from_votes(expected, meta['classes']), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 5. One error line: full disk, file-size limit, symlinks, FIFOs, huge image headers
# ---------------------------------------------------------------------------------------------

def test_full_disk_while_writing_is_one_line_and_changes_nothing(imported, monkeypatch):
    folder, data_dir, before = imported
    real = io_utils.write_json
    calls = []

    def full_disk_at_second_meta(*args, **kwargs):      # seed 1 is complete, seed 2 is not
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, 'No space left on device (injected)', 'meta.json')
        return real(*args, **kwargs)

    monkeypatch.setattr(create_datasets.io_utils, 'write_json', full_disk_at_second_meta)
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, data_dir, seeds=(1, 2)))
    assert_one_line(str(error.value), 'No space left', 'meta.json', 'disk space')
    assert {s: tree(data_dir / f'toy.{s}') for s in (1, 2)} == before
    assert sorted(os.listdir(data_dir)) == ['toy.1', 'toy.2']


def test_file_size_limit_gives_one_error_line_and_exit_2(tmp_path):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    for image in folder.glob('fold*/*.png'):            # noise: about 12 KB per 64 px PNG
        rng = np.random.default_rng(len(image.name))
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    data_dir = tmp_path / 'data'
    result = run_python(f'''
        import sys
        from absl import app
        from scripts import create_datasets
        from libml import io_utils
        create_datasets.define_flags()
        sys.argv = ['create_datasets.py', '--input={folder}', '--data_dir={data_dir}',
                    '--image_size=64']
        app.run(lambda argv: io_utils.run_cli(create_datasets.main, argv))
    ''', prefix='ulimit -f 32;')                          # 32 KB per file
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert 'too large' in errors[0].lower() and '.tfrecord' in errors[0], errors[0]
    assert not data_dir.exists() or not os.listdir(data_dir)


def test_symlink_out_of_the_root_is_refused_unless_allowed(tmp_path):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    outside = tmp_path / 'elsewhere.png'
    save_image(outside, np.full((SIZE, SIZE, 3), 9, np.uint8))
    image = folder / 'fold2/im_2_0.png'
    image.unlink()
    image.symlink_to(outside)
    (folder / 'fold3/im_3_0.png').unlink()                      # a link inside the root is fine
    (folder / 'fold3/im_3_0.png').symlink_to(folder / 'fold3/im_3_1.png')
    data_dir = tmp_path / 'data'
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, data_dir))
    assert_one_line(str(error.value), 'fold2/im_2_0.png', '--follow_outside_links')
    assert not data_dir.exists()
    [directory] = create_datasets.import_dataset(config(folder, data_dir, keep_test=True,
                                                        follow_outside_links=True))
    _, columns = read_output(directory)
    assert any('fold2/im_2_0.png' in split['path'] for split in columns.values())


def test_annotations_file_linked_from_outside_is_refused(tmp_path):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    moved = tmp_path / 'annotations-elsewhere.json'
    os.rename(folder / 'annotations.json', moved)
    (folder / 'annotations.json').symlink_to(moved)
    with pytest.raises(DC3Error, match='annotations.json'):
        create_datasets.import_dataset(config(folder, tmp_path / 'data'))


class Blocked(BaseException):
    """Not an Exception, so the importer's per-image ``except Exception`` cannot swallow it."""


@pytest.fixture
def alarm():
    """Fails a test that blocks (on a FIFO) instead of hanging the suite; repeats until cleared."""
    def on_alarm(*_):
        raise Blocked('the import blocked')
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 30, 30)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize('which', ['image', 'annotations.json', 'soft_labels.csv'])
def test_fifo_does_not_block_the_import(tmp_path, alarm, which):
    if which == 'soft_labels.csv':
        folder = tmp_path / 'raw' / 'Dc3'
        for relative in ('train/a/0.png', 'train/b/1.png', 'val/a/2.png'):
            save_image(folder / relative, np.zeros((SIZE, SIZE, 3), np.uint8))
        os.mkfifo(folder / which)
        fragment = which
    else:
        folder, _, _ = make_dcic(tmp_path / 'raw')
        if which == 'image':
            (folder / 'fold4/im_4_2.png').unlink()
            os.mkfifo(folder / 'fold4/im_4_2.png')
            fragment = 'fold4/im_4_2.png'
        else:
            (folder / which).unlink()
            os.mkfifo(folder / which)
            fragment = which
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    assert_one_line(str(error.value), fragment)
    if which == 'image':                           # like a corrupt image: skippable with a count
        [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data',
                                                            skip_corrupt=True))
        assert read_output(directory)[0]['skipped_files'] == ['fold4/im_4_2.png']


def huge_png(width, height):
    """A valid greyscale PNG of zeros: a few hundred KB that decode to width * height bytes."""
    def chunk(kind, body):
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)                              # filter byte 0 + a row of zeros
    pixels = b''.join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', pixels)
            + chunk(b'IEND', b''))


def test_image_claiming_huge_dimensions_is_refused_before_decoding(tmp_path, monkeypatch):
    folder, _, _ = make_dcic(tmp_path / 'raw')
    blob = huge_png(12000, 12000)
    assert len(blob) < 1_000_000
    with pytest.warns(Image.DecompressionBombWarning):
        with Image.open(io.BytesIO(blob)) as image:     # the header really claims 12000 x 12000
            assert image.size == (12000, 12000)
    (folder / 'fold1/im_1_1.png').write_bytes(blob)
    real_load = ImageFile.ImageFile.load

    def guarded_load(image):
        assert image.size[0] * image.size[1] <= create_datasets.MAX_IMAGE_PIXELS, 'decoded'
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, 'load', guarded_load)
    with pytest.raises(DC3Error) as error:
        create_datasets.import_dataset(config(folder, tmp_path / 'data'))
    assert_one_line(str(error.value), 'fold1/im_1_1.png', '12000x12000')
    [directory] = create_datasets.import_dataset(config(folder, tmp_path / 'data',
                                                        skip_corrupt=True))
    assert read_output(directory)[0]['skipped_files'] == ['fold1/im_1_1.png']

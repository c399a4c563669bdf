"""scripts/export_proposals.py on a tiny generated dataset and a fake run folder.

The run's prediction CSVs are written by ``libml.prediction_csv.write_predictions`` from p_n / p_o /
p_a arrays built here, and the DCIC file is read back with ``dcic_read`` below, which follows DCIC's
own code (src/algorithms/predictions_import.py): the file-name parse of ``PredictionsImport.run``,
``PredictionJson.from_file`` and ``get_iterator_for_set``, and the checks ``run`` applies.
"""
import datetime
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
from libml import prediction_csv, records
from libml.errors import DC3Error
from scripts import export_proposals as export
from scripts import run_ablation

CLASSES = ['cat', 'dog', 'frog']
NUM_VAL = 8
K_PRIME = 15
SOURCE = '/somewhere/raw/ToyPlankton/'
DCIC_NAME = 'ToyDCIC'   # "dataset_name" of the raw annotations.json, unlike the folder name
SLICE, FRACTION = 2, 0.2


def colour(index):
    """A distinct, saturated (never grey, unlike caption text) colour per image."""
    return (200, 10 + 20 * index, 0)


def make_data(root, keep_test=True, index_shift=0):
    directory = Path(records.dataset_dir(str(root), 'toy', 1))
    directory.mkdir(parents=True)
    serialized = []
    for i in range(NUM_VAL):
        buffer = io.BytesIO()
        Image.new('RGB', (8, 8), colour(i)).save(buffer, format='PNG')
        soft = np.eye(3)[i % 3]
        serialized.append(records.serialize_example(buffer.getvalue(), i % 3, soft,
                                                    f'fold1/img_{i}.png', 'val',
                                                    (i + index_shift) % NUM_VAL))
    with tf.io.TFRecordWriter(str(directory / records.split_file('val'))) as writer:
        for s in serialized[::-1]:  # stored order differs from index order on purpose
            writer.write(s)
    meta = {'format_version': records.FORMAT_VERSION, 'name': 'toy', 'classes': CLASSES,
            'image_size': 8, 'splits': {'train': {'count': 2}, 'val': {'count': NUM_VAL}},
            'class_weights': [1.0, 1.0, 1.0], 'ambiguous_fraction': {'pool': 0.4444},
            'source': SOURCE, 'layout': 'dcic', 'slice': SLICE, 'labeled_fraction': FRACTION,
            'keep_test': keep_test, 'dcic_test_fold': 'fold4', 'dcic_dataset_name': DCIC_NAME}
    (directory / records.META_FILE).write_text(json.dumps(meta))
    return str(root)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp('data'))


# Per val image: (output_kind, output, cluster_prob, soft label, p_n).
ROWS = [
    ('class', 0, .2, [1, 0, 0], [.7, .2, .1]),
    ('class', 1, .2, [0, 1, 0], [.1, .8, .1]),
    ('class', 2, .2, [0, 0, 1], [.1, .1, .8]),
    ('cluster', 4, .9, [.5, .5, 0], [.2, .2, .6]),   # ambiguous, argmax p_n = frog
    ('cluster', 4, .5, [.5, .5, 0], [.5, .3, .2]),
    ('cluster', 4, .7, [1, 0, 0], [.3, .6, .1]),
    ('cluster', 4, .3, [0, 1, 0], [.4, .4, .2]),     # lowest cluster_prob: left out at size 3
    ('cluster', 11, .6, [0, .5, .5], [.1, .2, .7]),  # a cluster of one
]
# Rows of the other report splits; the DCIC file must hold every split.
SPLIT_ROWS = {'train': ROWS[:4], 'unlabeled': ROWS[2:], 'val': ROWS, 'test': ROWS[5:]}


def row_cluster(i, row):
    """argmax p_o: the cluster of an ambiguous row, an arbitrary other one for a certain row."""
    return row[1] if row[0] == 'cluster' else 5 + i


def overcluster_probs(i, row):
    """p_o with its maximum ``cluster_prob`` at ``row_cluster``; the rest spread unevenly."""
    spread = np.linspace(1.0, 1.5, K_PRIME - 1) + 0.01 * i
    probs = np.insert((1 - row[2]) * spread / spread.sum(), row_cluster(i, row), row[2])
    assert np.argmax(probs) == row_cluster(i, row)
    return probs


def path_of(split, i):
    return f'fold1/img_{i}.png' if split == 'val' else f'fold3/{split}_{i}.png'


def prediction_arrays(split, rows, vanilla=False):
    """What ``SSLMethod.predict`` returns for ``rows``; p_a puts cluster rows above 0.5."""
    pred = {'path': np.array([path_of(split, i).encode() for i in range(len(rows))]),
            'index': np.arange(len(rows)),
            'label': np.array([int(np.argmax(r[3])) for r in rows]),
            'soft_label': np.array([r[3] for r in rows], dtype=np.float32),
            'probs': np.array([r[4] for r in rows], dtype=np.float32)}
    if not vanilla:
        pred['cluster_probs'] = np.array([overcluster_probs(i, r) for i, r in enumerate(rows)],
                                         dtype=np.float32)
        pred['ambiguity'] = np.array([.8 if r[0] == 'cluster' else .1 for r in rows],
                                     dtype=np.float32)
    return pred


def make_run(root, name, rows=None, vanilla=False, older_rows=None, embeddings=False,
             method='MeanTeacher'):
    run_dir = root / 'toy.1@-1-10' / name
    args = {'method': method, 'dataset': 'toy.1@-1-10', 'dataset_name': 'toy',
            'dataset_seed': 1, 'seed': 0, 'combined_output': 0 if vanilla else 4,
            'wou': 0.0 if vanilla else 10.0, 'wol': 0.0 if vanilla else 10.0, 'lr': 1e-05}
    split_rows = dict(SPLIT_ROWS, val=rows or ROWS)
    reports = [('img0000001024', split_rows)] + (
        [('img0000000512', {'val': older_rows})] if older_rows else [])
    for folder, report_rows in reports:
        report_dir = run_dir / 'reports' / folder
        report_dir.mkdir(parents=True)
        for split, these in report_rows.items():
            prediction_csv.write_predictions(str(report_dir / f'{split}.csv'), split,
                                    prediction_arrays(split, these, vanilla))
        (report_dir / 'metrics.json').write_text(json.dumps(
            {'classes': CLASSES, 'has_ambiguity_head': not vanilla, 'num_clusters': K_PRIME}))
    if embeddings:
        np.save(run_dir / 'reports' / 'img0000001024' / 'val_embeddings.npy',
                np.random.default_rng(0).normal(size=(len(rows or ROWS), 4)).astype(np.float32))
    (run_dir / 'args.json').write_text(json.dumps(args))
    return run_dir


def dcic_read(folder, dataset, num_annos, fraction, v_fold, selector='mean-s2c2',
              classes=CLASSES):
    """(file name, config, {set name: [(image_path, cluster_label, class_label, confidences)]})
    as DCIC's prediction import sees the export in ``folder``."""
    found = None
    # main() keeps the files naming the method and head, e.g. "mean-s2c2" or "mean-no".
    for file in sorted(f for f in os.listdir(folder) if selector in f):
        # PredictionsImport.run: the part after '#dataset-' must have exactly five '-' fields.
        fields = file.split('#dataset-')[-1].split('.1@-1-10.json')[0].split('-')
        name, _, annos, percentage, fold = fields
        if name == dataset and int(annos) == num_annos and \
                abs(float(percentage) - fraction) < 0.01 and int(fold) == v_fold:
            found = file
            break
    assert found is not None, os.listdir(folder)
    with open(os.path.join(folder, found)) as f:   # PredictionJson.from_file
        jsons = json.load(f)
    assert len(jsons) > 0
    sets = {j['name']: j for j in jsons}
    config = jsons[0]['config']
    assert isinstance(config, str)       # otherwise DCIC calls vars() on it and fails
    read = {}
    for set_name, content in sets.items():
        # PredictionsImport appends the first set name to an algorithm name that bans '-'.
        assert '-' not in set_name
        read[set_name] = [(p['image_path'], p['cluster_label'], p['class_label'],
                           p.get('confidences', -1)) for p in content['predictions']]
        for _, _, class_label, confidences in read[set_name]:
            # The assertion PredictionsImport.run makes on every prediction.
            assert len(confidences) != len(classes) or \
                classes[np.argmax(confidences, axis=-1)] == class_label
    return found, config, read


def test_dcic_round_trip(tmp_path, data_dir, capsys):
    older = [('class', int(np.argmax(p)), .1, s, p) for _, _, _, s, p in ROWS]
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_dc3_lr1e-05', older_rows=older,
                       embeddings=True)
    out = tmp_path / 'export'
    before = datetime.datetime.now().replace(microsecond=0)
    path = export.export(str(run_dir), str(out), split='val', data_dir=data_dir, gallery_size=3)

    file, config, sets = dcic_read(out, DCIC_NAME, 1, FRACTION, SLICE)
    assert os.path.basename(path) == file
    assert json.loads(config) == json.loads((run_dir / 'args.json').read_text())
    assert set(sets) == {'train', 'unlabeled', 'val', 'test', 'fuzzy_train', 'fuzzy_unlabeled',
                         'fuzzy_val', 'fuzzy_test'}
    for split, rows in SPLIT_ROWS.items():
        normal, fuzzy = sets[split], sets[f'fuzzy_{split}']
        assert len(normal) == len(fuzzy) == len(rows)
        for i, row in enumerate(rows):
            kind, output, _, _, probs = row
            image_path, cluster_label, class_label, confidences = normal[i]
            assert image_path == f'{DCIC_NAME}/{path_of(split, i)}'
            assert confidences == pytest.approx(probs, abs=1e-6)
            assert class_label == CLASSES[int(np.argmax(probs))]
            assert cluster_label == (output if kind == 'cluster' else None)
            image_path, cluster_label, class_label, confidences = fuzzy[i]
            assert image_path == f'{DCIC_NAME}/{path_of(split, i)}'
            assert len(confidences) == K_PRIME
            assert confidences == pytest.approx(overcluster_probs(i, row), abs=1e-6)
            # DCIC maps fuzzy images by argmax of their confidences: the run's cluster ids.
            assert int(np.argmax(confidences)) == cluster_label == row_cluster(i, row)
            assert class_label == CLASSES[int(np.argmax(probs))]
    raw = json.loads((out / file).read_text())
    created = datetime.datetime.strptime(raw[0]['created_at'], '%d-%m-%Y-%H-%M-%S')
    assert before <= created <= datetime.datetime.now()
    assert raw[0]['identifier'] == 'MeanTeacher_dc3_lr1e-05'

    galleries = out / 'galleries'
    assert sorted(f.name for f in galleries.iterdir()) == ['cluster_11.png', 'cluster_4.png']
    colours = {c for _, c in Image.open(galleries / 'cluster_4.png').convert('RGB').getcolors(
        1 << 20)}
    # The 3 members with the highest cluster_prob, found by index in the TFRecord.
    assert {colour(3), colour(4), colour(5)} <= colours
    assert colour(6) not in colours
    assert not {colour(i) for i in (0, 1, 2, 7)} & colours
    colours = {c for _, c in Image.open(galleries / 'cluster_11.png').convert('RGB').getcolors(
        1 << 20)}
    assert colour(7) in colours and colour(3) not in colours

    if importlib.util.find_spec('matplotlib') is not None:
        assert (out / 'tsne.png').exists()
    else:
        assert not (out / 'tsne.png').exists()
        assert 'matplotlib is not installed' in capsys.readouterr().err


def test_prediction_csv_keeps_its_columns_and_adds_p_o(tmp_path):
    pred = prediction_arrays('val', ROWS)
    prediction_csv.write_predictions(str(tmp_path / 'val.csv'), 'val', pred)
    frame = pd.read_csv(tmp_path / 'val.csv')
    existing = (['path', 'split', 'index', 'label'] + [f'soft_{c}' for c in range(3)]
                + [f'prob_{c}' for c in range(3)]
                + ['cluster', 'cluster_prob', 'ambiguity', 'output_kind', 'output'])
    assert list(frame.columns) == existing + [f'cluster_prob_{j}' for j in range(K_PRIME)]
    p_o = frame[[f'cluster_prob_{j}' for j in range(K_PRIME)]].to_numpy()
    np.testing.assert_allclose(p_o, pred['cluster_probs'], atol=1e-6)
    assert frame['cluster'].tolist() == [row_cluster(i, r) for i, r in enumerate(ROWS)]
    assert frame['cluster_prob'].to_numpy() == pytest.approx([r[2] for r in ROWS], abs=1e-6)
    # Readers that pick columns by prefix still see k class columns.
    read = prediction_csv.read_predictions(str(tmp_path / 'val.csv'))
    assert read['class_probs'].shape == (len(ROWS), 3)
    vanilla = prediction_arrays('val', ROWS, vanilla=True)
    prediction_csv.write_predictions(str(tmp_path / 'vanilla.csv'), 'val', vanilla)
    assert list(pd.read_csv(tmp_path / 'vanilla.csv').columns) == existing


def test_test_fold_in_training_is_refused(tmp_path):
    leaky = make_data(tmp_path / 'leaky', keep_test=False)
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_leak')
    out = tmp_path / 'refused'
    with pytest.raises(DC3Error, match='--keep_test 0.*fold4.*--allow_test_fold_in_training'):
        export.export(str(run_dir), str(out), data_dir=leaky)
    assert not out.exists()
    done = subprocess.run(
        [sys.executable, 'scripts/export_proposals.py', '--run_dir', str(run_dir), '--out',
         str(out), '--data_dir', leaky], cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and '--keep_test 0' in errors[0], done.stderr
    assert 'Traceback' not in done.stderr
    assert not out.exists()
    done = subprocess.run(
        [sys.executable, 'scripts/export_proposals.py', '--run_dir', str(run_dir), '--out',
         str(out), '--data_dir', leaky, '--allow_test_fold_in_training', '1'], cwd=REPO,
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    file, _, sets = dcic_read(out, DCIC_NAME, 1, FRACTION, SLICE)
    assert file.startswith('predictions-MeanTeacher_leak-mean-s2c2#') and 'val' in sets


def test_dcic_dataset_name_with_dash_is_an_error(tmp_path, data_dir):
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_dash')
    with pytest.raises(DC3Error, match='--dcic_dataset'):
        export.export(str(run_dir), str(tmp_path / 'out'), data_dir=data_dir,
                      dcic_dataset='Toy-Set')


def test_caption_names_size_and_top_classes():
    lines = export.caption_lines(4, 4, 3, np.array([.5, .375, .125]), CLASSES, top=2)
    assert '4' in lines[0] and '4 images' in lines[0] and '3' in lines[0]
    assert 'cat 50.0%' in lines[1] and 'dog 37.5%' in lines[1] and 'frog' not in lines[1]


def test_vanilla_run_has_no_clusters(tmp_path, data_dir, capsys):
    rows = [('class', int(np.argmax(p)), .5, s, p) for _, _, _, s, p in ROWS]
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_vanilla', rows, vanilla=True)
    export.export(str(run_dir), str(tmp_path / 'export'), data_dir=data_dir)
    file, _, sets = dcic_read(tmp_path / 'export', DCIC_NAME, 1, FRACTION, SLICE, 'mean-no')
    assert file.startswith('predictions-MeanTeacher_vanilla-mean-no#dataset-')
    assert set(sets) == {'train', 'unlabeled', 'val', 'test'}   # no p_o, so no fuzzy sets
    predictions = sets['val']
    assert [p[1] for p in predictions] == [None] * len(rows)
    assert [p[2] for p in predictions] == [CLASSES[int(np.argmax(p))] for *_, p in ROWS]
    assert not (tmp_path / 'export' / 'galleries').exists()
    err = capsys.readouterr().err
    assert 'no image is predicted ambiguous' in err and 'val_embeddings.npy' in err


def test_unknown_index_and_report_are_errors(tmp_path, data_dir):
    rows = list(ROWS)
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_bad', rows)
    frame = pd.read_csv(run_dir / 'reports' / 'img0000001024' / 'val.csv')
    frame.loc[3, 'path'] = 'fold1/img_99.png'  # not in the TFRecord (matched by path)
    frame.to_csv(run_dir / 'reports' / 'img0000001024' / 'val.csv', index=False)
    with pytest.raises(DC3Error, match='99'):
        export.export(str(run_dir), str(tmp_path / 'export'), data_dir=data_dir)
    with pytest.raises(DC3Error, match='img0000001024'):
        export.export(str(run_dir), str(tmp_path / 'export'), report='img0000000007',
                      data_dir=data_dir)


def test_tsne_coordinates_shape():
    embeddings = np.random.default_rng(1).normal(size=(12, 5))
    assert export.tsne_coordinates(embeddings).shape == (12, 2)


def test_cli(tmp_path, data_dir):
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_cli', ROWS)
    out = tmp_path / 'cli'
    done = subprocess.run(
        [sys.executable, 'scripts/export_proposals.py', '--run_dir', str(run_dir), '--out',
         str(out), '--name', 'cli', '--data_dir', data_dir, '--report', 'img0000001024',
         '--dcic_dataset', 'Other'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    file, _, sets = dcic_read(out, 'Other', 1, FRACTION, SLICE)
    assert file.startswith('predictions-cli-mean-s2c2#dataset-Other-')
    assert sets['val'][0][0] == 'Other/fold1/img_0.png'
    assert (out / 'galleries' / 'cluster_4.png').exists()


def test_ablation_prior_comes_from_meta(data_dir):
    assert run_ablation.dataset_prior_from_meta(data_dir, 'toy', 1) == pytest.approx(0.44)


def test_dc3_run_is_named_s2c2_even_without_p_o_in_its_csvs(tmp_path, data_dir, capsys):
    # A report written before the CSVs kept p_o: still a DC3 run for DCIC's file selection.
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_old', ROWS)
    for csv in run_dir.glob('reports/*/*.csv'):
        frame = pd.read_csv(csv)
        frame.drop(columns=[c for c in frame if c.startswith('cluster_prob_')]).to_csv(
            csv, index=False)
    export.export(str(run_dir), str(tmp_path / 'export'), data_dir=data_dir)
    file, _, sets = dcic_read(tmp_path / 'export', DCIC_NAME, 1, FRACTION, SLICE, 'mean-s2c2')
    assert file.startswith('predictions-MeanTeacher_old-mean-s2c2#dataset-')
    assert not any(name.startswith('fuzzy_') for name in sets)
    assert 'no fuzzy sets' in capsys.readouterr().err


def test_galleries_find_images_by_path_not_by_record_index(tmp_path):
    """A re-import may number the records differently; the galleries must still show the
    images the predictions name."""
    data_dir = make_data(tmp_path / 'data', index_shift=1)
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_dc3')
    out = tmp_path / 'export'
    export.export(str(run_dir), str(out), split='val', data_dir=data_dir, gallery_size=3)
    colours = {c for _, c in Image.open(out / 'galleries' / 'cluster_4.png').convert(
        'RGB').getcolors(1 << 20)}
    assert {colour(3), colour(4), colour(5)} <= colours
    assert not {colour(i) for i in (0, 1, 2, 6, 7)} & colours


def test_export_refuses_data_that_changed_under_the_run(tmp_path, data_dir):
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_dc3')
    args = json.loads((run_dir / 'args.json').read_text())
    (run_dir / 'args.json').write_text(json.dumps(dict(args, dataset_fingerprint='0' * 16)))
    with pytest.raises(DC3Error, match='the dataset changed since'):
        export.export(str(run_dir), str(tmp_path / 'out'), split='val', data_dir=data_dir)

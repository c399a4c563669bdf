"""scripts/export_proposals.py on a tiny generated dataset and a fake run folder."""
import datetime
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from libml import records  # noqa: E402
from libml.errors import DC3Error  # noqa: E402
from scripts import export_proposals as export  # noqa: E402
from scripts import run_ablation  # noqa: E402

CLASSES = ['cat', 'dog', 'frog']
NUM_VAL = 8
SOURCE = '/somewhere/raw/ToyPlankton/'


def colour(index):
    """A distinct, saturated (never grey, unlike caption text) colour per image."""
    return (200, 10 + 20 * index, 0)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    directory = Path(records.dataset_dir(str(root), 'toy', 1))
    directory.mkdir(parents=True)
    serialized = []
    for i in range(NUM_VAL):
        buffer = io.BytesIO()
        Image.new('RGB', (8, 8), colour(i)).save(buffer, format='PNG')
        soft = np.eye(3)[i % 3]
        serialized.append(records.serialize_example(buffer.getvalue(), i % 3, soft,
                                                    f'fold1/img_{i}.png', 'val', i))
    with tf.io.TFRecordWriter(str(directory / records.split_file('val'))) as writer:
        for s in serialized[::-1]:  # stored order differs from index order on purpose
            writer.write(s)
    meta = {'format_version': records.FORMAT_VERSION, 'classes': CLASSES, 'image_size': 8,
            'splits': {'train': {'count': 2}, 'val': {'count': NUM_VAL}},
            'class_weights': [1.0, 1.0, 1.0], 'ambiguous_fraction': {'pool': 0.4444},
            'source': SOURCE}
    (directory / records.META_FILE).write_text(json.dumps(meta))
    return str(root)


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


def prediction_frame(rows, vanilla=False):
    table = []
    for i, (kind, output, cluster_prob, soft, probs) in enumerate(rows):
        row = {'path': f'fold1/img_{i}.png', 'split': 'val', 'index': i,
               'label': int(np.argmax(soft))}
        row.update({f'soft_{c}': soft[c] for c in range(3)})
        row.update({f'prob_{c}': probs[c] for c in range(3)})
        row.update({'cluster': output if kind == 'cluster' else 0, 'cluster_prob': cluster_prob,
                    'ambiguity': np.nan if vanilla else (0.8 if kind == 'cluster' else 0.1),
                    'output_kind': kind, 'output': output})
        table.append(row)
    return pd.DataFrame(table)


def make_run(root, name, rows, vanilla=False, older_rows=None, embeddings=False):
    run_dir = root / 'toy.1@-1-10' / name
    args = {'method': 'MeanTeacher', 'dataset': 'toy.1@-1-10', 'dataset_name': 'toy',
            'dataset_seed': 1, 'seed': 0, 'combined_output': 0 if vanilla else 4, 'wou': 10.0}
    reports = [('img0000001024', rows)] + ([('img0000000512', older_rows)] if older_rows else [])
    for folder, report_rows in reports:
        report_dir = run_dir / 'reports' / folder
        report_dir.mkdir(parents=True)
        prediction_frame(report_rows, vanilla).to_csv(report_dir / 'val.csv', index=False)
        (report_dir / 'metrics.json').write_text(json.dumps(
            {'classes': CLASSES, 'has_ambiguity_head': not vanilla, 'num_clusters': 15}))
    if embeddings:
        np.save(run_dir / 'reports' / 'img0000001024' / 'val_embeddings.npy',
                np.random.default_rng(0).normal(size=(len(rows), 4)).astype(np.float32))
    (run_dir / 'args.json').write_text(json.dumps(args))
    return run_dir


def test_proposals_and_galleries(tmp_path, data_dir, capsys):
    older = [('class', int(np.argmax(p)), .1, s, p) for _, _, _, s, p in ROWS]
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_dc3', ROWS, older_rows=older,
                       embeddings=True)
    out = tmp_path / 'export'
    before = datetime.datetime.now().replace(microsecond=0)
    export.export(str(run_dir), str(out), split='val', name='toy proposals', data_dir=data_dir,
                  gallery_size=3)

    proposals = json.loads((out / 'proposals.json').read_text())
    assert isinstance(proposals, list) and len(proposals) == 1
    proposal = proposals[0]
    assert set(proposal) == {'name', 'config', 'identifier', 'created_at', 'predictions'}
    assert proposal['name'] == 'toy proposals'
    assert proposal['identifier'] == 'MeanTeacher_dc3'
    assert proposal['config'] == json.loads((run_dir / 'args.json').read_text())
    created = datetime.datetime.strptime(proposal['created_at'], '%d-%m-%Y-%H-%M-%S')
    assert before <= created <= datetime.datetime.now()

    predictions = proposal['predictions']
    assert len(predictions) == len(ROWS)
    expected_class = ['cat', 'dog', 'frog', 'frog', 'cat', 'dog', 'cat', 'frog']
    expected_cluster = [None, None, None, 'cluster-4', 'cluster-4', 'cluster-4', 'cluster-4',
                        'cluster-11']
    for i, (p, (_, _, _, _, probs)) in enumerate(zip(predictions, ROWS)):
        assert set(p) == {'image_path', 'class_label', 'cluster_label', 'confidences'}
        assert p['image_path'] == f'ToyPlankton/fold1/img_{i}.png'
        assert p['class_label'] == expected_class[i]
        assert p['cluster_label'] == expected_cluster[i]
        assert p['confidences'] == pytest.approx(probs)

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


def test_caption_names_size_and_top_classes():
    lines = export.caption_lines(4, 4, 3, np.array([.5, .375, .125]), CLASSES, top=2)
    assert '4' in lines[0] and '4 images' in lines[0] and '3' in lines[0]
    assert 'cat 50.0%' in lines[1] and 'dog 37.5%' in lines[1] and 'frog' not in lines[1]


def test_vanilla_run_has_no_clusters(tmp_path, data_dir, capsys):
    rows = [('class', int(np.argmax(p)), .5, s, p) for _, _, _, s, p in ROWS]
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_vanilla', rows, vanilla=True)
    proposals = export.export(str(run_dir), str(tmp_path / 'export'), data_dir=data_dir)
    predictions = proposals[0]['predictions']
    assert [p['cluster_label'] for p in predictions] == [None] * len(rows)
    assert [p['class_label'] for p in predictions] == [CLASSES[int(np.argmax(p))]
                                                       for *_, p in ROWS]
    assert proposals[0]['name'] == 'MeanTeacher_vanilla'
    assert not (tmp_path / 'export' / 'galleries').exists()
    err = capsys.readouterr().err
    assert 'no image is predicted ambiguous' in err and 'val_embeddings.npy' in err


def test_unknown_index_and_report_are_errors(tmp_path, data_dir):
    rows = list(ROWS)
    run_dir = make_run(tmp_path / 'train', 'MeanTeacher_bad', rows)
    frame = pd.read_csv(run_dir / 'reports' / 'img0000001024' / 'val.csv')
    frame.loc[3, 'index'] = 99
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
         str(out), '--name', 'cli', '--data_dir', data_dir, '--report', 'img0000001024'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / 'proposals.json').read_text())[0]['name'] == 'cli'
    assert (out / 'galleries' / 'cluster_4.png').exists()


def test_ablation_prior_comes_from_meta(data_dir):
    assert run_ablation.dataset_prior_from_meta(data_dir, 'toy', 1) == pytest.approx(0.44)
